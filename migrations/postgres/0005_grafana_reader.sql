-- Read access for Grafana's Postgres data source (deploy/grafana/provisioning/datasources):
-- the role tally_grafana may read subject_limits (the rate-limit dashboard's "Limits in force")
-- and nothing else; in particular not api_keys. The compose deployment's Postgres creates the
-- role as a login with its password before this runs (deploy/postgres/initdb); elsewhere it is
-- created here without login when this user may create roles (an operator then runs
-- `ALTER ROLE tally_grafana LOGIN PASSWORD '...'`), and otherwise left out.
-- A role created after this migration ran needs `GRANT SELECT ON subject_limits TO tally_grafana`.
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_grafana') AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN BEGIN CREATE ROLE tally_grafana NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; END IF; IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_grafana') THEN GRANT SELECT ON subject_limits TO tally_grafana; END IF; END $$;
