//! Which rollup rows answer a cost query: the compacted rows (per day for whole days of a `day`
//! query, per hour otherwise, or the totals without dimensions when the query neither groups
//! nor filters) as of the last compaction's frontier, plus the batch rows at or above it; or,
//! without a finished compaction, the batch rows alone. Every committed and in-flight batch is
//! then counted once (see [`tally_common::rollup::compaction`]).

use tally_common::rollup::compaction::{self, Frontier};
use tally_common::rollup::{Dimension, BATCH_TABLE, COMPACT_DAILY_TABLE, COMPACT_HOURLY_TABLE, COMPACT_TOTALS_TABLE};

use super::query::CostQuery;
use crate::params::ceil_to;

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// One branch of the union: a table, the time column, its time range and extra SQL conditions.
#[derive(Debug)]
pub struct Branch {
    pub table: &'static str,
    pub time: &'static str,
    /// Whether the table has the compacted dimensions, and the user.
    pub has_dimensions: bool,
    pub has_user: bool,
    pub from: i64,
    pub to: i64,
    pub condition: Option<String>,
}

impl Branch {
    fn batches(from: i64, to: i64, condition: Option<String>) -> Self {
        Branch { table: BATCH_TABLE, time: "hour", has_dimensions: true, has_user: true, from, to, condition }
    }

    /// The dimension columns of a SELECT over this branch, in [`Dimension::ALL`] order: each
    /// column, or an empty string under its name where the table lacks it.
    pub fn dimension_columns(&self) -> String {
        let columns: Vec<String> = Dimension::ALL
            .iter()
            .map(|dimension| {
                let present = if dimension.compacted() { self.has_dimensions } else { self.has_user };
                if present {
                    dimension.column().to_string()
                } else {
                    format!("'' AS {dimension}")
                }
            })
            .collect();
        columns.join(", ")
    }

    /// Compacted rows per hour (`day` false) or day; `totals`: the rows without dimensions.
    fn compacted(day: bool, totals: bool, from: i64, to: i64) -> Self {
        let (table, time, condition) = match (totals, day) {
            (true, false) => (COMPACT_TOTALS_TABLE, "t", Some("granularity = 'hour'".to_string())),
            (true, true) => (COMPACT_TOTALS_TABLE, "t", Some("granularity = 'day'".to_string())),
            (false, false) => (COMPACT_HOURLY_TABLE, "hour", None),
            (false, true) => (COMPACT_DAILY_TABLE, "day", None),
        };
        Branch { table, time, has_dimensions: !totals, has_user: false, from, to, condition }
    }
}

/// Which rows answer `query`: compacted rows as of `frontier` plus, unless `nothing_newer`,
/// the batch rows above it; or (with no frontier) the batch rows alone. Hours are
/// `[from_h, to_h)`, hour-aligned: an hour counts when its start lies in `[from, to)`.
pub fn plan(query: &CostQuery, frontier: Option<&Frontier>, nothing_newer: bool) -> Vec<Branch> {
    let from_h = ceil_to(query.from.unix_timestamp(), HOUR);
    let to_h = ceil_to(query.to.unix_timestamp(), HOUR);
    let Some(frontier) = frontier else {
        return vec![Branch::batches(from_h, to_h, None)];
    };
    let totals = query.group_by.is_empty() && query.filters.is_empty();
    let mut branches = Vec::new();
    let (days_from, days_to) = (ceil_to(from_h, DAY), to_h.div_euclid(DAY) * DAY);
    if query.interval_seconds as i64 == DAY && days_from < days_to {
        branches.push(Branch::compacted(true, totals, days_from, days_to));
        for (from, to) in [(from_h, days_from), (days_to, to_h)] {
            if from < to {
                branches.push(Branch::compacted(false, totals, from, to));
            }
        }
    } else {
        branches.push(Branch::compacted(false, totals, from_h, to_h));
    }
    if !nothing_newer {
        branches.push(Branch::batches(from_h, to_h, Some(compaction::at_or_above(frontier))));
    }
    branches
}
