//! Rate-limit windows end to end on the real stack: generated traffic per user, application and
//! API key (two keys of one project) goes in through `POST /v1/events` while a `tally processor`
//! child process is SIGKILLed mid-stream and replaced; duplicates (through the other key) and late
//! events are sent too. The test computes every
//! window on its own from the events it sent and compares, exactly: the live day windows in
//! Redis (read with the same reader as the query API), the live minute window and the limits
//! of `GET /v1/ratelimits/{kind}/{subject}` for a subject that crosses its limit inside the
//! minute and one that stays just at it, and `GET /v1/ratelimits/violations` with paging. Then
//! the test's windows are deleted from Redis (Redis lost its data) and must come back whole,
//! rebuilt from ClickHouse; and a query API whose Redis does not answer says
//! `503 live_windows_unavailable`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{eventually, spawn_processor, TestEnv};
use tally_common::live_windows::{self, window_key, Resolution, Usage};
use tally_common::subject_limits::{set_limit, LimitKey, Metric, SubjectKind};
use time::OffsetDateTime;

const PROJECT: &str = "acme";
/// Micro-dollars per token: input, output.
const PRICE: (i64, i64) = (2, 10);

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One generation, and what it adds to its windows.
struct Sent {
    body: Value,
    subjects: [(&'static str, String); 3],
    start_secs: u32,
    tokens: u64,
    /// Picodollars.
    cost: i128,
}

/// A generation that the key with id `key_id` sends.
fn generation(key_id: &str, user: &str, application: &str, start_ms: i64, input: i64, output: i64) -> Sent {
    let body = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": "t", "provider": "testco",
        "model": "alpha", "application": application, "user_id": user, "start_time": start_ms, "duration_ms": 100,
        "input_tokens": input, "output_tokens": output});
    Sent {
        body,
        subjects: [("user", user.to_owned()), ("application", application.to_owned()), ("api_key", key_id.to_owned())],
        start_secs: (start_ms / 1_000) as u32,
        tokens: (input + output) as u64,
        cost: i128::from(input * PRICE.0 + output * PRICE.1) * 1_000_000,
    }
}

