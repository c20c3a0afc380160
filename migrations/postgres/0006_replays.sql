-- Every replay and reprice (`tally replay`, `tally reprice`): who ran it, when, over which
-- range, from which source, and what it found. The id also versions the rows a replay writes
-- to ClickHouse (processor/src/replay: 2^62 + 2 id for superseded rows, + 1 for its own), so a
-- later replay always wins over an earlier one. `tally reprice history` lists these rows.
CREATE TABLE IF NOT EXISTS replays (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('replay', 'reprice')),
    ran_by       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    range_from   timestamptz NOT NULL,
    range_to     timestamptz NOT NULL,
    project_id   text,
    model        text,
    source       text NOT NULL,
    dry_run      boolean NOT NULL,
    -- Per Kafka partition, the committed offset the replay read up to.
    fence        jsonb NOT NULL,
    events       bigint NOT NULL DEFAULT 0,
    cost_before  numeric,
    cost_after   numeric,
    summary      jsonb,
    error        text
);
