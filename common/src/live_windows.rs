//! The live rate-limit windows in Redis: how they are laid out, shared by the processor (which
//! writes them, processor/src/live_windows.rs) and the query API (which reads them for
//! `GET /v1/ratelimits/{subject_kind}/{subject}`). docs/exactly-once.md ("Live windows") says
//! why every batch counts once there.
//!
//! A window is one hash per (resolution, window start, project, subject kind, subject). Its
//! fields are per source Kafka partition, `{partition}:r` (requests), `:t` (tokens), `:c` (cost
//! in picodollars, 10^-12 USD, the scale of the ClickHouse Decimal(38, 12) columns) and `:u`
//! (requests without a price): a partition's contribution can then be set again as a whole
//! when it is rebuilt from ClickHouse, without touching the others. A reader sums the fields
//! (in i128, exact). Every value is an integer, changed with `HINCRBY`, so nothing in Redis or
//! Lua rounds. Keys start with `redis.key_prefix` (`tally`). The hash
//! `{prefix}:rw:applied:{topic}` holds, per partition, the end offset of the
//! last batch added: the processor adds a batch only on top of the one before it.
//!
//! Windows expire a while after they end ([`Resolution::keep_secs`]), so Redis holds about
//! three minutes of minute windows and a day and an hour of day windows, whatever the volume.

use std::collections::HashMap;

/// The length of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    Minute,
    Day,
}

impl Resolution {
    pub const ALL: [Resolution; 2] = [Resolution::Minute, Resolution::Day];

    pub fn seconds(self) -> u32 {
        match self {
            Resolution::Minute => 60,
            Resolution::Day => 86_400,
        }
    }

    /// The start of the window of this resolution that holds `seconds` (UTC days).
    pub fn start_of(self, seconds: u32) -> u32 {
        seconds - seconds % self.seconds()
    }

    /// How long a window stays in Redis after it ends: the previous minute can still be read
    /// while the current one fills, and late events of the day before still land in its window
    /// for an hour. Later events count only in ClickHouse, in their own closed window.
    pub fn keep_secs(self) -> u32 {
        match self {
            Resolution::Minute => 120,
            Resolution::Day => 3_600,
        }
    }

    /// When the window starting at `start` is deleted (epoch seconds, for `EXPIREAT`).
    pub fn expires_at(self, start: u32) -> u64 {
        u64::from(start) + u64::from(self.seconds()) + u64::from(self.keep_secs())
    }

    fn tag(self) -> char {
        match self {
            Resolution::Minute => 'm',
            Resolution::Day => 'd',
        }
    }
}

/// The Redis key of a window. The project's length is spelled out so that no project and
/// subject (which may hold `:`) can name another's window.
/// `prefix` is `redis.key_prefix`.
pub fn window_key(prefix: &str, resolution: Resolution, start: u32, project: &str, subject_kind: &str, subject: &str) -> String {
    format!("{prefix}:rw:{}:{start}:{subject_kind}:{}:{project}:{subject}", resolution.tag(), project.len())
}

/// The key of the per-partition record of applied batches.
pub fn applied_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}:rw:applied:{topic}")
}

/// What a window holds, summed over its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
    /// Picodollars (10^-12 USD).
    pub cost: i128,
    /// Requests whose cost is unknown (no price): `cost` is then a lower bound.
    pub unpriced_requests: u64,
}

impl Usage {
    /// Sums the fields of a window hash (`{partition}:{r|t|c|u}`); fields it does not know are
    /// skipped.
    pub fn from_fields(fields: &HashMap<String, i64>) -> Usage {
        let mut usage = Usage::default();
        for (field, value) in fields {
            let Some((_, metric)) = field.rsplit_once(':') else { continue };
            let value = *value;
            match metric {
                "r" => usage.requests = usage.requests.saturating_add(value.max(0) as u64),
                "t" => usage.tokens = usage.tokens.saturating_add(value.max(0) as u64),
                "c" => usage.cost += i128::from(value),
                "u" => usage.unpriced_requests = usage.unpriced_requests.saturating_add(value.max(0) as u64),
                _ => {}
            }
        }
        usage
    }
}

/// Reads the windows at `keys` (one round trip); a missing window reads as zero.
pub async fn read(connection: &mut impl redis::aio::ConnectionLike, keys: &[String]) -> redis::RedisResult<Vec<Usage>> {
    let mut pipeline = redis::pipe();
    for key in keys {
        pipeline.hgetall(key);
    }
    let hashes: Vec<HashMap<String, i64>> = pipeline.query_async(connection).await?;
    Ok(hashes.iter().map(Usage::from_fields).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_collide_across_projects_and_subjects() {
        let a = window_key("tally", Resolution::Minute, 60, "p:1", "user", "x");
        let b = window_key("tally", Resolution::Minute, 60, "p", "user", "1:x");
        assert_ne!(a, b);
        assert_ne!(window_key("tally", Resolution::Day, 0, "p", "user", "x"), window_key("tally", Resolution::Minute, 0, "p", "user", "x"));
    }

    #[test]
    fn windows_start_on_their_boundary_and_expire_after_the_grace() {
        assert_eq!(Resolution::Minute.start_of(1_793_527_259), 1_793_527_200);
        assert_eq!(Resolution::Day.start_of(1_793_527_259), 1_793_491_200);
        assert_eq!(Resolution::Minute.expires_at(60), 60 + 60 + 120);
        assert_eq!(Resolution::Day.expires_at(0), 86_400 + 3_600);
    }

    #[test]
    fn usage_sums_the_partitions() {
        let fields: HashMap<String, i64> =
            [("0:r", 2), ("0:t", 30), ("0:c", 7), ("11:r", 1), ("11:t", 5), ("11:c", -2), ("11:u", 1), ("junk", 9)]
                .into_iter()
                .map(|(field, value)| (field.to_string(), value))
                .collect();
        assert_eq!(Usage::from_fields(&fields), Usage { requests: 3, tokens: 35, cost: 5, unpriced_requests: 1 });
    }
}
