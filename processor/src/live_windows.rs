//! Step 6 of a write, the live rate-limit windows in Redis (layout in
//! [`tally_common::live_windows`]): after a batch's commit, its per-minute rows
//! ([`crate::derived::rate_windows`]) are added to their minute and day windows, once.
//!
//! **Once.** A batch is added only *after* it committed, by one Lua script that also moves the
//! partition's record of applied batches (`tally:rw:applied:{topic}`, partition → end offset):
//! the script adds `[start, end)` only if the record says `start`, and does nothing if it says
//! `end` or more (a batch added before). Batches of a partition are committed in offset order,
//! so a record that says neither is a *hole*: a batch committed without being added (the
//! processor was killed between its commit and this step, Redis was down or restarted and lost
//! its data, another worker took the partition over). Then the partition's contribution to
//! every open window is **rebuilt** from ClickHouse, where every committed batch's rows are
//! (they are written before the commit): the sum of the rows of its batches below `end`, set
//! as the partition's fields by a second script that also sets the record to `end`, and only
//! if the record is still below `end`. A committed batch is thus added once or rebuilt from
//! its rows, never both; a batch that is not committed is never added.
//!
//! A partition whose record lags its committed offset with no new batch to notice it (idle
//! after a Redis restart) is found by the reconciler ([`reconcile`]), which rebuilds it from
//! Postgres' committed offset the same way.
//!
//! **Redis down.** A failed step is logged and counted, never retried and never fails the
//! batch: the rest of the processor goes on, and Redis is left alone for
//! [`PAUSE_AFTER_ERROR`] so that each batch does not wait for a timeout. The batches missed
//! meanwhile are a hole, rebuilt at the first batch after Redis is back.
//!
//! Windows that already expired ([`Resolution::keep_secs`]) are not written: a late event
//! counts in its own closed window in ClickHouse only.
//!
//! **Only limited kinds.** Live windows cost Redis about 6 ms of CPU per 1,000 events when
//! every subject has them (measured with `scripts/drain`), so they are kept only for the subject
//! kinds a project has limits for (any row in `subject_limits`, own or default, past or
//! scheduled), which the reconciler reloads from Postgres on every pass. When a project gains a
//! limited kind, the record of applied batches is deleted, so every partition is rebuilt from
//! ClickHouse (where every kind's rows are) and the new kind's current windows are whole from
//! then on, not counted from the moment the limit was set.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::PgPool;
use tally_common::live_windows::{applied_key, window_key, Resolution, Usage};
use tally_common::shutdown::{CancellationToken, Ticker};

use crate::derived::rate_windows::RateWindowRow;
use crate::metrics::ProcessorMetrics;

/// How long Redis is left alone after a failed step.
pub const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(2);

/// How long a partition must have been idle (no commit) before the reconciler rebuilds it, so
/// that it does not race the lane that writes it.
const IDLE_BEFORE_RECONCILE_SECS: i64 = 5;

/// Adds `[start, end)` of one partition to its windows if the record says `start` (see the
/// module docs). ARGV: partition, start, end, then per window (KEYS[2..]) its expiry and
/// requests, tokens, cost, unpriced. Returns {1, failed increments}, {0} when added before,
/// {-1} for a hole.
const APPLY: &str = r"
local applied = redis.call('HGET', KEYS[1], ARGV[1])
if not applied then return {-1} end
applied = tonumber(applied)
if applied >= tonumber(ARGV[3]) then return {0} end
if applied ~= tonumber(ARGV[2]) then return {-1} end
local prefix = ARGV[1] .. ':'
local metrics = {'r', 't', 'c', 'u'}
local failed = 0
for i = 2, #KEYS do
  local at = 4 + (i - 2) * 5
  for j = 1, 4 do
    local value = ARGV[at + j]
    if value ~= '0' then
      local result = redis.pcall('HINCRBY', KEYS[i], prefix .. metrics[j], value)
      if type(result) == 'table' and result.err then
        failed = failed + 1
      elseif j == 1 and tostring(result) == value then
        -- The partition's first requests in this window: a new field, maybe a new key.
        redis.call('EXPIREAT', KEYS[i], ARGV[at])
      end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, failed}
