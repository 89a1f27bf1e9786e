#!/bin/sh
# One-shot (temporalio/admin-tools): Temporal's two databases on PostgreSQL, created when missing,
# then brought to the schema version this admin-tools image ships. Safe to run on every
# `docker compose up`, and it is what upgrades the schema when the Temporal images are bumped
# (bump temporalio/admin-tools and temporalio/server together, one minor version at a time).
# Connection settings come from SQL_PLUGIN, SQL_HOST, SQL_PORT, SQL_USER and SQL_PASSWORD.
set -eu

schema_dir=/etc/temporal/schema/postgresql/v12

echo "temporal-schema: waiting for PostgreSQL at ${SQL_HOST}:${SQL_PORT}"
tries=0
until nc -z "$SQL_HOST" "$SQL_PORT"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "temporal-schema: PostgreSQL did not answer in 60 s" >&2
        exit 1
    fi
    sleep 1
done

create_database() {
    # `create` fails on a database that exists: only that failure is expected here.
    if output=$(temporal-sql-tool --db "$1" create 2>&1); then
        echo "temporal-schema: created database $1"
    elif printf '%s' "$output" | grep -q 'already exists'; then
        echo "temporal-schema: database $1 already exists"
    else
        printf '%s\n' "$output" >&2
        exit 1
    fi
}

setup_database() {
    create_database "$1"
    temporal-sql-tool --db "$1" setup-schema -v 0.0
    temporal-sql-tool --db "$1" update-schema -d "$schema_dir/$2/versioned"
}

setup_database temporal temporal
setup_database temporal_visibility visibility
echo "temporal-schema: both databases are at the newest schema"
