-- Tally's Postgres schema v1: projects and API keys, the model price table, the processor's
-- exactly-once bookkeeping (first-seen event ids and per-partition progress) and the agent run
-- history. Applied by `tally migrate` in one transaction.

CREATE TABLE projects (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are stored as SHA-256 digests; key_prefix identifies a key in listings and revocation.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id),
    key_prefix  text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_project ON api_keys (project_id);

-- Prices per million tokens. A row applies from effective_from until the next row of the same
-- provider and pattern. model_pattern is an exact model name or a prefix ending in '*'.
-- At most 6 decimal places per million tokens, so that every per-call cost is exact at the
-- 12 decimal places the rollups keep.
CREATE TABLE model_prices (
    id                       bigserial PRIMARY KEY,
    provider                 text NOT NULL,
    model_pattern            text NOT NULL,
    input_per_mtok           numeric(20, 6) NOT NULL CHECK (input_per_mtok >= 0),
    output_per_mtok          numeric(20, 6) NOT NULL CHECK (output_per_mtok >= 0),
    cache_read_per_mtok      numeric(20, 6) NOT NULL CHECK (cache_read_per_mtok >= 0),
    cache_creation_per_mtok  numeric(20, 6) NOT NULL CHECK (cache_creation_per_mtok >= 0),
    currency                 text NOT NULL DEFAULT 'USD',
    effective_from           timestamptz NOT NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, model_pattern, effective_from)
);

-- Exactly-once: where each event id was first seen on Kafka. An event counts only at its
-- first-seen partition and offset, so duplicates and replays never count twice and a
-- recomputed batch always counts the same events.
CREATE TABLE processed_events (
    project_id       text NOT NULL,
    event_id         uuid NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    PRIMARY KEY (project_id, event_id)
);

-- Exactly-once: per topic partition, the next offset to apply and, while a batch is being
-- written, its end. The offset moves in the same transaction as the agent run updates; see
-- docs/exactly-once.md.
CREATE TABLE partition_progress (
    topic            text NOT NULL,
    kafka_partition  integer NOT NULL,
    next_offset      bigint NOT NULL,
    pending_end      bigint,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition)
);

-- One row per agent run: fields from agent_run events, totals from its generations.
-- started_at = the run event's start, or else its first generation's start; it orders the
-- history (newest first) with run_id as the tie-breaker for keyset pagination.
CREATE TABLE agent_runs (
    project_id                   text NOT NULL,
    run_id                       text NOT NULL,
    user_id                      text,
    thread_id                    text,
    name                         text,
    status                       text NOT NULL DEFAULT 'unknown',
    run_started_at               timestamptz,
    first_generation_at          timestamptz,
    started_at                   timestamptz NOT NULL,
    ended_at                     timestamptz,
    metadata                     jsonb NOT NULL DEFAULT '{}'::jsonb,
    generation_count             bigint NOT NULL DEFAULT 0,
    error_count                  bigint NOT NULL DEFAULT 0,
    input_tokens                 bigint NOT NULL DEFAULT 0,
    output_tokens                bigint NOT NULL DEFAULT 0,
    cache_read_input_tokens      bigint NOT NULL DEFAULT 0,
    cache_creation_input_tokens  bigint NOT NULL DEFAULT 0,
    reasoning_tokens             bigint NOT NULL DEFAULT 0,
    cost                         numeric(38, 12) NOT NULL DEFAULT 0,
    unpriced_count               bigint NOT NULL DEFAULT 0,
    first_seen_at                timestamptz NOT NULL,
    last_seen_at                 timestamptz NOT NULL,
    PRIMARY KEY (project_id, run_id)
);
CREATE INDEX agent_runs_newest ON agent_runs (project_id, started_at DESC, run_id DESC);
CREATE INDEX agent_runs_user_newest ON agent_runs (project_id, user_id, started_at DESC, run_id DESC);
CREATE INDEX agent_runs_status_newest ON agent_runs (project_id, status, started_at DESC, run_id DESC);