";

/// Sets one partition's contribution to its open windows, read from ClickHouse for its
/// batches below ARGV[2], unless the record already says ARGV[2] or more. ARGV: partition,
/// end, then per window its expiry and the four values. Returns 1 when set, 0 when not needed.
const REBUILD: &str = r"
local applied = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if applied >= tonumber(ARGV[2]) then return 0 end
local prefix = ARGV[1] .. ':'
for i = 2, #KEYS do
  local at = 3 + (i - 2) * 5
  redis.call('HSET', KEYS[i], prefix .. 'r', ARGV[at + 1], prefix .. 't', ARGV[at + 2], prefix .. 'c', ARGV[at + 3], prefix .. 'u', ARGV[at + 4])
  redis.call('EXPIREAT', KEYS[i], ARGV[at])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// A window's key, expiry and what is added to (or set in) it.
type Windows = HashMap<String, (u64, Usage)>;

/// The (project, subject kind) pairs that have live windows.
pub type LimitedKinds = HashSet<(String, String)>;

/// Adds `rows` of limited kinds to the windows they fall in that are still open at `now`
/// (epoch seconds).
fn windows_of<'r>(prefix: &str, rows: impl IntoIterator<Item = &'r RateWindowRow>, limited: &LimitedKinds, now: u64) -> Windows {
    let mut windows = Windows::new();
    let mut pair = (String::new(), String::new());
    for row in rows {
        if pair.0 != row.project_id || pair.1 != row.subject_kind {
            pair.0.clone_from(&row.project_id);
            pair.1.clone_from(&row.subject_kind);
        }
        if !limited.contains(&pair) {
            continue;
        }
        for resolution in Resolution::ALL {
            let start = resolution.start_of(row.minute);
            let expires_at = resolution.expires_at(start);
            if expires_at <= now {
                continue;
            }
            let key = window_key(prefix, resolution, start, &row.project_id, &row.subject_kind, &row.subject);
            let (_, usage) = windows.entry(key).or_insert((expires_at, Usage::default()));
            usage.requests += row.requests;
            usage.tokens += row.tokens;
            usage.cost += row.cost;
            usage.unpriced_requests += row.unpriced_requests;
        }
    }
    windows
}

/// An i128 cost as a Redis integer; beyond i64 it saturates (a window would have to hold over
/// nine million dollars) and the increment is counted as failed by nobody: say so in the log.
fn redis_integer(value: i128) -> i64 {
    i64::try_from(value).unwrap_or_else(|_| {
        tracing::warn!(value = %value, "live window value beyond Redis' 64-bit integers; saturated");
        if value < 0 { i64::MIN } else { i64::MAX }
    })
}

fn push_window(invocation: &mut redis::ScriptInvocation<'_>, key: &str, expires_at: u64, usage: &Usage) {
    invocation
        .key(key)
        .arg(expires_at)
        .arg(usage.requests)
        .arg(usage.tokens)
        .arg(redis_integer(usage.cost))
        .arg(usage.unpriced_requests);
}

/// Partition sums of `rate_windows_batches`, as read for a rebuild.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct WindowSum {
    project_id: String,
    subject_kind: String,
    subject: String,
    minute: u32,
    requests: u64,
    tokens: u64,
    cost: i128,
    unpriced_requests: u64,
}

/// What a step did, for the caller's log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Added,
    AddedBefore,
    Rebuilt,
    /// Redis failed or is paused after a failure; the batch is a hole to rebuild later.
    Skipped,
}

/// The processor's writer of live windows.
pub struct LiveWindows {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    clickhouse: clickhouse::Client,
    prefix: String,
    applied_key: String,
    apply: redis::Script,
    rebuild: redis::Script,
    paused_until: Mutex<Option<Instant>>,
    limited: RwLock<Arc<LimitedKinds>>,
    /// A limited kind was gained and the applied record is still to be deleted.
    reset_pending: std::sync::atomic::AtomicBool,
    metrics: ProcessorMetrics,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0)
}

