-- Probe tables: the processor's inserts, with the same columns, into the Null engine (which
-- keeps nothing). When ClickHouse or Postgres refuses a batch's values, the processor finds the
-- events that cause it by trying parts of the batch here (see processor/src/sink/isolate.rs):
-- the server parses and converts every row as it does for the real tables, and nothing is
-- stored, so a trial cannot add to what the queries read.
CREATE TABLE IF NOT EXISTS {db}.generations_probe AS {db}.generations ENGINE = Null;

CREATE TABLE IF NOT EXISTS {db}.cost_rollup_batches_probe AS {db}.cost_rollup_batches ENGINE = Null;
