//! Ingest's metrics, declared together. Labels are bounded (reason codes, never user values).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct IngestMetrics {
    /// Events by outcome: `accepted`, or the rejection code.
    pub events: IntCounterVec,
    /// Requests refused for backpressure, by reason.
    pub backpressure: IntCounterVec,
    /// Requests refused by admission (see admission.rs), by reason: overloaded, failed_auth,
    /// slow_body, quota.
    pub refused: IntCounterVec,
    /// Time from the first produce call of a request to its last delivery report.
    pub produce_seconds: Histogram,
    /// Time to decompress, parse, validate and Avro-encode one request's body (CPU work).
    pub prepare_seconds: Histogram,
    /// Events per request.
    pub batch_events: Histogram,
    /// Kafka producers replaced because they stopped acknowledging (see producer.rs).
    pub producer_replacements: IntCounter,
    /// OTLP spans (`/v1/traces`) by what became of them: `event` (mapped to an event, which
    /// `events` then counts), `skipped` (not an LLM call or agent run), `unmappable` (no valid
    /// trace or span id).
    pub otlp_spans: IntCounterVec,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(Opts::new("tally_ingest_events_total", "Events received, by outcome"), &["outcome"])?;
        let backpressure = IntCounterVec::new(
            Opts::new("tally_ingest_backpressure_total", "Requests refused with 503 for backpressure, by reason"),
            &["reason"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new("tally_ingest_refused_requests_total", "Requests refused before their events were read, by reason (overloaded, failed_auth, slow_body, quota)"),
            &["reason"],
        )?;
        let produce_seconds = Histogram::with_opts(
            HistogramOpts::new("tally_ingest_produce_seconds", "Kafka produce latency per request (all deliveries)")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]),
        )?;
        let prepare_seconds = Histogram::with_opts(
            HistogramOpts::new("tally_ingest_prepare_seconds", "Time to decompress, parse, validate and encode a request body")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let batch_events = Histogram::with_opts(
            HistogramOpts::new("tally_ingest_batch_events", "Events per ingest request")
                .buckets(vec![1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]),
        )?;
        let producer_replacements =
            IntCounter::new("tally_ingest_producer_replacements_total", "Kafka producers replaced after failing every delivery for a while")?;
        let otlp_spans =
            IntCounterVec::new(Opts::new("tally_ingest_otlp_spans_total", "OTLP spans received, by outcome (event, skipped, unmappable)"), &["outcome"])?;
        registry.register(Box::new(otlp_spans.clone()))?;
        registry.register(Box::new(producer_replacements.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(backpressure.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(produce_seconds.clone()))?;
        registry.register(Box::new(batch_events.clone()))?;
        registry.register(Box::new(prepare_seconds.clone()))?;
        Ok(Self { events, backpressure, refused, produce_seconds, prepare_seconds, batch_events, producer_replacements, otlp_spans })
    }
}
