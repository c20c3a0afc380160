//! Cache-hit statistics end to end on the real stack: generated traffic with response-cache
//! hits, semantic hits and misses, prompt-cache reads and writes, a price change inside the
//! range, an unpriced model, a client-priced hit and duplicates goes in through
//! `POST /v1/events` and is read back from `GET /v1/cache/stats`. Every count, token sum and
//! saved cost is compared, to the exact decimal, with what this test computes on its own from
//! the events it sent; latency percentiles are checked against the durations it drew.
//! (Exactly-once under SIGKILL and store outages is checked by tests/faults.rs and
//! tests/outages.rs, whose ground truth includes the cache statistics.)

mod support;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{eventually, TestEnv};

/// Per million tokens: input, output, cache read, cache write.
const OLD: [&str; 4] = ["3", "15", "0.3", "3.75"];
const NEW: [&str; 4] = ["2", "8", "0.2", "2.5"];
/// 2026-11-01T00:00:00Z: alpha's price changes from OLD to NEW.
const CHANGE_MS: i64 = 1_793_491_200_000;
const BASE_MS: i64 = CHANGE_MS - 30 * 3_600_000;

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Stats {
    lookups: u64,
    hits: u64,
    semantic_hits: u64,
    misses: u64,
    cache_read: u64,
    cache_creation: u64,
    tokens_saved: u64,
    cost_saved: Decimal,
    unpriced_hits: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.lookups += other.lookups;
        self.hits += other.hits;
        self.semantic_hits += other.semantic_hits;
        self.misses += other.misses;
        self.cache_read += other.cache_read;
        self.cache_creation += other.cache_creation;
        self.tokens_saved += other.tokens_saved;
        self.cost_saved += other.cost_saved;
        self.unpriced_hits += other.unpriced_hits;
    }

    fn of(value: &Value) -> Stats {
        let number = |name: &str| value[name].as_u64().unwrap_or_else(|| panic!("{name} in {value}"));
        Stats {
            lookups: number("lookups"),
            hits: number("hits"),
            semantic_hits: number("semantic_hits"),
            misses: number("misses"),
            cache_read: number("cache_read_input_tokens"),
            cache_creation: number("cache_creation_input_tokens"),
            tokens_saved: number("tokens_saved"),
            cost_saved: d(value["cost_saved"].as_str().unwrap()),
            unpriced_hits: number("unpriced_hits"),
        }
    }
}

/// The price in force for `model` at `time_ms`, if any.
fn price_at(model: &str, time_ms: i64) -> Option<[Decimal; 4]> {
    let price = match model {
        "alpha" if time_ms < CHANGE_MS => OLD,
        "alpha" => NEW,
        _ => return None,
    };
    Some(price.map(d))
}

