#!/usr/bin/env bash
# Run once by the postgres image when it creates the database (docker-compose.yml mounts this
# directory at /docker-entrypoint-initdb.d): the login role Grafana's Postgres data source reads
# the rate limits with. Its rights come from `tally migrate` (migrations/postgres/0005), which
# grants SELECT on subject_limits only. The password is GRAFANA_POSTGRES_PASSWORD (no default).
set -euo pipefail
: "${GRAFANA_POSTGRES_PASSWORD:?set GRAFANA_POSTGRES_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=password="$GRAFANA_POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE tally_grafana LOGIN PASSWORD :'password';
SQL