impl LiveWindows {
    /// `prefix` is `redis.key_prefix`.
    pub fn new(client: redis::Client, prefix: &str, clickhouse: clickhouse::Client, topic: &str, metrics: ProcessorMetrics) -> LiveWindows {
        LiveWindows {
            client,
            connection: tokio::sync::Mutex::new(None),
            clickhouse,
            prefix: prefix.to_owned(),
            applied_key: applied_key(prefix, topic),
            apply: redis::Script::new(APPLY),
            rebuild: redis::Script::new(REBUILD),
            paused_until: Mutex::new(None),
            limited: RwLock::new(Arc::new(LimitedKinds::new())),
            reset_pending: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    fn limited(&self) -> Arc<LimitedKinds> {
        self.limited.read().expect("limited kinds lock").clone()
    }

    /// Reloads the limited kinds; when a pair is new, deletes the record of applied batches so
    /// that every partition is rebuilt with it (retried on the next pass while Redis fails).
    /// Returns whether the record was deleted.
    pub async fn refresh_limited(&self, pool: &PgPool) -> Result<bool, anyhow::Error> {
        let pairs: Vec<(String, String)> = sqlx::query_as("SELECT DISTINCT project_id, subject_kind FROM subject_limits").fetch_all(pool).await?;
        let loaded: LimitedKinds = pairs.into_iter().collect();
        let current = self.limited();
        if loaded != *current {
            if loaded.iter().any(|pair| !current.contains(pair)) {
                self.reset_pending.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            // Before the delete: a batch added in between already has the new kind, and the
            // rebuild that the delete causes sets it again whole.
            *self.limited.write().expect("limited kinds lock") = Arc::new(loaded);
        }
        if !self.reset_pending.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        // Batches added so far left the new kind out: rebuild every partition.
        let Some(mut connection) = self.connection().await else { return Ok(false) };
        if let Err(error) = redis::cmd("DEL").arg(&self.applied_key).query_async::<()>(&mut connection).await {
            self.failed("reset", &error.to_string());
            return Ok(false);
        }
        self.reset_pending.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("a project has limits of a new subject kind; every partition's live windows are rebuilt");
        Ok(true)
    }

    /// A connection (made on first use: Redis may be down when the processor starts); `None`
    /// while paused after an error.
    async fn connection(&self) -> Option<ConnectionManager> {
        if self.paused_until.lock().expect("pause lock").is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let mut connection = self.connection.lock().await;
        if connection.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_millis(500))
                .set_response_timeout(Duration::from_secs(2))
                .set_number_of_retries(1);
            match ConnectionManager::new_with_config(self.client.clone(), config).await {
                Ok(manager) => *connection = Some(manager),
                Err(error) => {
                    self.failed("connect", &error.to_string());
                    return None;
                }
            }
        }
        connection.clone()
    }

    fn failed(&self, what: &str, error: &str) {
        let mut paused = self.paused_until.lock().expect("pause lock");
        // One line per pause, not per batch.
        if paused.is_none_or(|until| Instant::now() >= until) {
            tracing::warn!(what, error, "Redis failed; live windows paused (rebuilt from ClickHouse when it is back)");
        }
        *paused = Some(Instant::now() + PAUSE_AFTER_ERROR);
        self.metrics.store_errors.with_label_values(&["redis"]).inc();
    }

    /// Adds a committed batch `[start, end)` of `partition` (its rate-window rows) to the live
    /// windows, or rebuilds the partition's windows when the record shows a hole.
    #[tracing::instrument(name = "live_windows", skip_all, fields(partition, start, end))]
    pub async fn add_committed(&self, partition: i32, start: i64, end: i64, rows: &[RateWindowRow]) -> Applied {
        let limited = self.limited();
        if limited.is_empty() {
            // No project limits anything: nothing to keep. The record lags; the first limit
            // deletes it, and every partition is rebuilt then.
            return Applied::Skipped;
        }
        let Some(mut connection) = self.connection().await else { return Applied::Skipped };
        let windows = windows_of(&self.prefix, rows, &limited, now_secs());
        let mut invocation = self.apply.key(&self.applied_key);
        invocation.arg(partition).arg(start).arg(end);
        for (key, (expires_at, usage)) in &windows {
            push_window(&mut invocation, key, *expires_at, usage);
        }
        let outcome: Vec<i64> = match invocation.invoke_async(&mut connection).await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.failed("add", &error.to_string());
                return Applied::Skipped;
            }
        };
        match outcome.as_slice() {
            [1, failed] => {
                if *failed > 0 {
                    tracing::warn!(partition, failed, "live window increments refused by Redis (64-bit overflow)");
                }
                Applied::Added
            }
            [0] => Applied::AddedBefore,
            _ => self.rebuild_partition(&mut connection, partition, end).await,
        }
    }

    /// Sets `partition`'s contribution to the open windows from its ClickHouse rows of the
    /// batches below `end` (all committed).
    async fn rebuild_partition(&self, connection: &mut ConnectionManager, partition: i32, end: i64) -> Applied {
        let now = now_secs();
        // The oldest window still open: yesterday's day window for the first hour of a day.
        let since = Resolution::Day.start_of((now.saturating_sub(u64::from(Resolution::Day.keep_secs()))) as u32);
        let sums = self
            .clickhouse
            .query(
                // Output names differ from the columns': ClickHouse 18.16 resolves aliases in WHERE.
                "SELECT project_id, subject_kind, subject, m AS minute, sum(r) AS requests, sum(tk) AS tokens, sum(c) AS cost,
                        sum(u) AS unpriced_requests
                 FROM (SELECT project_id, subject_kind, subject, minute AS m, requests AS r, tokens AS tk, cost AS c, unpriced_requests AS u
                       FROM rate_windows_batches FINAL
                       WHERE source_partition = ? AND source_batch_start < ? AND minute >= toDateTime(?))
                 GROUP BY project_id, subject_kind, subject, m",
            )
            .bind(partition)
            .bind(end)
            .bind(since)
            .fetch_all::<WindowSum>()
            .await;
        let sums = match sums {
            Ok(sums) => sums,
            Err(error) => {
                // The record still shows the hole: the next batch or the reconciler tries again.
                tracing::warn!(partition, %error, "cannot read ClickHouse to rebuild live windows; will retry");
                self.metrics.store_errors.with_label_values(&["clickhouse"]).inc();
                return Applied::Skipped;
            }
        };
        let rows: Vec<RateWindowRow> = sums
            .into_iter()
            .map(|sum| RateWindowRow {
                project_id: sum.project_id,
                subject_kind: sum.subject_kind,
                subject: sum.subject,
                minute: sum.minute,
                requests: sum.requests,
                tokens: sum.tokens,
                cost: sum.cost,
                unpriced_requests: sum.unpriced_requests,
                ..RateWindowRow::default()
            })
            .collect();
        let limited = self.limited();
        let windows = windows_of(&self.prefix, &rows, &limited, now);
        let mut invocation = self.rebuild.key(&self.applied_key);
        invocation.arg(partition).arg(end);
        for (key, (expires_at, usage)) in &windows {
            push_window(&mut invocation, key, *expires_at, usage);
        }
        match invocation.invoke_async::<i64>(connection).await {
            Ok(1) => {
                tracing::info!(partition, end, windows = windows.len(), "live windows of the partition rebuilt from ClickHouse");
                self.metrics.live_window_rebuilds.inc();
                Applied::Rebuilt
            }
            Ok(_) => Applied::AddedBefore,
            Err(error) => {
                self.failed("rebuild", &error.to_string());
                Applied::Skipped
            }
        }
    }

    /// One pass of the reconciler: rebuilds every partition of the topic whose record lags
    /// its committed offset and that has been idle for a while (a busy partition's own lane
    /// finds its hole at its next batch).
    pub async fn reconcile(&self, pool: &PgPool, topic: &str) -> Result<usize, anyhow::Error> {
        self.refresh_limited(pool).await?;
        if self.limited().is_empty() {
            return Ok(0);
        }
        let Some(mut connection) = self.connection().await else { return Ok(0) };
        let committed: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM partition_progress
             WHERE topic = $1 AND pending_end IS NULL AND updated_at < now() - make_interval(secs => $2)",
        )
        .bind(topic)
        .bind(IDLE_BEFORE_RECONCILE_SECS as f64)
        .fetch_all(pool)
        .await?;
        if committed.is_empty() {
            return Ok(0);
        }
        let applied: HashMap<i32, i64> = match redis::cmd("HGETALL").arg(&self.applied_key).query_async(&mut connection).await {
            Ok(applied) => applied,
            Err(error) => {
                self.failed("reconcile", &error.to_string());
                return Ok(0);
            }
        };
        let mut rebuilt = 0;
        for (partition, next_offset) in committed {
            if applied.get(&partition).is_none_or(|end| *end < next_offset)
                && self.rebuild_partition(&mut connection, partition, next_offset).await == Applied::Rebuilt
            {
                rebuilt += 1;
            }
        }
        Ok(rebuilt)
    }
}

