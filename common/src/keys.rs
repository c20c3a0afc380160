//! Projects and their API keys.
//!
//! A key is `tally_` followed by 64 hex digits of OS randomness; it is shown once when created
//! and stored only as its SHA-256 digest (a fast hash is right for high-entropy random keys:
//! there is nothing to brute-force, unlike passwords). A key belongs to exactly one project,
//! and every request's project comes from its key, never from the body.
//!
//! A key carries scopes ([`Scope`]): `ingest` (write events), `read` (the query API) and
//! `admin` (administration through the API); a key used outside them gets 403
//! `insufficient_scope`. Keys created before scopes existed hold `ingest` and `read`
//! (migrations/postgres/0003). A key may have a name and an expiry time.
//!
//! [`Authenticator`] keeps Postgres off the per-request path with time-bounded caches: a revoked
//! key stops working within `key_cache_secs`. Keys that exist and keys that do not are cached
//! apart, each bounded: a flood of made-up keys fills only the cache of unknown keys and cannot
//! evict the known ones (before, both shared one map that was cleared when full).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::rate_limit::{KeyedBuckets, Rate};

const KEY_PREFIX: &str = "tally_";
/// Entries of the cache of keys that exist (any outcome: valid, revoked, expired).
const KNOWN_CAPACITY: usize = 10_000;
/// Entries of the cache of keys that do not exist.
const UNKNOWN_CAPACITY: usize = 10_000;
/// Client addresses whose failed authentications are counted.
const FAILURE_ADDRESSES: usize = 10_000;

/// What a key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `POST /v1/events` (and the other event inputs).
    Ingest,
    /// The query API.
    Read,
    /// Administration through the API (limits, prices, keys).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text).ok_or_else(|| KeyError::BadScope(text.to_string()))
    }
}

/// The scopes of a new key, parsed from `ingest,read`-style text.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, KeyError> {
    let mut scopes: Vec<Scope> = text.split(',').map(str::trim).filter(|part| !part.is_empty()).map(Scope::from_str).collect::<Result<_, _>>()?;
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(KeyError::BadScope(text.to_string()));
    }
    Ok(scopes)
}

/// An authenticated key: its project, its id (the `api_key` rate-limit subject, stamped on every
/// generation it sends) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub project: String,
    pub key_id: Uuid,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// `Ok` when the key holds `scope`; else [`AuthError::InsufficientScope`] (403).
    pub fn require(&self, scope: Scope) -> Result<&Self, AuthError> {
        if self.scopes.contains(&scope) {
            Ok(self)
        } else {
            Err(AuthError::InsufficientScope { needed: scope, held: self.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",") })
        }
    }
}

/// Options of a new key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub expires_at: Option<time::OffsetDateTime>,
}

impl Default for NewKey {
    /// `ingest` and `read`, no name, no expiry: what every key could do before scopes.
    fn default() -> Self {
        NewKey { scopes: vec![Scope::Ingest, Scope::Read], name: None, expires_at: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid project name {0:?}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadProjectName(String),
    #[error("{1} keys have the prefix {0:?}; revoke by id (tally keys list)")]
    Ambiguous(String, i64),
    #[error("no API key with id or prefix {0:?}")]
    NotFound(String),
    #[error("unknown scope {0:?}: use one or more of ingest, read, admin, separated by commas")]
    BadScope(String),
    #[error("invalid key name {0:?}: at most 64 printable characters")]
    BadName(String),
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
}

/// Why a request was not authenticated: 401 for missing, unknown and expired keys, 403 for
/// revoked ones and keys without the scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer <api key> header")]
    Missing,
    #[error("the Authorization header is not of the form Bearer <api key>")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("this API key has been revoked")]
    Revoked,
    #[error("this API key has expired")]
    Expired,
    #[error("this API key's scopes ({held}) do not include {needed}")]
    InsufficientScope { needed: Scope, held: String },
    #[error("too many failed authentications from this address; retry later")]
    TooManyFailures,
    #[error("the key store is unavailable")]
    Unavailable,
}

/// A newly created key: the plaintext is returned exactly once.
#[derive(Debug)]
pub struct CreatedKey {
    pub id: Uuid,
    pub project_id: String,
    pub key: String,
}

#[derive(Debug, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: Uuid,
    pub project_id: String,
    pub key_prefix: String,
    pub created_at: time::OffsetDateTime,
    pub revoked_at: Option<time::OffsetDateTime>,
    pub scopes: Vec<String>,
    pub name: Option<String>,
    pub expires_at: Option<time::OffsetDateTime>,
}

