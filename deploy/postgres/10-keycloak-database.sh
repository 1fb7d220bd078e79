#!/bin/bash
# Runs once, when the PostgreSQL volume is first created: Keycloak gets its own database and user.
set -euo pipefail
: "${KEYCLOAK_DB_PASSWORD:?KEYCLOAK_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$KEYCLOAK_DB_PASSWORD" <<'SQL'
CREATE USER keycloak WITH PASSWORD :'password';
CREATE DATABASE keycloak OWNER keycloak;
SQL