/// Runs [`LiveWindows::reconcile`] every `every` until shutdown.
pub async fn run_reconciler(live: std::sync::Arc<LiveWindows>, pool: PgPool, topic: String, every: Duration, shutdown: CancellationToken) {
    let mut ticker = Ticker::new(every, shutdown);
    while ticker.tick().await {
        if let Err(error) = live.reconcile(&pool, &topic).await {
            tracing::warn!(%error, "live window reconciliation failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(subject: &str, minute: u32, requests: u64, cost: i128) -> RateWindowRow {
        RateWindowRow {
            project_id: "p".into(),
            subject_kind: "user".into(),
            subject: subject.into(),
            minute,
            requests,
            tokens: requests * 10,
            cost,
            ..RateWindowRow::default()
        }
    }

    #[test]
    fn rows_add_to_their_minute_and_day_and_expired_windows_are_left_out() {
        let day = 1_793_491_200;
        let now = u64::from(day) + 7_200; // 02:00
        let rows = [row("u", day + 7_140, 2, 5), row("u", day + 7_080, 1, 1), row("u", day + 60, 4, 2)];
        let limited: LimitedKinds = [("p".to_string(), "user".to_string())].into_iter().collect();
        let windows = windows_of("tally", &rows, &limited, now);
        assert!(windows_of("tally", &rows, &LimitedKinds::new(), now).is_empty(), "kinds without limits have no live windows");
        let day_key = window_key("tally", Resolution::Day, day, "p", "user", "u");
        assert_eq!(windows[&day_key].1, Usage { requests: 7, tokens: 70, cost: 8, unpriced_requests: 0 });
        assert_eq!(windows[&day_key].0, u64::from(day) + 86_400 + 3_600);
        // 01:59 and 01:58 are open (ended less than two minutes ago); 00:01 expired.
        assert_eq!(windows[&window_key("tally", Resolution::Minute, day + 7_140, "p", "user", "u")].1.requests, 2);
        assert_eq!(windows[&window_key("tally", Resolution::Minute, day + 7_080, "p", "user", "u")].1.requests, 1);
        assert!(!windows.contains_key(&window_key("tally", Resolution::Minute, day + 60, "p", "user", "u")));
        assert_eq!(windows.len(), 3);
    }

    #[test]
    fn costs_beyond_redis_integers_saturate() {
        assert_eq!(redis_integer(5), 5);
        assert_eq!(redis_integer(i128::from(i64::MAX) + 1), i64::MAX);
        assert_eq!(redis_integer(i128::from(i64::MIN) - 1), i64::MIN);
    }
}
