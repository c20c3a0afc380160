//! Step 5, the commit: one Postgres transaction per partition that moves `next_offset` from the
//! claim's `start` to its `end` (fenced: only if the row still holds this claim), applies the
//! batch's agent run updates, and forgets the first-seen records of the events it rejected.

use std::collections::{BTreeMap, HashSet};

use sqlx::{Postgres, Transaction};
use tally_schemas::AgentRun;
use time::OffsetDateTime;

use super::{ErrorKind, PartitionBatch, PartitionOutcome, Sink, SinkError};
use crate::prices::PriceTable;
use crate::derived::agent_runs::RunDelta;
use crate::derived::BatchOutput;

/// Transaction-level advisory lock taken before a commit writes `agent_runs`, held until it
/// commits. A commit upserts two sets of runs, its partition's run events and then its
/// generations' run totals, and a run's generations travel on other partitions than its run
/// events; so two commits (two write lanes, or two workers) could lock the same runs in
/// opposite orders, and new runs' index entries too, which no sort of either set prevents.
/// Postgres broke such deadlocks after `deadlock_timeout` (1 s) by failing one commit, whose
/// whole write was then retried: 78 times in one full benchmark run, all during backlog
/// drains. Serialising only this part of the commit costs little: the upserts take ~5 µs per
/// event, while the claims and the ClickHouse inserts of the lanes still overlap. The key is
/// arbitrary but fixed.
pub(crate) const AGENT_RUNS_LOCK: i64 = 0x7461_6c6c_7972_756e; // "tallyrun"

fn timestamp(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Sink {
    /// Step 5, and when Postgres refuses the batch's values: isolate, rewrite ClickHouse
    /// without the refused events, dead-letter them, and commit again.
    pub(super) async fn commit_isolating(&self, batch: &mut PartitionBatch<'_>, prices: &PriceTable) -> Result<PartitionOutcome, SinkError> {
        let error = match self.commit(batch).await {
            Err(error) if error.kind() == ErrorKind::Refused => error,
            other => return other,
        };
        tracing::warn!(%error, partition = batch.claim.partition, "Postgres refused the batch's values; finding the events that cause it");
        let before: HashSet<i64> = batch.output.rejected.iter().map(|rejected| rejected.offset).collect();
        let previous = std::mem::take(&mut batch.output);
        if self.isolate(batch, prices).await? == 0 {
            batch.output = previous;
            return Err(error);
        }
        self.rewrite(batch, &previous).await?;
        let new_letters: Vec<_> = batch.dead_letters().into_iter().filter(|letter| letter.kind == "rejected" && !before.contains(&letter.offset)).collect();
        self.dead_letter(batch.claim.partition, &new_letters).await?;
        self.commit(batch).await
    }

    async fn commit(&self, batch: &PartitionBatch<'_>) -> Result<PartitionOutcome, SinkError> {
        let claim = batch.claim;
        let mut transaction = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE partition_progress SET next_offset = $5, pending_end = NULL, updated_at = now()
             WHERE topic = $1 AND kafka_partition = $2 AND next_offset = $3 AND pending_end = $4",
        )
        .bind(&self.topic)
        .bind(claim.partition)
        .bind(claim.start)
        .bind(claim.end)
        .bind(claim.end)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved == 0 {
            transaction.rollback().await?;
            tracing::warn!(partition = claim.partition, start = claim.start, end = claim.end, "batch applied by another worker; dropping it");
            self.metrics.lost_ownership.inc();
            return Ok(PartitionOutcome::LostOwnership);
        }
        self.apply_runs(&mut transaction, &batch.output).await?;
        let rejected = batch.rejected_keys();
        if !rejected.is_empty() {
            // A rejected event did not count: a replay of it from the dead-letter topic must.
            sqlx::query("DELETE FROM event_first_seen WHERE event_key = ANY($1::uuid[]) AND kafka_partition = $2")
                .bind(&rejected)
                .bind(claim.partition)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(PartitionOutcome::Applied { next_offset: claim.end })
    }

    /// The agent run updates of `output`, inside `transaction` (a commit's, or a trial's that is
    /// rolled back).
    pub(super) async fn apply_runs(&self, transaction: &mut Transaction<'_, Postgres>, output: &BatchOutput) -> Result<(), SinkError> {
        if output.runs.is_empty() {
            return Ok(());
        }
        // One writer at a time in `agent_runs` (see AGENT_RUNS_LOCK).
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AGENT_RUNS_LOCK).execute(&mut **transaction).await?;
        upsert_run_events(transaction, &output.runs.events, self.limits.max_run_metadata_bytes).await?;
        upsert_run_deltas(transaction, &output.runs.deltas).await?;
        Ok(())
    }
}

