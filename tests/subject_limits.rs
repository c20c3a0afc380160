//! Rate limits per subject through the query API and `tally limits`, on the real Postgres: set
//! with an `admin` key only, listed with a `read` key, a subject's own limit beside its kind's
//! default, a limit that starts later, deletion (the history stays: the limit in force at a past
//! time is still found), and specific errors for bad input.

mod support;

use serde_json::{json, Value};
use support::TestEnv;
use tally_common::keys::{self, NewKey, Scope};
use tally_common::subject_limits::{self, Metric, SubjectKind};

async fn key_with(env: &TestEnv, project: &str, scopes: &[Scope]) -> String {
    let options = NewKey { scopes: scopes.to_vec(), name: None, expires_at: None };
    keys::create_key_with(&env.pool, project, &options).await.unwrap().key
}

/// Status and JSON body (Null when empty).
async fn send(request: reqwest::RequestBuilder, key: &str) -> (u16, Value) {
    let response = request.bearer_auth(key).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn rows(body: &Value) -> Vec<(String, String, String, String)> {
    body["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|limit| {
            let text = |name: &str| limit[name].as_str().unwrap().to_owned();
            (text("subject_kind"), text("subject"), text("metric"), text("value"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_set_by_admins_listed_by_readers_and_keep_their_history() {
    let mut env = TestEnv::new().await;
    let api = env.start_query_api().await;
    let admin = key_with(&env, "acme", &[Scope::Read, Scope::Admin]).await;
    let reader = key_with(&env, "acme", &[Scope::Read]).await;
    let other = key_with(&env, "globex", &[Scope::Read, Scope::Admin]).await;
    let http = env.http.clone();
    let url = format!("{api}/v1/limits");

    // Only admin keys change limits.
    let body = json!({"subject_kind": "user", "subject": "alice", "metric": "requests_per_minute", "value": 60});
    let (status, error) = send(http.put(&url).json(&body), &reader).await;
    assert_eq!((status, error["error"]["code"].as_str()), (403, Some("insufficient_scope")), "{error}");
    let (status, set) = send(http.put(&url).json(&body), &admin).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!((set["subject"].as_str(), set["value"].as_str()), (Some("alice"), Some("60")));
    for body in [
        json!({"subject_kind": "user", "metric": "requests_per_minute", "value": 30}),
        json!({"subject_kind": "user", "metric": "cost_per_day", "value": "2.50"}),
        json!({"subject_kind": "application", "subject": "chat", "metric": "tokens_per_day", "value": 1_000_000}),
    ] {
        let (status, answer) = send(http.put(&url).json(&body), &admin).await;
        assert_eq!(status, 200, "{body}: {answer}");
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let later_text = later.format(&time::format_description::well_known::Rfc3339).unwrap();
    let scheduled = json!({"subject_kind": "user", "subject": "alice", "metric": "requests_per_minute", "value": 120, "effective_from": later_text});
    assert_eq!(send(http.put(&url).json(&scheduled), &admin).await.0, 200);

    // Readers list what is in force now: the scheduled raise is not yet.
    let (status, listed) = send(http.get(&url), &reader).await;
    assert_eq!(status, 200, "{listed}");
    let expected = vec![
        ("application".into(), "chat".into(), "tokens_per_day".into(), "1000000".into()),
        ("user".into(), "".into(), "cost_per_day".into(), "2.5".into()),
        ("user".into(), "".into(), "requests_per_minute".into(), "30".into()),
        ("user".into(), "alice".into(), "requests_per_minute".into(), "60".into()),
    ];
    assert_eq!(rows(&listed), expected);
    let at_later = format!("{url}?subject_kind=user&subject=alice&at={}", later_text.replace('+', "%2B"));
    let (_, then) = send(http.get(&at_later), &reader).await;
    assert_eq!(rows(&then), vec![("user".into(), "alice".into(), "requests_per_minute".into(), "120".into())]);
    // Another project sees none of them.
    assert_eq!(rows(&send(http.get(&url), &other).await.1), Vec::new());

    // What applies to a subject: its own limit per metric, else the kind's default.
    let applied = subject_limits::effective_for(&env.pool, "acme", SubjectKind::User, "alice", None).await.unwrap();
    let applied: Vec<(Metric, String, bool)> = applied.iter().map(|(limit, own)| (limit.metric.0, limit.value.to_string(), *own)).collect();
    assert_eq!(applied, [(Metric::RequestsPerMinute, "60".into(), true), (Metric::CostPerDay, "2.5".into(), false)]);

    // Deleting ends the limit now; the limit in force before stays findable.
    let before_delete = time::OffsetDateTime::now_utc();
    let delete = format!("{url}?subject_kind=user&metric=cost_per_day");
    assert_eq!(send(http.delete(&delete), &admin).await.0, 204);
    let (status, again) = send(http.delete(&delete), &admin).await;
    assert_eq!((status, again["error"]["code"].as_str()), (404, Some("not_found")), "{again}");
    let now: Vec<String> = rows(&send(http.get(&url), &reader).await.1).into_iter().map(|row| row.2).collect();
    assert!(!now.contains(&"cost_per_day".to_string()), "{now:?}");
    let past = subject_limits::limits_at(&env.pool, "acme", Some(SubjectKind::User), Some(""), Some(before_delete)).await.unwrap();
    assert!(past.iter().any(|limit| limit.metric.0 == Metric::CostPerDay && limit.value.to_string() == "2.5"), "{past:?}");

    // Bad input names the field and why; nothing is stored.
    for (body, parameter, says) in [
        (json!({"subject_kind": "team", "metric": "requests_per_minute", "value": 1}), "subject_kind", "use user, application or api_key"),
        (json!({"subject_kind": "user", "metric": "rpm", "value": 1}), "metric", "requests_per_minute"),
        (json!({"subject_kind": "user", "metric": "tokens_per_minute", "value": 1.5}), "value", "whole numbers"),
        (json!({"subject_kind": "user", "metric": "cost_per_day", "value": -1}), "value", "negative"),
        (json!({"subject_kind": "user", "metric": "cost_per_day", "value": "lots"}), "value", "not a decimal"),
        (json!({"subject_kind": "user", "subject": "u".repeat(300), "metric": "cost_per_day", "value": 1}), "subject", "at most 256 bytes"),
        (json!({"subject_kind": "user", "metric": "cost_per_day", "value": 1, "effective_from": "2020-01-01T00:00:00Z"}), "effective_from", "in the past"),
    ] {
        let (status, error) = send(http.put(&url).json(&body), &admin).await;
        assert_eq!((status, error["error"]["parameter"].as_str()), (400, Some(parameter)), "{body}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(says), "{body}: {error}");
    }
    assert_eq!(rows(&send(http.get(&url), &reader).await.1).len(), 3);

    // The CLI reads the same table.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["limits", "list", "--project", "acme", "--kind", "user"])
        .env("TALLY__POSTGRES__URL", env.config.postgres.url.expose())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{listing} {}", String::from_utf8_lossy(&output.stderr));
    assert!(listing.contains("alice") && listing.contains("(default)") && !listing.contains("cost_per_day"), "{listing}");
    env.cleanup().await;
}
