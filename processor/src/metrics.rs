//! The processor's metrics, declared together. Labels are bounded: store names, outcomes and
//! partition numbers (there are as many as the topic has partitions).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct ProcessorMetrics {
    /// Messages by outcome: counted, duplicate, dead_lettered (undecodable), rejected (decoded
    /// but refused by the checks or by a store).
    pub messages: IntCounterVec,
    pub unpriced: IntCounter,
    /// Messages sent to the dead-letter topic, by kind (undecodable, rejected).
    pub dead_lettered: IntCounterVec,
    /// Searches for the events a store refused, by outcome (found, not_reproduced).
    pub isolations: IntCounterVec,
    pub batch_messages: Histogram,
    pub batch_seconds: Histogram,
    /// Time per step of the write protocol (claim, compute, clickhouse, dead_letter, commit).
    pub step_seconds: prometheus::HistogramVec,
    /// Failed store operations by store; the batch is retried.
    pub store_errors: IntCounterVec,
    /// 1 while the processor waits for this store to come back.
    pub waiting_for: IntGaugeVec,
    pub lost_ownership: IntCounter,
    pub offset_gaps: IntCounter,
    /// Consumer lag per partition, from librdkafka statistics.
    pub consumer_lag: IntGaugeVec,
    /// Kafka consumers replaced because their group had no coordinator for too long.
    pub consumer_replacements: IntCounter,
    /// Rollup compaction runs by outcome (compacted, up_to_date, busy, failed).
    pub compactions: IntCounterVec,
    pub compaction_seconds: Histogram,
    /// Partitions whose live windows were rebuilt from ClickHouse (a hole in Redis).
    pub live_window_rebuilds: IntCounter,
}

impl ProcessorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            messages: IntCounterVec::new(Opts::new("tally_processor_messages_total", "Messages processed, by outcome"), &["outcome"])?,
            unpriced: IntCounter::new("tally_processor_unpriced_generations_total", "Generations without a price (cost left null)")?,
            dead_lettered: IntCounterVec::new(
                Opts::new("tally_processor_dead_lettered_total", "Messages sent to the dead-letter topic, by kind (undecodable, rejected)"),
                &["kind"],
            )?,
            isolations: IntCounterVec::new(
                Opts::new("tally_processor_isolations_total", "Searches for the events whose values a store refused, by outcome"),
                &["outcome"],
            )?,
            batch_messages: Histogram::with_opts(
                HistogramOpts::new("tally_processor_batch_messages", "Messages per written batch")
                    .buckets(vec![1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0]),
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new("tally_processor_batch_seconds", "Time to write a batch to every store")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            step_seconds: prometheus::HistogramVec::new(
                HistogramOpts::new("tally_processor_step_seconds", "Time per step of the batch write protocol")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["step"],
            )?,
            store_errors: IntCounterVec::new(Opts::new("tally_processor_store_errors_total", "Failed store writes, by store"), &["store"])?,
            waiting_for: IntGaugeVec::new(Opts::new("tally_processor_waiting_for", "1 while waiting for a store to recover"), &["store"])?,
            lost_ownership: IntCounter::new("tally_processor_lost_ownership_total", "Batches dropped because another worker applied them")?,
            offset_gaps: IntCounter::new("tally_processor_offset_gaps_total", "Partitions whose next message was beyond the applied offset")?,
            consumer_lag: IntGaugeVec::new(Opts::new("tally_processor_consumer_lag", "Consumer lag in messages, by partition"), &["partition"])?,
            consumer_replacements: IntCounter::new(
                "tally_processor_consumer_replacements_total",
                "Kafka consumers replaced because their group found no coordinator for too long",
            )?,
            compactions: IntCounterVec::new(Opts::new("tally_processor_compactions_total", "Rollup compaction runs, by outcome"), &["outcome"])?,
            compaction_seconds: Histogram::with_opts(
                HistogramOpts::new("tally_processor_compaction_seconds", "Time of a rollup compaction run that compacted something")
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )?,
            live_window_rebuilds: IntCounter::new(
                "tally_processor_live_window_rebuilds_total",
                "Partitions whose live rate-limit windows in Redis were rebuilt from ClickHouse",
            )?,
        };
        registry.register(Box::new(metrics.live_window_rebuilds.clone()))?;
        registry.register(Box::new(metrics.messages.clone()))?;
        registry.register(Box::new(metrics.unpriced.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.isolations.clone()))?;
        registry.register(Box::new(metrics.batch_messages.clone()))?;
        registry.register(Box::new(metrics.batch_seconds.clone()))?;
        registry.register(Box::new(metrics.store_errors.clone()))?;
        registry.register(Box::new(metrics.step_seconds.clone()))?;
        registry.register(Box::new(metrics.waiting_for.clone()))?;
        registry.register(Box::new(metrics.lost_ownership.clone()))?;
        registry.register(Box::new(metrics.offset_gaps.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        registry.register(Box::new(metrics.consumer_replacements.clone()))?;
        registry.register(Box::new(metrics.compactions.clone()))?;
        registry.register(Box::new(metrics.compaction_seconds.clone()))?;
        Ok(metrics)
    }
}
