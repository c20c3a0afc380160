//! API key scopes on the real services: a key is refused outside its scopes with 403
//! `insufficient_scope`, an expired key with 401, a key made before scopes existed keeps
//! `ingest` and `read`; and a flood of made-up keys cannot push the known keys out of the
//! authenticator's cache (which would turn every request into a Postgres lookup).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::TestEnv;
use tally_common::keys::{self, Authenticator, NewKey, Principal, Scope};

async fn key_with(env: &TestEnv, scopes: &[Scope], expires_at: Option<time::OffsetDateTime>) -> String {
    let options = NewKey { scopes: scopes.to_vec(), name: Some("test key".into()), expires_at };
    keys::create_key_with(&env.pool, "scoped", &options).await.unwrap().key
}

/// The status and error code of a request with `key`.
async fn send(request: reqwest::RequestBuilder, key: &str) -> (u16, Option<String>) {
    let response = request.header("Authorization", format!("Bearer {key}")).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_work_only_within_their_scopes() {
    let mut env = TestEnv::new().await;
    let ingest_url = env.start_ingest().await;
    let query_url = env.start_query_api().await;
    let ingest_only = key_with(&env, &[Scope::Ingest], None).await;
    let read_only = key_with(&env, &[Scope::Read], None).await;
    let admin_only = key_with(&env, &[Scope::Admin], None).await;
    let both = keys::create_key(&env.pool, "scoped").await.unwrap().key;
    let expired = key_with(&env, &[Scope::Ingest, Scope::Read], Some(time::OffsetDateTime::now_utc() - time::Duration::hours(1))).await;

    let events = || {
        let event = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": "t", "provider": "openai",
            "model": "gpt-4o-mini", "start_time": time::OffsetDateTime::now_utc().unix_timestamp() * 1000, "input_tokens": 10, "output_tokens": 2});
        env.http.post(format!("{ingest_url}/v1/events")).json(&json!({"events": [event]}))
    };
    let costs = || env.http.get(format!("{query_url}/v1/costs")).query(&[("from", "2026-11-01T00:00:00Z")]);

    assert_eq!(send(events(), &ingest_only).await.0, 200);
    assert_eq!(send(events(), &both).await.0, 200);
    assert_eq!(send(events(), &read_only).await, (403, Some("insufficient_scope".into())));
    assert_eq!(send(events(), &admin_only).await, (403, Some("insufficient_scope".into())));
    assert_eq!(send(costs(), &read_only).await.0, 200);
    assert_eq!(send(costs(), &both).await.0, 200);
    assert_eq!(send(costs(), &ingest_only).await, (403, Some("insufficient_scope".into())));
    assert_eq!(send(costs(), &admin_only).await, (403, Some("insufficient_scope".into())));
    assert_eq!(send(events(), &expired).await, (401, Some("unauthorized".into())));
    assert_eq!(send(costs(), &expired).await, (401, Some("unauthorized".into())));

    // A key stored the way keys were before scopes existed (no scopes column given) keeps
    // ingest and read, as the migration of existing rows does.
    let old_key = format!("tally_{}", "ab".repeat(32));
    let digest: [u8; 32] = sha2_digest(&old_key);
    sqlx::query("INSERT INTO api_keys (id, project_id, key_prefix, key_hash) VALUES ($1, 'scoped', 'tally_abababab', $2)")
        .bind(uuid::Uuid::new_v4())
        .bind(&digest[..])
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(send(events(), &old_key).await.0, 200);
    assert_eq!(send(costs(), &old_key).await.0, 200);
    let listed = keys::list_keys(&env.pool, Some("scoped")).await.unwrap();
    assert!(listed.iter().any(|key| key.key_prefix == "tally_abababab" && key.scopes == ["ingest", "read"]));
    env.cleanup().await;
}

fn sha2_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_does_not_evict_known_ones() {
    let env = TestEnv::new().await;
    let created = keys::create_key(&env.pool, "flooded").await.unwrap();
    let key = created.key;
    let authenticator = Authenticator::new(env.pool.clone(), Duration::from_secs(300));
    let header = format!("Bearer {key}");
    let expected = Principal { project: "flooded".into(), key_id: created.id, scopes: vec![Scope::Ingest, Scope::Read] };
    assert_eq!(authenticator.authenticate(Some(&header)).await, Ok(expected.clone()));
    assert_eq!(authenticator.lookups(), 1);
    // More made-up keys than the cache holds.
    let flood = 12_000;
    for index in 0..flood {
        let bad = format!("Bearer tally_{index:064x}");
        assert_eq!(authenticator.authenticate(Some(&bad)).await, Err(keys::AuthError::Unknown));
    }
    assert_eq!(authenticator.lookups(), 1 + flood);
    // The known key is still answered from the cache: no lookup.
    assert_eq!(authenticator.authenticate(Some(&header)).await, Ok(expected));
    assert_eq!(authenticator.lookups(), 1 + flood, "the known key was evicted by unknown ones");
    env.cleanup().await;
}