pub fn validate_project_name(name: &str) -> Result<(), KeyError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(KeyError::BadProjectName(name.to_string()))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Creates the project if needed and a new `ingest`+`read` key for it.
pub async fn create_key(pool: &PgPool, project: &str) -> Result<CreatedKey, KeyError> {
    create_key_with(pool, project, &NewKey::default()).await
}

/// Creates the project if needed and a new key for it with `options`.
pub async fn create_key_with(pool: &PgPool, project: &str, options: &NewKey) -> Result<CreatedKey, KeyError> {
    validate_project_name(project)?;
    if options.scopes.is_empty() {
        return Err(KeyError::BadScope(String::new()));
    }
    if let Some(name) = &options.name {
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(KeyError::BadName(name.clone()));
        }
    }
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let key = format!("{KEY_PREFIX}{}", hex::encode(random));
    let id = Uuid::new_v4();
    let scopes: Vec<&str> = options.scopes.iter().map(|scope| scope.as_str()).collect();
    let mut transaction = pool.begin().await?;
    sqlx::query("INSERT INTO projects (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(project)
        .execute(&mut *transaction)
        .await?;
    sqlx::query("INSERT INTO api_keys (id, project_id, key_prefix, key_hash, scopes, name, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(id)
        .bind(project)
        .bind(&key[..KEY_PREFIX.len() + 8])
        .bind(&digest(&key)[..])
        .bind(&scopes)
        .bind(&options.name)
        .bind(options.expires_at)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(CreatedKey { id, project_id: project.to_string(), key })
}

/// Revokes a key given its id or its printed prefix (`tally_1a2b3c4d`).
pub async fn revoke_key(pool: &PgPool, id_or_prefix: &str) -> Result<KeyInfo, KeyError> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    if id.is_none() {
        let matching: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE key_prefix = $1").bind(id_or_prefix).fetch_one(pool).await?;
        if matching > 1 {
            return Err(KeyError::Ambiguous(id_or_prefix.to_string(), matching));
        }
    }
    let revoked: Option<KeyInfo> = sqlx::query_as(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 OR ($1 IS NULL AND key_prefix = $2)
         RETURNING id, project_id, key_prefix, created_at, revoked_at, scopes, name, expires_at",
    )
    .bind(id)
    .bind(id_or_prefix)
    .fetch_optional(pool)
    .await?;
    revoked.ok_or_else(|| KeyError::NotFound(id_or_prefix.to_string()))
}

pub async fn list_keys(pool: &PgPool, project: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT id, project_id, key_prefix, created_at, revoked_at, scopes, name, expires_at FROM api_keys
         WHERE $1::text IS NULL OR project_id = $1 ORDER BY project_id, created_at",
    )
    .bind(project)
    .fetch_all(pool)
    .await?)
}

/// Resolves `Authorization` headers to projects, with bounded, time-limited caches, and a limit
/// on failed lookups per client address: a client that sends made-up keys is refused (429)
/// before its guesses reach Postgres, while keys already in the cache keep working from any
/// address.
pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    cache: Mutex<KeyCache>,
    lookups: AtomicU64,
    failures: KeyedBuckets<IpAddr>,
    failure_rate: Option<Rate>,
}

/// Keys that exist and keys that do not, cached apart (see the module docs).
#[derive(Default)]
struct KeyCache {
    known: HashMap<[u8; 32], (Result<Principal, AuthError>, Instant)>,
    unknown: HashMap<[u8; 32], Instant>,
}

impl KeyCache {
    fn get(&self, hash: &[u8; 32], ttl: Duration) -> Option<Result<Principal, AuthError>> {
        if let Some((outcome, at)) = self.known.get(hash) {
            return (at.elapsed() < ttl).then(|| outcome.clone());
        }
        self.unknown.get(hash).filter(|at| at.elapsed() < ttl).map(|_| Err(AuthError::Unknown))
    }

    fn put(&mut self, hash: [u8; 32], outcome: &Result<Principal, AuthError>, ttl: Duration) {
        let now = Instant::now();
        if matches!(outcome, Err(AuthError::Unknown)) {
            make_room(&mut self.unknown, UNKNOWN_CAPACITY, |at| at.elapsed() < ttl);
            self.unknown.insert(hash, now);
        } else {
            // Only holders of real keys fill this one.
            make_room(&mut self.known, KNOWN_CAPACITY, |(_, at)| at.elapsed() < ttl);
            self.known.insert(hash, (outcome.clone(), now));
        }
    }
}

