//! Projects and their API keys.
//!
//! A key is `tally_` followed by 64 hex digits of OS randomness; it is shown once when created
//! and stored only as its SHA-256 digest (a fast hash is right for high-entropy random keys:
//! there is nothing to brute-force, unlike passwords). A key belongs to exactly one project,
//! and every request's project comes from its key, never from the body.
//!
//! [`Authenticator`] keeps Postgres off the per-request path with a small time-bounded cache:
//! a revoked key stops working within `key_cache_secs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

const KEY_PREFIX: &str = "tally_";
const CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid project name {0:?}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadProjectName(String),
    #[error("{1} keys have the prefix {0:?}; revoke by id (tally keys list)")]
    Ambiguous(String, i64),
    #[error("no API key with id or prefix {0:?}")]
    NotFound(String),
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
}

/// Why a request was not authenticated; 401 for missing/unknown keys, 403 for revoked ones.
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

/// Creates the project if needed and a new key for it.
pub async fn create_key(pool: &PgPool, project: &str) -> Result<CreatedKey, KeyError> {
    validate_project_name(project)?;
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let key = format!("{KEY_PREFIX}{}", hex::encode(random));
    let id = Uuid::new_v4();
    let mut transaction = pool.begin().await?;
    sqlx::query("INSERT INTO projects (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(project)
        .execute(&mut *transaction)
        .await?;
    sqlx::query("INSERT INTO api_keys (id, project_id, key_prefix, key_hash) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(project)
        .bind(&key[..KEY_PREFIX.len() + 8])
        .bind(&digest(&key)[..])
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
         RETURNING id, project_id, key_prefix, created_at, revoked_at",
    )
    .bind(id)
    .bind(id_or_prefix)
    .fetch_optional(pool)
    .await?;
    revoked.ok_or_else(|| KeyError::NotFound(id_or_prefix.to_string()))
}

pub async fn list_keys(pool: &PgPool, project: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT id, project_id, key_prefix, created_at, revoked_at FROM api_keys
         WHERE $1::text IS NULL OR project_id = $1 ORDER BY project_id, created_at",
    )
    .bind(project)
    .fetch_all(pool)
    .await?)
}

/// Resolves `Authorization` headers to projects, with a bounded, time-limited cache.
pub struct Authenticator {
    pool: PgPool,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Result<String, AuthError>, Instant)>>,
}

impl Authenticator {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// Returns the project of the key in an `Authorization: Bearer` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<String, AuthError> {
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
        if let Some((outcome, at)) = self.cache.lock().expect("key cache poisoned").get(&hash) {
            if at.elapsed() < self.ttl {
                return outcome.clone();
            }
        }
        let row: Option<(String, Option<time::OffsetDateTime>)> =
            sqlx::query_as("SELECT project_id, revoked_at FROM api_keys WHERE key_hash = $1")
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "API key lookup failed");
                    AuthError::Unavailable
                })?;
        let outcome = match row {
            None => Err(AuthError::Unknown),
            Some((_, Some(_))) => Err(AuthError::Revoked),
            Some((project, None)) => Ok(project),
        };
        let mut cache = self.cache.lock().expect("key cache poisoned");
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(hash, (outcome.clone(), Instant::now()));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        assert!(validate_project_name("acme-prod_1").is_ok());
        for bad in ["", "-x", "Acme", "a b", &"x".repeat(65)] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }
}
