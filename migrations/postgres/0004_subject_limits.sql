-- Rate limits per project and subject (common/src/subject_limits.rs). Rows are never updated:
-- setting a limit adds a row effective from its time, deleting one adds a row with a NULL
-- value, so the limit in force at any past minute can still be found (closed windows and
-- violations are judged against the limit of their own time). subject '' is the project-wide
-- default for its kind, used for every subject of that kind without a limit of its own.
CREATE TABLE subject_limits (
    id bigserial PRIMARY KEY,
    project_id text NOT NULL,
    subject_kind text NOT NULL CHECK (subject_kind IN ('user', 'application', 'api_key')),
    subject text NOT NULL DEFAULT '',
    metric text NOT NULL CHECK (metric IN ('requests_per_minute', 'tokens_per_minute', 'tokens_per_day', 'cost_per_day')),
    value numeric(38, 12) CHECK (value IS NULL OR value >= 0),
    effective_from timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subject_limits_lookup ON subject_limits (project_id, subject_kind, subject, metric, effective_from DESC, id DESC);
