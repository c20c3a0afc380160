//! Step 1, the claim: one Postgres transaction that locks each partition's progress row,
//! decides what of the buffered range is still to apply, records `pending_end`, and records
//! where each event was first seen (see the module docs of [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use tally_schemas::Event;
use uuid::Uuid;

use super::{Claim, Incoming, PartitionOutcome, Sink, SinkError, WriteReport};

/// What the claim hands to the next steps.
pub(super) struct Claimed {
    pub claims: Vec<Claim>,
    /// `keys[i]`: the dedup keys of claim i's decoded messages, in order.
    pub keys: Vec<Vec<Uuid>>,
    /// Where each key was first seen: an event counts only there.
    pub first_seen: HashMap<Uuid, (i32, i64)>,
}

/// The deduplication key of an event: UUIDv5 of `project_id 0x00 event_id`, so that the
/// Postgres index compares 16 bytes instead of text (see migrations/postgres/0002). `name` is a
/// reused buffer.
pub(super) fn event_key(event: &Event, name: &mut Vec<u8>) -> Uuid {
    let (project, event_id) = match event {
        Event::Generation(generation) => (&generation.project_id, &generation.event_id),
        Event::AgentRun(run) => (&run.project_id, &run.event_id),
    };
    dedup_key(project, event_id, name)
}

/// [`event_key`] of a `(project_id, event_id)`.
pub(crate) fn dedup_key(project: &str, event_id: &str, name: &mut Vec<u8>) -> Uuid {
    name.clear();
    name.extend_from_slice(project.as_bytes());
    name.push(0);
    name.extend_from_slice(event_id.as_bytes());
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name)
}

impl Sink {
    pub(super) async fn claim(
        &self,
        buffers: &BTreeMap<i32, Vec<Incoming>>,
        accept_gap_below: &HashMap<i32, i64>,
        report: &mut WriteReport,
    ) -> Result<Claimed, SinkError> {
        let mut transaction = self.pool.begin().await?;
        let mut claims = Vec::new();
        for (&partition, messages) in buffers.iter() {
            let (Some(first), Some(last)) = (messages.first(), messages.last()) else { continue };
            // The row must exist before it is locked: two workers racing on a partition's very
            // first batch would otherwise both see "no row" and both apply.
            sqlx::query(
                "INSERT INTO partition_progress (topic, kafka_partition, next_offset) VALUES ($1, $2, $3)
                 ON CONFLICT (topic, kafka_partition) DO NOTHING",
            )
            .bind(&self.topic)
            .bind(partition)
            .bind(first.offset)
            .execute(&mut *transaction)
            .await?;
            let row: Option<(i64, Option<i64>)> = sqlx::query_as(
                "SELECT next_offset, pending_end FROM partition_progress WHERE topic = $1 AND kafka_partition = $2 FOR UPDATE",
            )
            .bind(&self.topic)
            .bind(partition)
            .fetch_optional(&mut *transaction)
            .await?;
            let (next_offset, pending_end) = row.unwrap_or((first.offset, None));
            let end = last.offset + 1;
            if end <= next_offset {
                report.outcomes.insert(partition, PartitionOutcome::AlreadyApplied { next_offset });
                continue;
            }
            if pending_end.is_some_and(|pending| end < pending) {
                report.outcomes.insert(partition, PartitionOutcome::Deferred);
                continue;
            }
            let first_index = messages.partition_point(|message| message.offset < next_offset);
            let start = messages[first_index].offset;
            if start > next_offset {
                if accept_gap_below.get(&partition).is_some_and(|low| *low > next_offset) {
                    // Kafka no longer has the missing offsets (retention): nothing can bring them back.
                    tracing::error!(partition, expected = next_offset, got = start, "offsets deleted by retention before they were applied");
                    self.metrics.offset_gaps.inc();
                } else {
                    // The buffer skipped messages (e.g. across a rebalance): re-read, never skip.
                    report.outcomes.insert(partition, PartitionOutcome::Gap { expected: next_offset });
                    continue;
                }
            }
            sqlx::query(
                "UPDATE partition_progress SET next_offset = $3, pending_end = $4, updated_at = now()
                 WHERE topic = $1 AND kafka_partition = $2",
            )
            .bind(&self.topic)
            .bind(partition)
            .bind(start)
            .bind(end)
            .execute(&mut *transaction)
            .await?;
            claims.push(Claim { partition, start, end, first_index });
        }

        // Each key once, at its earliest (partition, offset) in this write, sorted by key: the
        // insert then has no duplicates within itself, and concurrent writers (lanes, other
        // workers) take the index locks in the same order, so they cannot deadlock.
        let mut earliest: HashMap<Uuid, (i32, i64)> = HashMap::new();
        let mut name = Vec::with_capacity(128);
        let mut claim_keys: Vec<Vec<Uuid>> = Vec::with_capacity(claims.len());
        for claim in &claims {
            let mut keys = Vec::new();
            for message in &buffers[&claim.partition][claim.first_index..] {
                if let Ok(event) = &message.decoded {
                    let key = event_key(event, &mut name);
                    earliest.entry(key).or_insert((claim.partition, message.offset));
                    keys.push(key);
                }
            }
            claim_keys.push(keys);
        }
        let mut rows: Vec<(Uuid, (i32, i64))> = earliest.into_iter().collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        let keys: Vec<Uuid> = rows.iter().map(|(key, _)| *key).collect();
        let partitions: Vec<i32> = rows.iter().map(|(_, (partition, _))| *partition).collect();
        let offsets: Vec<i64> = rows.iter().map(|(_, (_, offset))| *offset).collect();
        // First-seen locations. The insert returns the keys it recorded now (almost all of
        // them), first seen where this write saw them; only the others (duplicates of earlier
        // events, or keys an earlier attempt of this batch recorded) are looked up.
        let mut first_seen: HashMap<Uuid, (i32, i64)> = HashMap::with_capacity(keys.len());
        if !keys.is_empty() {
            let inserted: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO event_first_seen (event_key, kafka_partition, kafka_offset)
                 SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[])
                 ON CONFLICT (event_key) DO NOTHING
                 RETURNING event_key",
            )
            .bind(&keys)
            .bind(&partitions)
            .bind(&offsets)
            .fetch_all(&mut *transaction)
            .await?;
            let recorded_now: HashSet<Uuid> = inserted.into_iter().collect();
            let mut missing = Vec::new();
            for (key, location) in rows {
                if recorded_now.contains(&key) {
                    first_seen.insert(key, location);
                } else {
                    missing.push(key);
                }
            }
            if !missing.is_empty() {
                let rows: Vec<(Uuid, i32, i64)> = sqlx::query_as(
                    "SELECT event_key, kafka_partition, kafka_offset FROM event_first_seen WHERE event_key = ANY($1::uuid[])",
                )
                .bind(&missing)
                .fetch_all(&mut *transaction)
                .await?;
                for (key, partition, offset) in rows {
                    first_seen.insert(key, (partition, offset));
                }
            }
        }
        transaction.commit().await?;
        Ok(Claimed { claims, keys: claim_keys, first_seen })
    }
}
