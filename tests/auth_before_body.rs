//! Keys are checked on the request head, before the body is read (`tally_common::auth::Project`):
//! a request with a bad key, or a key without the service's scope, is answered at once even
//! when its body announces 10 GB and never arrives; refusals for too many failed attempts are
//! counted as `failed_auth` in ingest's metrics.

mod support;

use std::time::{Duration, Instant};

use support::TestEnv;
use tally_common::keys::{self, NewKey, Scope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `POST path` announcing a 10 GB body and a few bytes of it, never the rest; returns the
/// answer (up to the end of its JSON body) and how long it took.
async fn answer_to_endless_body(url: &str, path: &str, key: &str) -> (String, Duration) {
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"events\": ["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.ends_with(b"}}") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("an answer before the body ends").unwrap();
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_bad_keys_before_the_body_arrives() {
    let mut env = TestEnv::new().await;
    env.config.ingest.failed_auth_per_sec = 0.1;
    env.config.ingest.failed_auth_burst = 1;
    let url = env.start_ingest().await;
    let read_only = keys::create_key_with(&env.pool, "reader", &NewKey { scopes: vec![Scope::Read], ..NewKey::default() }).await.unwrap().key;

    // The known key first: a key not yet cached is looked up only while the address may still
    // fail, so after the unknown key below it would be refused with 429 too.
    let (answer, took) = answer_to_endless_body(&url, "/v1/events", &read_only).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("insufficient_scope"), "{answer}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let (answer, took) = answer_to_endless_body(&url, "/v1/events", &format!("tally_{:064x}", 1)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The one failed attempt this address may make was spent above: the next guess is refused
    // without a lookup, and counted.
    let (answer, _) = answer_to_endless_body(&url, "/v1/events", &format!("tally_{:064x}", 2)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_failed_authentications"), "{answer}");
    let metrics = env.http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tally_ingest_refused_requests_total{reason=\"failed_auth\"} 1"), "{metrics}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_refuses_keys_without_read() {
    let mut env = TestEnv::new().await;
    let url = env.start_query_api().await;
    let ingest_only = keys::create_key_with(&env.pool, "writer", &NewKey { scopes: vec![Scope::Ingest], ..NewKey::default() }).await.unwrap().key;
    let reader = env.api_key("reader").await;
    for path in ["/v1/costs?from=2026-11-01T00:00:00Z", "/v1/agent/runs", "/v1/agent/runs/r-1"] {
        let refused = env.http.get(format!("{url}{path}")).bearer_auth(&ingest_only).send().await.unwrap();
        assert_eq!(refused.status(), 403, "{path}");
        assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["error"]["code"], "insufficient_scope", "{path}");
        let unknown = env.http.get(format!("{url}{path}")).bearer_auth(format!("tally_{:064x}", 3)).send().await.unwrap();
        assert_eq!(unknown.status(), 401, "{path}");
        let missing = env.http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(missing.status(), 401, "{path}");
        let answered = env.http.get(format!("{url}{path}")).bearer_auth(&reader).send().await.unwrap();
        assert!(answered.status() == 200 || answered.status() == 404, "{path}: {}", answered.status());
    }
    env.cleanup().await;
}
