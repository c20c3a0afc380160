-- First-seen bookkeeping keyed by one UUID per (project, event id) instead of (text, uuid).
-- The claim inserts one row per event and was the processor's largest cost: ~17 us per event
-- with the text column in the key (collation-aware comparisons in the B-tree) against ~7 us
-- with a single uuid. event_key = UUIDv5(NAMESPACE_OID, project_id || 0x00 || event_id), see
-- processor/src/sink.rs. No release held data in processed_events.
DROP TABLE processed_events;

CREATE TABLE event_first_seen (
    event_key        uuid PRIMARY KEY,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL
);
