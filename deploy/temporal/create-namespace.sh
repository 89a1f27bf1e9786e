#!/bin/sh
# One-shot (temporalio/admin-tools): the app's namespace with the retention auditors need, and
# the TwoFactorState search attribute its workflows set. Idempotent: a later run applies a
# changed retention to the existing namespace.
set -eu

namespace="${NAMESPACE:?NAMESPACE is not set}"
retention="${RETENTION:?RETENTION is not set}"
address="${TEMPORAL_ADDRESS:-temporal:7233}"

# Temporal's own compose files resolve the server's name to an address first, as a workaround
# for the CLI failing on some Docker networks; do the same, keeping the name if that finds none.
host="${address%:*}"
port="${address##*:}"
ip=$(getent ahosts "$host" 2>/dev/null | awk '/STREAM/ { print $1; exit }') || true
if [ -n "$ip" ]; then
    address="$ip:$port"
fi

echo "temporal-namespace: waiting for the Temporal server at $address"
tries=0
until temporal operator cluster health --address "$address" 2>/dev/null | grep -q SERVING; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "temporal-namespace: the server is not SERVING after 120 s" >&2
        exit 1
    fi
    sleep 2
done

if temporal operator namespace describe --address "$address" -n "$namespace" >/dev/null 2>&1; then
    temporal operator namespace update --address "$address" -n "$namespace" --retention "$retention"
    echo "temporal-namespace: namespace $namespace exists, retention set to $retention"
else
    temporal operator namespace create --address "$address" -n "$namespace" \
        --retention "$retention" --description "Cockpit 2FA: one TwoFactor workflow per account"
    echo "temporal-namespace: namespace $namespace created, retention $retention"
fi

# The namespace cache of a fresh namespace takes a moment to reach every service.
tries=0
until temporal operator search-attribute list --address "$address" -n "$namespace" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "temporal-namespace: namespace $namespace is not usable after 30 s" >&2
        exit 1
    fi
    sleep 1
done
if temporal operator search-attribute list --address "$address" -n "$namespace" | grep -qw TwoFactorState; then
    echo "temporal-namespace: search attribute TwoFactorState already registered"
else
    temporal operator search-attribute create --address "$address" -n "$namespace" \
        --name TwoFactorState --type Keyword
    echo "temporal-namespace: search attribute TwoFactorState (Keyword) registered"
fi
