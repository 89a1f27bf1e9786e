#!/usr/bin/env bash
# First start of the PostgreSQL container only (an empty data volume): one role per tenant.
#
#   - the app's role and database, both read from TWOFA_DATABASE_URL (the one place its
#     password is written): postgresql://<user>:<password>@postgresql:5432/<database>
#   - the role `temporal`, password TEMPORAL_DB_PASSWORD, allowed to create databases: the
#     temporal-schema service creates `temporal` and `temporal_visibility` with it, so Temporal
#     owns its two databases and the app's role cannot read them (nor the other way round).
#
# Passwords go into SQL as psql variables (:'name'), never spliced into the text. Use URL-safe
# passwords (letters, digits, - _ . ~), e.g. `openssl rand -hex 24`; %XX escapes are decoded.
set -euo pipefail

url="${TWOFA_DATABASE_URL:?TWOFA_DATABASE_URL is not set}"
: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD is not set}"

rest="${url#*://}"            # user:password@host:port/database?options
userinfo="${rest%@*}"         # user:password (up to the last @)
location="${rest##*@}"        # host:port/database?options
if [[ "$rest" == "$url" || "$userinfo" == "$rest" || "$userinfo" != *:* ]]; then
    echo "init-databases: TWOFA_DATABASE_URL must look like postgresql://user:password@host:port/db" >&2
    exit 1
fi
percent_decode() { printf '%b' "${1//%/\\x}"; }
app_user="$(percent_decode "${userinfo%%:*}")"
app_password="$(percent_decode "${userinfo#*:}")"
app_db="${location#*/}"
app_db="$(percent_decode "${app_db%%\?*}")"

psql --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    --set app_user="$app_user" --set app_password="$app_password" --set app_db="$app_db" \
    --set temporal_password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
SQL
echo "init-databases: role and database \"$app_user\"/\"$app_db\" for the app, role \"temporal\" for Temporal"