/// Expected windows: (resolution is minute, start, kind, subject) → usage.
type Expected = BTreeMap<(bool, u32, &'static str, String), Usage>;

fn expect(expected: &mut Expected, events: &[Sent]) {
    for event in events {
        for (kind, subject) in &event.subjects {
            for resolution in Resolution::ALL {
                let key = (resolution == Resolution::Minute, resolution.start_of(event.start_secs), *kind, subject.clone());
                let usage = expected.entry(key).or_default();
                usage.requests += 1;
                usage.tokens += event.tokens;
                usage.cost += event.cost;
            }
        }
    }
}

async fn send(env: &TestEnv, ingest: &str, key: &str, events: &[&Sent]) {
    for chunk in events.chunks(200) {
        let body = json!({"events": chunk.iter().map(|event| event.body.clone()).collect::<Vec<_>>()});
        let response = env.http.post(format!("{ingest}/v1/events")).bearer_auth(key).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

async fn get(env: &TestEnv, url: &str, key: &str) -> (u16, Value) {
    let response = env.http.get(url).bearer_auth(key).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// What Redis holds for the expected day windows (minute windows of the past have expired or
/// are about to).
async fn live_days(env: &TestEnv, mut redis: redis::aio::MultiplexedConnection, expected: &Expected) -> Expected {
    let days: Vec<_> = expected.keys().filter(|(minute, ..)| !minute).cloned().collect();
    let keys: Vec<String> = days
        .iter()
        .map(|(_, start, kind, subject)| window_key(&env.config.redis.key_prefix, Resolution::Day, *start, PROJECT, kind, subject))
        .collect();
    let usages = live_windows::read(&mut redis, &keys).await.unwrap();
    days.into_iter().zip(usages).collect()
}

fn days_of(expected: &Expected) -> Expected {
    expected.iter().filter(|((minute, ..), _)| !minute).map(|(key, usage)| (key.clone(), *usage)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_windows_and_violations_are_exact_through_kills_duplicates_and_lost_redis() {
    let mut env = TestEnv::new().await;
    use tally_processor::prices::{upsert, ModelPrice};
    upsert(
        &env.pool,
        &[ModelPrice {
            provider: "testco".into(),
            model_pattern: "alpha".into(),
            input_per_mtok: Decimal::from(PRICE.0),
            output_per_mtok: Decimal::from(PRICE.1),
            cache_read_per_mtok: Decimal::ZERO,
            cache_creation_per_mtok: Decimal::ZERO,
            currency: "USD".into(),
            effective_from: OffsetDateTime::UNIX_EPOCH,
        }],
    )
    .await
    .unwrap();
    let first_key = tally_common::keys::create_key(&env.pool, PROJECT).await.unwrap();
    let second_key = tally_common::keys::create_key(&env.pool, PROJECT).await.unwrap();
    let (key, key_a) = (first_key.key.clone(), first_key.id.to_string());
    let (key_b_secret, key_b) = (second_key.key.clone(), second_key.id.to_string());
    // Limits in force since two hours ago (set then; the API refuses a start in the past).
    for (kind, subject, metric, value) in [
        ("api_key", "", "requests_per_minute", "1000"),
        ("api_key", key_b.as_str(), "tokens_per_day", "100000"),
        ("user", "", "requests_per_minute", "20"),
        ("user", "quiet", "requests_per_minute", "30"),
        ("application", "", "tokens_per_day", "1000000000"),
        ("application", "batch", "tokens_per_day", "50000"),
        ("user", "", "cost_per_day", "0.5"),
    ] {
        env.limit_since(PROJECT, kind, subject, metric, Some(value), 2).await;
    }
    let ingest = env.start_ingest().await;
    let query = env.start_query_api().await;
    let client = redis::Client::open(env.config.redis.url.expose()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();

    // Phase 1: 4,000 generations of ten users over the last 20 minutes (late for their minute
    // windows by the time they are counted), the first half sent by key A, the rest by key B,
    // with a processor SIGKILLed mid-stream.
    let now = now_ms();
    let mut history: Vec<Sent> = (0..4_000)
        .map(|index| {
            let user = format!("u{}", index % 10);
            let application = ["chat", "batch"][index % 2];
            let start = now - 20 * 60_000 + (index as i64 * 7_919) % (18 * 60_000);
            let key_id = if index < 2_000 { &key_a } else { &key_b };
            generation(key_id, &user, application, start, 100 + (index % 50) as i64, 10 + (index % 7) as i64)
        })
        .collect();
    // One minute in which u3 sends 25 more (over the default of 20 per minute).
    let burst_minute = (now - 15 * 60_000) / 60_000 * 60_000;
    history.extend((0..25).map(|index| generation(&key_b, "u3", "chat", burst_minute + index * 1_000, 10, 1)));
    let mut expected = Expected::new();
    expect(&mut expected, &history);

    let mut first = spawn_processor(&env, "rw-first");
    let refs: Vec<&Sent> = history.iter().collect();
    let (head, tail) = refs.split_at(2_000);
    send(&env, &ingest, &key, head).await;
    let clickhouse = tally_common::stores::clickhouse_client(&env.config.clickhouse);
    let counted = || async {
        clickhouse.query("SELECT sum(requests) FROM rate_windows_batches FINAL WHERE subject_kind = 'user'").fetch_one::<u64>().await.unwrap_or(0)
    };
    eventually("the first worker to count some events", Duration::from_secs(60), || async { (counted().await >= 300).then_some(()) }).await;
    first.kill(); // SIGKILL
    let at_kill = counted().await;
    let mut second = spawn_processor(&env, "rw-second");
    send(&env, &ingest, &key_b_secret, tail).await;
    // Duplicates: every 13th event again, all through key B (those of the first half were sent by
    // key A); they must change nothing, key B's window included.
    let again: Vec<&Sent> = history.iter().step_by(13).collect();
    send(&env, &ingest, &key_b_secret, &again).await;
    assert!(at_kill < history.len() as u64, "the kill happened mid-stream ({at_kill} of {})", history.len());

    let want = days_of(&expected);
    let live = eventually("the live day windows to hold every event once", Duration::from_secs(120), || async {
        let live = live_days(&env, redis.clone(), &expected).await;
        (live == want).then_some(live)
    })
    .await;
    assert_eq!(live.values().map(|usage| usage.requests).sum::<u64>(), 3 * history.len() as u64, "users, applications and keys");
    // The raw rows keep the key that first sent each event (the duplicates through key B changed
    // nothing), for rebuilds from the archive.
    let want_keys = std::collections::BTreeMap::from([(Some(key_a.clone()), 2_000_u64), (Some(key_b.clone()), history.len() as u64 - 2_000)]);
    eventually("the raw rows to name their keys", Duration::from_secs(30), || async {
        let rows: Vec<(Option<String>, u64)> =
            clickhouse.query("SELECT api_key_id, count() FROM generations FINAL GROUP BY api_key_id").fetch_all().await.ok()?;
        (rows.into_iter().collect::<std::collections::BTreeMap<_, _>>() == want_keys).then_some(())
    })
    .await;

    // Phase 2: the current minute, with at least 25 s of it left.
    eventually("a minute with 25 s left", Duration::from_secs(40), || async { (now_ms() % 60_000 < 35_000).then_some(()) }).await;
    let minute = now_ms() / 60_000 * 60_000;
    let current: Vec<Sent> = (0..25)
        .map(|index| generation(&key_a, "crosser", "chat", minute + index * 100, 40, 4))
        .chain((0..20).map(|index| generation(&key_a, "edge", "chat", minute + index * 100, 40, 4)))
        .chain((0..3).map(|index| generation(&key_a, "quiet", "chat", minute + index * 100, 40, 4)))
        .collect();
    expect(&mut expected, &current);
    send(&env, &ingest, &key, &current.iter().collect::<Vec<_>>()).await;
    let status = |subject: &'static str| {
        let (env, query, key) = (&env, &query, &key);
        async move { get(env, &format!("{query}/v1/ratelimits/user/{subject}"), key).await }
    };
    let crosser = eventually("crosser's 25 requests in the live minute", Duration::from_secs(20), || async {
        let (code, body) = status("crosser").await;
        assert_eq!(code, 200, "{body}");
        (body["minute"]["requests"] == 25).then_some(body)
    })
    .await;
    let limit = |body: &Value, metric: &str| body["limits"].as_array().unwrap().iter().find(|limit| limit["metric"] == metric).cloned().unwrap();
    let rpm = limit(&crosser, "requests_per_minute");
    assert_eq!((rpm["limit"].as_str(), rpm["used"].as_str(), rpm["remaining"].as_str()), (Some("20"), Some("25"), Some("0")), "{crosser}");
    assert_eq!((rpm["exceeded"].as_bool(), rpm["default"].as_bool()), (Some(true), Some(true)), "{crosser}");
    let reset = rpm["reset_in_secs"].as_u64().unwrap();
    assert!((1..=60).contains(&reset), "{crosser}");
    assert_eq!(crosser["minute"]["tokens"], 25 * 44);
    let cost = limit(&crosser, "cost_per_day");
    // 25 x (40 x 2 + 4 x 10) micro-dollars.
    assert_eq!((cost["used"].as_str(), cost["limit"].as_str(), cost["exceeded"].as_bool()), (Some("0.003"), Some("0.5"), Some(false)), "{crosser}");
    let (code, edge) = status("edge").await;
    assert_eq!(code, 200);
    let rpm = limit(&edge, "requests_per_minute");
    assert_eq!((rpm["used"].as_str(), rpm["remaining"].as_str(), rpm["exceeded"].as_bool()), (Some("20"), Some("0"), Some(false)), "{edge}");
    let (_, quiet) = status("quiet").await;
    let rpm = limit(&quiet, "requests_per_minute");
    assert_eq!((rpm["limit"].as_str(), rpm["default"].as_bool(), rpm["remaining"].as_str()), (Some("30"), Some(false), Some("27")), "{quiet}");
    // Another project's key sees none of it.
    let other = env.api_key("other").await;
    let (_, body) = get(&env, &format!("{query}/v1/ratelimits/user/crosser"), &other).await;
    assert_eq!((body["tracked"].as_bool(), body["limits"].as_array().map(Vec::len)), (Some(false), Some(0)), "{body}");
    assert!(body["minute"].is_null(), "{body}");
    // Key A's live minute: the 48 requests it sent this minute, under the default of 1,000.
    let (code, body) = get(&env, &format!("{query}/v1/ratelimits/api_key/{key_a}"), &key).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["minute"]["requests"], 48, "{body}");
    let rpm = limit(&body, "requests_per_minute");
    assert_eq!((rpm["limit"].as_str(), rpm["remaining"].as_str(), rpm["default"].as_bool()), (Some("1000"), Some("952"), Some(true)), "{body}");
    let (code, body) = get(&env, &format!("{query}/v1/ratelimits/team/x"), &key).await;
    assert_eq!((code, body["error"]["parameter"].as_str()), (400, Some("subject_kind")), "{body}");

    // Violations, as this test judges them: per window, the limit in force (all were set two
    // hours ago): users 20 requests per minute (quiet: 30), 0.5 USD per day; applications
    // 10^9 tokens per day (batch: 50,000); keys 1,000 requests per minute, key B 100,000 tokens
    // per day.
    let mut judged: BTreeSet<(u32, &str, String, &str, String)> = BTreeSet::new();
    for ((is_minute, start, kind, subject), usage) in &expected {
        let checks: Vec<(&str, Decimal, Decimal)> = match (*kind, *is_minute) {
            ("user", true) => vec![("requests_per_minute", Decimal::from(usage.requests), Decimal::from(if subject == "quiet" { 30 } else { 20 }))],
            ("user", false) => vec![("cost_per_day", Decimal::from_i128_with_scale(usage.cost, 12), Decimal::new(5, 1))],
            ("application", false) => {
                vec![("tokens_per_day", Decimal::from(usage.tokens), Decimal::from(if subject == "batch" { 50_000 } else { 1_000_000_000 }))]
            }
            ("api_key", true) => vec![("requests_per_minute", Decimal::from(usage.requests), Decimal::from(1_000))],
            ("api_key", false) if *subject == key_b => vec![("tokens_per_day", Decimal::from(usage.tokens), Decimal::from(100_000))],
            _ => vec![],
        };
        for (metric, used, limit) in checks {
            if used > limit {
                judged.insert((*start, *kind, subject.clone(), metric, (used - limit).normalize().to_string()));
            }
        }
    }
    assert!(judged.iter().any(|(_, _, subject, metric, _)| subject == "u3" && *metric == "requests_per_minute"), "the burst is a violation");
    assert!(judged.iter().any(|(_, _, subject, _, _)| subject == "crosser"), "the current minute's is too");
    assert!(judged.iter().any(|(_, _, subject, _, _)| subject == "batch"), "batch's day is over its tokens");
    assert!(judged.iter().any(|(_, _, subject, _, _)| *subject == key_b), "key B's day is over its tokens");
    let range = format!("from={}&to={}", now - 3_600_000, now_ms() + 120_000);
    let mut pages = 0;
    let mut cursor = String::new();
    let mut answered = BTreeSet::new();
    loop {
        let (code, page) = get(&env, &format!("{query}/v1/ratelimits/violations?{range}&limit=25{cursor}"), &key).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        for violation in page["violations"].as_array().unwrap() {
            let start = OffsetDateTime::parse(violation["window_start"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
            let kind = ["user", "application", "api_key"].into_iter().find(|kind| violation["subject_kind"] == *kind).unwrap();
            let metric = Metric::ALL.into_iter().find(|metric| violation["metric"] == metric.as_str()).unwrap().as_str();
            let entry = (start.unix_timestamp() as u32, kind, violation["subject"].as_str().unwrap().to_string(), metric, violation["over_by"].as_str().unwrap().to_string());
            assert!(answered.insert(entry), "a violation on two pages: {violation}");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(answered, judged, "violations");
    assert!(pages > 1, "the answer was paged");

    // A project without limits has no live windows; once it sets one, its subjects' current
    // windows are rebuilt whole from ClickHouse (not counted from the moment of the limit).
    let later = env.api_key("later").await;
    let minute = now_ms() / 60_000 * 60_000;
    let before: Vec<Sent> = (0..30).map(|index| generation("-", "z", "chat", minute + index * 10, 10, 1)).collect();
    let body = json!({"events": before.iter().map(|event| event.body.clone()).collect::<Vec<_>>()});
    let response = env.http.post(format!("{ingest}/v1/events")).bearer_auth(&later).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    eventually("project later's events in ClickHouse", Duration::from_secs(30), || async {
        let stored: u64 = clickhouse
            .query("SELECT sum(requests) FROM rate_windows_batches FINAL WHERE project_id = 'later' AND subject_kind = 'user'")
            .fetch_one()
            .await
            .unwrap_or(0);
        (stored == 30).then_some(())
    })
    .await;
    let (_, body) = get(&env, &format!("{query}/v1/ratelimits/user/z"), &later).await;
    assert_eq!(body["tracked"].as_bool(), Some(false), "{body}");
    let key_of = |kind, metric| LimitKey::new(kind, None, metric).unwrap();
    set_limit(&env.pool, "later", &key_of(SubjectKind::User, Metric::TokensPerDay), Decimal::from(1_000_000), None).await.unwrap();
    let day_key = window_key(&env.config.redis.key_prefix, Resolution::Day, Resolution::Day.start_of((minute / 1_000) as u32), "later", "user", "z");
    eventually("project later's day window rebuilt whole", Duration::from_secs(60), || async {
        let usage = live_windows::read(&mut redis.clone(), std::slice::from_ref(&day_key)).await.unwrap();
        (usage[0] == Usage { requests: 30, tokens: 330, cost: 30 * i128::from(10 * PRICE.0 + PRICE.1) * 1_000_000, unpriced_requests: 0 }).then_some(())
    })
    .await;

    // Redis loses the windows (a restart without persistence): they come back whole.
    let pattern = format!("{}:*", env.config.redis.key_prefix);
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut redis).await.unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();
    let want = days_of(&expected);
    eventually("the live windows rebuilt from ClickHouse", Duration::from_secs(60), || async {
        (live_days(&env, redis.clone(), &expected).await == want).then_some(())
    })
    .await;

    // A query API whose Redis does not answer.
    let mut down = env.config.clone();
    down.redis.url = tally_common::config::Secret::new("redis://127.0.0.1:1/");
    let (listener, address) = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    };
    let token = tally_common::shutdown::CancellationToken::new();
    let task = tokio::spawn(tally_query_api::serve(down, listener, token.clone()));
    let (code, body) = eventually("the query API without Redis to answer", Duration::from_secs(30), || async {
        let response = env.http.get(format!("http://{address}/v1/ratelimits/user/crosser")).bearer_auth(&key).send().await.ok()?;
        Some((response.status().as_u16(), response.json::<Value>().await.unwrap()))
    })
    .await;
    assert_eq!((code, body["error"]["code"].as_str()), (503, Some("live_windows_unavailable")), "{body}");
    token.cancel();
    let _ = task.await;
    second.kill();
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap_or(());
    env.cleanup().await;
}
