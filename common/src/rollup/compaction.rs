//! The rollup compaction markers and frontier, shared by the processor (which compacts) and the
//! query API (which reads compacted rows plus the batch rows not yet compacted).
//!
//! `cost_rollup_batches` holds one row per (source batch, hour, dimensions). The compactor
//! folds the rows of *committed* batches (those whose first offset is below the partition's
//! `next_offset` in Postgres; their rows are final) into `cost_compact_hourly` and
//! `cost_compact_daily`, and records in `rollup_compactions` a marker `started` before writing
//! and `done` after, with the frontier: per source partition, the first batch offset not
//! included. A reader takes the newest marker; when it is `done`, the answer is the compacted
//! rows plus the batch rows at or above the frontier, and it is exact because every batch row
//! is on exactly one side. docs/exactly-once.md ("Rollup compaction") has the argument.

use std::collections::BTreeMap;

/// Per source partition, the first batch offset a compaction did not include.
pub type Frontier = BTreeMap<i32, i64>;

/// A compaction's progress, stored as `Enum8('started' = 1, 'done' = 2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerState {
    Started,
    Done,
}

impl MarkerState {
    /// The stored enum value.
    pub const fn code(self) -> i8 {
        match self {
            MarkerState::Started => 1,
            MarkerState::Done => 2,
        }
    }
}

/// One row of `rollup_compactions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub version: u64,
    pub state: MarkerState,
    pub frontier: Frontier,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct MarkerRow {
    version: u64,
    state_code: u8,
    frontier_partitions: Vec<i32>,
    frontier_offsets: Vec<i64>,
}

impl From<MarkerRow> for Marker {
    fn from(row: MarkerRow) -> Self {
        Marker {
            version: row.version,
            state: if row.state_code as i8 == MarkerState::Done.code() { MarkerState::Done } else { MarkerState::Started },
            frontier: row.frontier_partitions.into_iter().zip(row.frontier_offsets).collect(),
        }
    }
}

// `state_code`, not `state`: ClickHouse resolves output aliases in WHERE.
const MARKER_COLUMNS: &str = "SELECT version, toUInt8(state) AS state_code, frontier_partitions, frontier_offsets FROM rollup_compactions";

/// The newest marker (`done` sorts after `started` of the same version), if any compaction ran.
pub async fn latest_marker(client: &clickhouse::Client) -> Result<Option<Marker>, clickhouse::error::Error> {
    let rows: Vec<MarkerRow> = client.query(&format!("{MARKER_COLUMNS} ORDER BY version DESC, state DESC LIMIT 1")).fetch_all().await?;
    Ok(rows.into_iter().next().map(Marker::from))
}

/// The newest `done` marker, if any.
pub async fn last_done(client: &clickhouse::Client) -> Result<Option<Marker>, clickhouse::error::Error> {
    let rows: Vec<MarkerRow> =
        client.query(&format!("{MARKER_COLUMNS} WHERE state = 'done' ORDER BY version DESC LIMIT 1")).fetch_all().await?;
    Ok(rows.into_iter().next().map(Marker::from))
}

/// The marker row as written.
#[derive(clickhouse::Row, serde::Serialize)]
pub struct MarkerWrite {
    pub version: u64,
    pub state: i8,
    pub frontier_partitions: Vec<i32>,
    pub frontier_offsets: Vec<i64>,
    pub created_at: u32,
}

/// The table of the markers.
pub const MARKER_TABLE: &str = "rollup_compactions";

/// Records that compaction `version` has reached `state` with `frontier`.
pub async fn write_marker(client: &clickhouse::Client, version: u64, state: MarkerState, frontier: &Frontier) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert::<MarkerWrite>(MARKER_TABLE).await?;
    insert
        .write(&MarkerWrite {
            version,
            state: state.code(),
            frontier_partitions: frontier.keys().copied().collect(),
            frontier_offsets: frontier.values().copied().collect(),
            created_at: time::OffsetDateTime::now_utc().unix_timestamp() as u32,
        })
        .await?;
    insert.end().await
}

/// SQL condition on `cost_rollup_batches` for the rows at or above `frontier` (not compacted).
/// Partitions the frontier does not name have had nothing compacted. Every term is a range of
/// the table's sorting key (a `NOT IN` would make ClickHouse scan the whole table): partitions
/// below the highest named one that it lacks are listed, higher ones are `> highest`.
///
/// The numbers are formatted into the SQL rather than bound: they are typed integers, never
/// text from a request, and the condition is reused inside larger statements where positional
/// binds would be error-prone.
pub fn at_or_above(frontier: &Frontier) -> String {
    let Some(highest) = frontier.keys().next_back().copied() else { return "1".to_string() };
    let mut terms: Vec<String> = (0..=highest)
        .map(|partition| match frontier.get(&partition) {
            Some(offset) => format!("(source_partition = {partition} AND source_batch_start >= {offset})"),
            None => format!("source_partition = {partition}"),
        })
        .collect();
    terms.push(format!("source_partition > {highest}"));
    format!("({})", terms.join(" OR "))
}

/// SQL condition for the rows of batches in `[from, to)` per partition (`from` defaults to 0).
pub fn between(from: &Frontier, to: &Frontier) -> Option<String> {
    let terms: Vec<String> = to
        .iter()
        .filter_map(|(partition, end)| {
            let start = from.get(partition).copied().unwrap_or(0);
            (start < *end).then(|| format!("(source_partition = {partition} AND source_batch_start >= {start} AND source_batch_start < {end})"))
        })
        .collect();
    (!terms.is_empty()).then(|| format!("({})", terms.join(" OR ")))
}

/// SQL condition for the rows of batches below `to` (committed).
pub fn below(to: &Frontier) -> String {
    between(&Frontier::new(), to).unwrap_or_else(|| "0".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_cover_each_row_once() {
        let frontier: Frontier = [(0, 100), (2, 50)].into_iter().collect();
        assert_eq!(
            at_or_above(&frontier),
            "((source_partition = 0 AND source_batch_start >= 100) OR source_partition = 1 OR (source_partition = 2 AND source_batch_start >= 50) OR source_partition > 2)"
        );
        assert_eq!(at_or_above(&Frontier::new()), "1");
        let to: Frontier = [(0, 100), (1, 7), (2, 80)].into_iter().collect();
        assert_eq!(
            between(&frontier, &to).unwrap(),
            "((source_partition = 1 AND source_batch_start >= 0 AND source_batch_start < 7) OR (source_partition = 2 AND source_batch_start >= 50 AND source_batch_start < 80))"
        );
        assert_eq!(between(&to, &to), None);
        assert_eq!(below(&Frontier::new()), "0");
    }
}
