//! Finding the events whose values a store refuses, so that they alone are dead-lettered and
//! the rest of their batch is written.
//!
//! A *trial* writes the rows of a set of the claim's events where nothing stays: ClickHouse's
//! Null-engine probe tables (migrations/clickhouse/0003), which parse and convert every row as
//! the real tables do, and the agent run updates in a Postgres transaction that is rolled back.
//! The search keeps an accepted prefix of the counted events (in offset order) that passes and
//! binary-searches the shortest longer prefix that fails: its last event is refused, with the
//! store's message as the reason, and the search goes on after it. That finds single poison
//! events (a value out of range) and also events that are poison only together with earlier
//! ones (the generation that makes a run's total leave `bigint`): the one that tips it over is
//! refused. Each refused event costs about log2(n) trials; a batch without refusals costs none.
//!
//! The outcome is a function of the events and of the stores' state, which is what the commit
//! sees too. A refusal that depends on Postgres state (a run total near the limit) could come
//! out differently if a crash between this write and its commit were followed by another
//! partition's commit to the same run; docs/exactly-once.md discusses it.

use super::clickhouse::Tables;
use super::{compute_output, Counted, ErrorKind, PartitionBatch, Sink, SinkError};
use crate::prices::PriceTable;

impl Sink {
    /// Adds the events of `batch` that a store refuses to `batch.refused` and recomputes its
    /// output; returns how many were found. A transient error during the search is returned
    /// (the write is then retried as a whole).
    pub(super) async fn isolate(&self, batch: &mut PartitionBatch<'_>, prices: &PriceTable) -> Result<usize, SinkError> {
        let candidates: Vec<usize> = (0..batch.counted.len()).filter(|index| !batch.refused.contains_key(&batch.counted[*index].offset)).collect();
        let mut accepted: Vec<usize> = Vec::with_capacity(candidates.len());
        let mut rest: &[usize] = &candidates;
        let mut found = 0;
        let mut trials = 0usize;
        loop {
            trials += 1;
            let Some(mut reason) = self.trial(batch, &accepted, rest, prices).await? else { break };
            // The shortest prefix of `rest` that fails with `accepted`: `accepted` alone passes.
            let (mut low, mut high) = (1, rest.len());
            while low < high {
                let middle = (low + high) / 2;
                trials += 1;
                match self.trial(batch, &accepted, &rest[..middle], prices).await? {
                    None => low = middle + 1,
                    Some(error) => {
                        high = middle;
                        reason = error;
                    }
                }
            }
            let culprit = &batch.counted[rest[low - 1]];
            tracing::warn!(partition = batch.claim.partition, offset = culprit.offset, %reason, "event refused by a store; it goes to the dead-letter topic");
            batch.refused.insert(culprit.offset, format!("refused by {reason}"));
            found += 1;
            accepted.extend_from_slice(&rest[..low - 1]);
            rest = &rest[low..];
        }
        let outcome = if found > 0 { "found" } else { "not_reproduced" };
        self.metrics.isolations.with_label_values(&[outcome]).inc();
        tracing::info!(partition = batch.claim.partition, found, trials, events = candidates.len(), "isolation finished");
        batch.compute(prices);
        Ok(found)
    }

    /// Writes the rows of `accepted` and `more` (indexes into `batch.counted`) where nothing
    /// stays; `Some(reason)` when a store refuses them.
    async fn trial(&self, batch: &PartitionBatch<'_>, accepted: &[usize], more: &[usize], prices: &PriceTable) -> Result<Option<String>, SinkError> {
        let events: Vec<&Counted<'_>> = accepted.iter().chain(more).map(|index| &batch.counted[*index]).collect();
        let output = compute_output(batch.claim, events.into_iter(), prices);
        let refused = |error: SinkError| match error.kind() {
            ErrorKind::Refused => Ok(Some(error.to_string())),
            ErrorKind::Transient => Err(error),
        };
        if let Err(error) = self.insert_outputs(&[&output], Tables::Probe).await {
            return refused(error);
        }
        let mut transaction = self.pool.begin().await?;
        let applied = self.apply_runs(&mut transaction, &output).await;
        transaction.rollback().await?;
        match applied {
            Ok(()) => Ok(None),
            Err(error) => refused(error),
        }
    }
}
