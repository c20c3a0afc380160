//! The agent run updates: per (project, run), the totals the batch's generations add, and the
//! last `agent_run` event of the batch. They are applied in Postgres `agent_runs` in the same
//! transaction as the commit (processor/src/sink/commit.rs), so they move once per batch.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tally_schemas::{AgentRun, GenerationStatus};

use super::{Batch, DerivedOutput};

/// Totals a batch adds to one agent run (from its generations).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunDelta {
    pub user_id: Option<String>,
    pub generation_count: i64,
    pub error_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Decimal,
    pub unpriced_count: i64,
    pub first_generation_us: i64,
    pub last_generation_us: i64,
}

/// What a batch changes in `agent_runs`.
#[derive(Debug, Default)]
pub struct RunUpdates {
    /// Per (project, run): generation totals.
    pub deltas: BTreeMap<(String, String), RunDelta>,
    /// Per (project, run): the last agent_run event of the batch (later offsets win).
    pub events: BTreeMap<(String, String), AgentRun>,
}

impl RunUpdates {
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.events.is_empty()
    }
}

/// The `agent_runs` table.
pub struct AgentRuns;

impl DerivedOutput for AgentRuns {
    type Rows = RunUpdates;

    fn compute(batch: &Batch<'_>) -> RunUpdates {
        let mut updates = RunUpdates::default();
        for priced in &batch.generations {
            let generation = priced.generation;
            let Some(run_id) = &generation.agent_run_id else { continue };
            let delta = updates.deltas.entry((generation.project_id.clone(), run_id.clone())).or_insert_with(|| RunDelta {
                first_generation_us: generation.start_time_us,
                last_generation_us: generation.start_time_us,
                ..Default::default()
            });
            if delta.user_id.is_none() {
                delta.user_id = generation.user_id.clone();
            }
            delta.generation_count += 1;
            delta.error_count += i64::from(generation.status == GenerationStatus::Error);
            delta.input_tokens += generation.input_tokens;
            delta.output_tokens += generation.output_tokens;
            delta.cache_read_input_tokens += generation.cache_read_input_tokens;
            delta.cache_creation_input_tokens += generation.cache_creation_input_tokens;
            delta.reasoning_tokens += generation.reasoning_tokens;
            match priced.cost {
                Some(cost) => delta.cost += cost,
                None => delta.unpriced_count += 1,
            }
            delta.first_generation_us = delta.first_generation_us.min(generation.start_time_us);
            delta.last_generation_us = delta.last_generation_us.max(generation.start_time_us + generation.duration_us);
        }
        for (_, run) in &batch.runs {
            updates.events.insert((run.project_id.clone(), run.run_id.clone()), (*run).clone());
        }
        updates
    }
}