type Key = (String, String, &'static str); // application, model, cache kind

struct Traffic {
    events: Vec<Value>,
    expected: BTreeMap<Key, Stats>,
    hit_ms_max: f64,
    miss_ms_min: f64,
}

/// Draws `count` generations and works out, independently of Tally's code, what each adds.
fn generate(seed: u64, count: usize) -> Traffic {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut traffic = Traffic { events: Vec::new(), expected: BTreeMap::new(), hit_ms_max: 0.0, miss_ms_min: f64::MAX };
    let million = Decimal::from(1_000_000);
    for index in 0..count {
        // "batch" only writes to the prompt cache (response-cache misses): its saving is negative.
        let application = ["chat", "search", "batch"][rng.random_range(0..3)];
        let model = if rng.random_bool(0.8) { "alpha" } else { "mystery" };
        let start = BASE_MS + rng.random_range(0..60 * 3_600_000);
        let input: i64 = rng.random_range(200..5_000);
        let output: i64 = rng.random_range(10..800);
        let roll: f64 = rng.random();
        let (status, read, creation) = if application == "batch" {
            ("miss", 0, input / 3)
        } else if roll < 0.25 {
            ("hit", 0, 0)
        } else if roll < 0.35 {
            ("semantic_hit", 0, 0)
        } else if roll < 0.55 {
            ("miss", 0, if rng.random_bool(0.5) { input / 3 } else { 0 })
        } else if roll < 0.80 {
            ("none", input * rng.random_range(1..9) / 10, 0)
        } else {
            ("none", 0, 0)
        };
        let response_hit = matches!(status, "hit" | "semantic_hit");
        // Hits answer in 10..20 ms, everything else in 800..1,500 ms.
        let duration_ms = if response_hit || read > 0 { rng.random_range(10.0..20.0) } else { rng.random_range(800.0..1_500.0) };
        let mut event = json!({"type": "generation", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": format!("t{}", index % 97),
            "provider": "testco", "model": model, "application": application, "start_time": start, "duration_ms": duration_ms,
            "input_tokens": input, "output_tokens": output, "cache_status": status,
            "cache_read_input_tokens": read, "cache_creation_input_tokens": creation});
        if response_hit && index % 7 == 0 {
            // The client's own cost (a cache hit it was not billed for): the saving is still
            // valued at the price table.
            event["cost"] = json!("0");
        }
        let price = price_at(model, start);
        if status != "none" {
            let stats = traffic.expected.entry((application.into(), model.into(), "response")).or_default();
            stats.lookups += 1;
            match status {
                "hit" => stats.hits += 1,
                "semantic_hit" => stats.semantic_hits += 1,
                _ => stats.misses += 1,
            }
            if response_hit {
                stats.tokens_saved += (input + output) as u64;
                match price {
                    // The whole call: uncached input, output (a hit reports no cache tokens).
                    Some(p) => stats.cost_saved += (Decimal::from(input) * p[0] + Decimal::from(output) * p[1]) / million,
                    None => stats.unpriced_hits += 1,
                }
            }
        }
        if status != "hit" && status != "semantic_hit" && (read > 0 || creation > 0) {
            let stats = traffic.expected.entry((application.into(), model.into(), "prompt")).or_default();
            stats.lookups += 1;
            if read > 0 {
                stats.hits += 1;
            } else {
                stats.misses += 1;
            }
            stats.cache_read += read as u64;
            stats.cache_creation += creation as u64;
            stats.tokens_saved += read as u64;
            match price {
                Some(p) => stats.cost_saved += (Decimal::from(read) * (p[0] - p[2]) - Decimal::from(creation) * (p[3] - p[0])) / million,
                None => stats.unpriced_hits += u64::from(read > 0),
            }
        }
        if response_hit || read > 0 {
            traffic.hit_ms_max = traffic.hit_ms_max.max(duration_ms);
        } else if status != "none" || creation > 0 {
            traffic.miss_ms_min = traffic.miss_ms_min.min(duration_ms);
        }
        traffic.events.push(event);
    }
    traffic
}

async fn set_prices(env: &TestEnv) {
    use tally_processor::prices::{upsert, ModelPrice};
    let row = |price: [&str; 4], from: i64| ModelPrice {
        provider: "testco".into(),
        model_pattern: "alpha".into(),
        input_per_mtok: d(price[0]),
        output_per_mtok: d(price[1]),
        cache_read_per_mtok: d(price[2]),
        cache_creation_per_mtok: d(price[3]),
        currency: "USD".into(),
        effective_from: time::OffsetDateTime::from_unix_timestamp(from / 1_000).unwrap(),
    };
    upsert(&env.pool, &[row(OLD, 0), row(NEW, CHANGE_MS)]).await.unwrap();
}

async fn get(env: &TestEnv, url: &str, key: &str) -> (u16, Value) {
    let response = env.http.get(url).bearer_auth(key).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_statistics_are_exact_per_kind_application_and_model() {
    let mut env = TestEnv::new().await;
    set_prices(&env).await;
    let ingest = env.start_ingest().await;
    env.start_processor().await;
    let query = env.start_query_api().await;
    let key = env.api_key("acme").await;

    let traffic = generate(11, 4_000);
    for chunk in traffic.events.chunks(500) {
        let response = env.http.post(format!("{ingest}/v1/events")).bearer_auth(&key).json(&json!({"events": chunk})).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    // Duplicates: every ninth event again. They must change nothing.
    let again: Vec<Value> = traffic.events.iter().step_by(9).cloned().collect();
    let response = env.http.post(format!("{ingest}/v1/events")).bearer_auth(&key).json(&json!({"events": again})).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let range = format!("from={}&to={}", BASE_MS - 3_600_000, BASE_MS + 64 * 3_600_000);
    let expected_lookups: u64 = traffic.expected.values().map(|stats| stats.lookups).sum();
    let url = format!("{query}/v1/cache/stats?{range}&interval=day&group_by=application,model");
    let answer = eventually("every lookup in the cache statistics", Duration::from_secs(90), || async {
        let (status, body) = get(&env, &url, &key).await;
        assert_eq!(status, 200, "{body}");
        let lookups: u64 = body["totals"].as_object().unwrap().values().map(|kind| kind["lookups"].as_u64().unwrap()).sum();
        (lookups >= expected_lookups).then_some(body)
    })
    .await;

    let mut stored: BTreeMap<Key, Stats> = BTreeMap::new();
    for point in answer["series"].as_array().unwrap() {
        let kind = match point["cache_kind"].as_str().unwrap() {
            "response" => "response",
            "prompt" => "prompt",
            other => panic!("cache_kind {other}"),
        };
        let key = (point["application"].as_str().unwrap().to_string(), point["model"].as_str().unwrap().to_string(), kind);
        stored.entry(key).or_default().add(&Stats::of(point));
    }
    assert_eq!(stored, traffic.expected, "per application, model and cache kind");
    assert!(traffic.expected.values().any(|stats| stats.unpriced_hits > 0), "the test covers unpriced hits");
    assert!(traffic.expected.values().any(|stats| stats.cost_saved.is_sign_negative()), "the test covers writes costing more than reads saved");

    for kind in ["response", "prompt"] {
        let mut expected = Stats::default();
        traffic.expected.iter().filter(|((_, _, k), _)| *k == kind).for_each(|(_, stats)| expected.add(stats));
        let totals = &answer["totals"][kind];
        assert_eq!(Stats::of(totals), expected, "{kind} totals");
        let rate = totals["hit_rate"].as_f64().unwrap();
        let expected_rate = (expected.hits + expected.semantic_hits) as f64 / expected.lookups as f64;
        assert!((rate - expected_rate).abs() < 1e-12, "{kind} hit rate {rate} vs {expected_rate}");
        // Percentiles are bucket upper bounds, at most ~19 % above the true value.
        let hit_p99 = totals["hit_latency_ms"]["p99"].as_f64().unwrap();
        let miss_p50 = totals["miss_latency_ms"]["p50"].as_f64().unwrap();
        assert!(hit_p99 <= traffic.hit_ms_max * 1.2, "{kind} hit p99 {hit_p99} ms, slowest hit {} ms", traffic.hit_ms_max);
        assert!(miss_p50 >= traffic.miss_ms_min, "{kind} miss p50 {miss_p50} ms, fastest miss {} ms", traffic.miss_ms_min);
    }

    // One kind, filtered by a dimension, per hour: the same sums for that slice.
    let url = format!("{query}/v1/cache/stats?{range}&cache_kind=prompt&application=chat");
    let (status, prompt_chat) = get(&env, &url, &key).await;
    assert_eq!(status, 200, "{prompt_chat}");
    let mut expected = Stats::default();
    traffic.expected.iter().filter(|((application, _, kind), _)| application == "chat" && *kind == "prompt").for_each(|(_, s)| expected.add(s));
    assert_eq!(Stats::of(&prompt_chat["totals"]["prompt"]), expected, "prompt cache of application chat");
    assert!(prompt_chat["totals"].get("response").is_none(), "{prompt_chat}");
    assert!(prompt_chat["series"].as_array().unwrap().iter().all(|point| point["cache_kind"] == "prompt"));

    // What the statistics are not kept by is refused, naming the parameter.
    let (status, body) = get(&env, &format!("{query}/v1/cache/stats?{range}&group_by=user_id"), &key).await;
    assert_eq!((status, body["error"]["parameter"].as_str()), (400, Some("group_by")), "{body}");
    let (status, body) = get(&env, &format!("{query}/v1/cache/stats?{range}&cache_kind=semantic"), &key).await;
    assert_eq!((status, body["error"]["parameter"].as_str()), (400, Some("cache_kind")), "{body}");

    // Another project sees none of it.
    let other = env.api_key("other").await;
    let (status, body) = get(&env, &format!("{query}/v1/cache/stats?{range}"), &other).await;
    assert_eq!(status, 200);
    assert!(body["series"].as_array().unwrap().is_empty(), "{body}");
    env.cleanup().await;
}