async fn upsert_run_events(
    transaction: &mut Transaction<'_, Postgres>,
    runs: &BTreeMap<(String, String), AgentRun>,
    max_metadata_bytes: usize,
) -> Result<(), sqlx::Error> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut projects = Vec::new();
    let mut run_ids = Vec::new();
    let mut users = Vec::new();
    let mut threads = Vec::new();
    let mut names = Vec::new();
    let mut statuses = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut metadata = Vec::new();
    for ((project, run_id), run) in runs {
        projects.push(project.clone());
        run_ids.push(run_id.clone());
        users.push(run.user_id.clone());
        threads.push(run.thread_id.clone());
        names.push(run.name.clone());
        statuses.push(run.status.as_str().to_string());
        starts.push(timestamp(run.start_time_us));
        ends.push(run.end_time_us.map(timestamp));
        metadata.push(serde_json::to_value(&run.metadata).unwrap_or_default());
    }
    // A terminal status is never downgraded to running by a late or re-sent event. Metadata
    // merges key by key up to $10 bytes of JSON text; past that, existing keys still update but
    // no key is added (a run reported again and again with new keys would otherwise grow toward
    // jsonb's limit and fail every commit of its partition).
    sqlx::query(
        "INSERT INTO agent_runs AS r (project_id, run_id, user_id, thread_id, name, status, run_started_at, started_at,
                                      ended_at, metadata, first_seen_at, last_seen_at)
         SELECT p, id, u, t, n, s, st, st, en, m, st, COALESCE(en, st)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                     $8::timestamptz[], $9::jsonb[]) AS x(p, id, u, t, n, s, st, en, m)
         ON CONFLICT (project_id, run_id) DO UPDATE SET
            user_id = COALESCE(EXCLUDED.user_id, r.user_id),
            thread_id = COALESCE(EXCLUDED.thread_id, r.thread_id),
            name = COALESCE(EXCLUDED.name, r.name),
            status = CASE WHEN EXCLUDED.status = 'running' AND r.status IN ('completed', 'failed', 'cancelled')
                          THEN r.status ELSE EXCLUDED.status END,
            run_started_at = EXCLUDED.run_started_at,
            started_at = EXCLUDED.run_started_at,
            ended_at = COALESCE(EXCLUDED.ended_at, r.ended_at),
            metadata = CASE WHEN pg_column_size(r.metadata || EXCLUDED.metadata) <= $10 THEN r.metadata || EXCLUDED.metadata
                            ELSE r.metadata || (SELECT COALESCE(jsonb_object_agg(e.key, e.value), '{}'::jsonb)
                                                FROM jsonb_each(EXCLUDED.metadata) AS e WHERE r.metadata ? e.key) END,
            first_seen_at = LEAST(r.first_seen_at, EXCLUDED.first_seen_at),
            last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at)",
    )
    .bind(&projects)
    .bind(&run_ids)
    .bind(&users)
    .bind(&threads)
    .bind(&names)
    .bind(&statuses)
    .bind(&starts)
    .bind(&ends)
    .bind(&metadata)
    .bind(i64::try_from(max_metadata_bytes).unwrap_or(i64::MAX))
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

async fn upsert_run_deltas(transaction: &mut Transaction<'_, Postgres>, deltas: &BTreeMap<(String, String), RunDelta>) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<String>, Vec<String>, Vec<Option<String>>) = Default::default();
    let mut counts: [Vec<i64>; 8] = Default::default();
    let mut costs = Vec::new();
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for ((project, run_id), delta) in deltas {
        columns.0.push(project.clone());
        columns.1.push(run_id.clone());
        columns.2.push(delta.user_id.clone());
        for (column, value) in counts.iter_mut().zip([
            delta.generation_count,
            delta.error_count,
            delta.input_tokens,
            delta.output_tokens,
            delta.cache_read_input_tokens,
            delta.cache_creation_input_tokens,
            delta.reasoning_tokens,
            delta.unpriced_count,
        ]) {
            column.push(value);
        }
        costs.push(delta.cost);
        firsts.push(timestamp(delta.first_generation_us));
        lasts.push(timestamp(delta.last_generation_us));
    }
    // A total that would leave bigint fails the statement (22003, numeric_value_out_of_range):
    // the sink then finds the generations that overflow it and dead-letters them.
    sqlx::query(
        "INSERT INTO agent_runs AS r (project_id, run_id, user_id, first_generation_at, started_at, generation_count,
                error_count, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
                reasoning_tokens, unpriced_count, cost, first_seen_at, last_seen_at)
         SELECT p, id, u, f, f, gc, ec, it, ot, crt, cct, rt, uc, c, f, l
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::numeric[], $13::timestamptz[],
                     $14::timestamptz[]) AS x(p, id, u, gc, ec, it, ot, crt, cct, rt, uc, c, f, l)
         ON CONFLICT (project_id, run_id) DO UPDATE SET
            user_id = COALESCE(r.user_id, EXCLUDED.user_id),
            first_generation_at = LEAST(r.first_generation_at, EXCLUDED.first_generation_at),
            started_at = COALESCE(r.run_started_at, LEAST(r.first_generation_at, EXCLUDED.first_generation_at)),
            generation_count = r.generation_count + EXCLUDED.generation_count,
            error_count = r.error_count + EXCLUDED.error_count,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cache_read_input_tokens = r.cache_read_input_tokens + EXCLUDED.cache_read_input_tokens,
            cache_creation_input_tokens = r.cache_creation_input_tokens + EXCLUDED.cache_creation_input_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            unpriced_count = r.unpriced_count + EXCLUDED.unpriced_count,
            cost = r.cost + EXCLUDED.cost,
            first_seen_at = LEAST(r.first_seen_at, EXCLUDED.first_seen_at),
            last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at)",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&counts[0])
    .bind(&counts[1])
    .bind(&counts[2])
    .bind(&counts[3])
    .bind(&counts[4])
    .bind(&counts[5])
    .bind(&counts[6])
    .bind(&counts[7])
    .bind(&costs)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