/// Before an insert into a full `map`: drop the entries that are no longer `fresh`, and only if
/// that frees nothing, all of them.
fn make_room<V>(map: &mut HashMap<[u8; 32], V>, capacity: usize, fresh: impl Fn(&V) -> bool) {
    if map.len() >= capacity {
        map.retain(|_, value| fresh(value));
        if map.len() >= capacity {
            map.clear();
        }
    }
}

impl Authenticator {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: Mutex::new(KeyCache::default()),
            lookups: AtomicU64::new(0),
            failures: KeyedBuckets::new(FAILURE_ADDRESSES),
            failure_rate: None,
        }
    }

    /// Allows each client address `rate` failed authentications (unknown, revoked or expired
    /// keys that were not in the cache); past it, [`AuthError::TooManyFailures`].
    pub fn with_failure_limit(mut self, rate: Rate) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// How many keys were looked up in Postgres (cache misses) since start.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Returns the project and scopes of the key in an `Authorization: Bearer` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        self.authenticate_from(None, header).await
    }

    /// As [`Authenticator::authenticate`], for a request from `client` (failed lookups count
    /// against its address).
    pub async fn authenticate_from(&self, client: Option<IpAddr>, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or(AuthError::Malformed)?;
        if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
            return Err(AuthError::Unknown);
        }
        let hash = digest(key);
        if let Some(outcome) = self.cache.lock().expect("key cache poisoned").get(&hash, self.ttl) {
            return outcome;
        }
        let limited = client.zip(self.failure_rate);
        if let Some((address, rate)) = limited {
            if !self.failures.allows(&address, rate) {
                return Err(AuthError::TooManyFailures);
            }
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        type KeyRow = (Uuid, String, Option<time::OffsetDateTime>, Vec<String>, Option<time::OffsetDateTime>);
        let row: Option<KeyRow> = sqlx::query_as("SELECT id, project_id, revoked_at, scopes, expires_at FROM api_keys WHERE key_hash = $1")
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "API key lookup failed");
                AuthError::Unavailable
            })?;
        let now = time::OffsetDateTime::now_utc();
        let (outcome, cacheable) = match row {
            None => (Err(AuthError::Unknown), true),
            Some((_, _, Some(_), _, _)) => (Err(AuthError::Revoked), true),
            Some((_, _, None, _, Some(at))) if at <= now => (Err(AuthError::Expired), true),
            Some((key_id, project, None, scopes, expires_at)) => {
                let scopes: Vec<Scope> = scopes.iter().filter_map(|scope| scope.parse().ok()).collect();
                // A key that expires within the cache time is not cached: it stops at its expiry.
                let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::MAX);
                (Ok(Principal { project, key_id, scopes }), expires_at.is_none_or(|at| at - now > ttl))
            }
        };
        if cacheable {
            self.cache.lock().expect("key cache poisoned").put(hash, &outcome, self.ttl);
        }
        if let (Some((address, rate)), Err(_)) = (limited, &outcome) {
            let _ = self.failures.take(&address, 1.0, rate);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_are_required() {
        assert_eq!(parse_scopes("read, ingest,read").unwrap(), [Scope::Ingest, Scope::Read]);
        assert!(parse_scopes("write").is_err());
        assert!(parse_scopes(" , ").is_err());
        let principal = Principal { project: "p".into(), key_id: Uuid::nil(), scopes: vec![Scope::Ingest] };
        assert!(principal.require(Scope::Ingest).is_ok());
        assert_eq!(principal.require(Scope::Read), Err(AuthError::InsufficientScope { needed: Scope::Read, held: "ingest".into() }));
    }

    #[test]
    fn unknown_keys_do_not_evict_known_ones() {
        let ttl = Duration::from_secs(60);
        let mut cache = KeyCache::default();
        let known = Ok(Principal { project: "p".into(), key_id: Uuid::nil(), scopes: vec![Scope::Read] });
        cache.put([1; 32], &known, ttl);
        for index in 0..(UNKNOWN_CAPACITY as u32 * 3) {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&index.to_le_bytes());
            hash[31] = 0xff;
            cache.put(hash, &Err(AuthError::Unknown), ttl);
        }
        assert_eq!(cache.get(&[1; 32], ttl), Some(known));
        assert!(cache.unknown.len() <= UNKNOWN_CAPACITY);
    }

    #[test]
    fn project_names() {
        assert!(validate_project_name("acme-prod_1").is_ok());
        for bad in ["", "-x", "Acme", "a b", &"x".repeat(65)] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }
}
