//! The Kafka side of ingest: produce a request's events as one burst, then wait for all their
//! delivery reports. An event counts as accepted only when the broker acknowledged it
//! (`acks=all`, idempotent producer, see `tally_common::stores::producer_config`).
//!
//! Backpressure instead of buffering: when the local producer queue cannot take the whole
//! request, nothing is enqueued and the request is answered 503 with `Retry-After`.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tally_common::config::KafkaConfig;
use tally_common::stores;

use crate::metrics::IngestMetrics;

/// Why an event was not acknowledged by Kafka. All of these are worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error("the producer queue is full; retry later")]
    QueueFull,
    #[error("Kafka did not acknowledge the event: {0}")]
    NotAcknowledged(String),
}

pub struct EventProducer {
    /// Replaced when librdkafka reports a fatal error (an idempotent producer that lost its
    /// sequence state cannot produce again), or when it has failed every delivery for a while;
    /// see [`EventProducer::current`] and [`Progress`].
    producer: Arc<RwLock<FutureProducer>>,
    progress: Mutex<Progress>,
    config: KafkaConfig,
    topic: String,
    queue_max_messages: usize,
    metrics: IngestMetrics,
}

/// One message to produce: the partitioning key (trace id or run id) and the encoded event.
pub struct OutgoingMessage {
    pub key: String,
    pub payload: Vec<u8>,
}

impl EventProducer {
    pub fn new(config: &KafkaConfig, metrics: IngestMetrics) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: Arc::new(RwLock::new(stores::producer_config(config).create()?)),
            progress: Mutex::new(Progress::default()),
            config: config.clone(),
            topic: config.topic.clone(),
            queue_max_messages: config.queue_max_messages as usize,
            metrics,
        })
    }

    /// The producer to use, after replacing it if librdkafka declared it fatally failed. Events
    /// in flight on the old instance were reported as not acknowledged, so clients resend them.
    fn current(&self) -> FutureProducer {
        let stalled = self.progress.lock().expect("progress lock poisoned").stalled(self.stall_limit());
        if stalled {
            let mut slot = self.producer.write().expect("producer lock poisoned");
            // Checked again under the write lock: another request may have replaced it already.
            if self.progress.lock().expect("progress lock poisoned").stalled(self.stall_limit()) {
                tracing::error!(
                    limit_secs = self.stall_limit().as_secs(),
                    "the Kafka producer has acknowledged nothing while failing deliveries; creating a new one"
                );
                match stores::producer_config(&self.config).create::<FutureProducer>() {
                    Ok(fresh) => {
                        *slot = fresh;
                        *self.progress.lock().expect("progress lock poisoned") = Progress::default();
                        self.metrics.producer_replacements.inc();
                    }
                    Err(error) => tracing::error!(%error, "cannot create a new Kafka producer"),
                }
            }
        }
        current_producer(&self.producer, &self.config)
    }

    /// How long every delivery may fail before the producer is replaced: three message
    /// timeouts, so a broker that is merely slow or briefly down is waited for.
    fn stall_limit(&self) -> Duration {
        Duration::from_millis(u64::from(self.config.message_timeout_ms) * 3)
    }

    /// Produces every message and waits for their delivery reports; one result per message.
    pub async fn produce_all(&self, messages: &[OutgoingMessage]) -> Result<Vec<Result<(), ProduceError>>, ProduceError> {
        let producer = self.current();
        let in_flight = producer.in_flight_count().max(0) as usize;
        if in_flight + messages.len() > self.queue_max_messages {
            self.metrics.backpressure.with_label_values(&["queue_full"]).inc();
            return Err(ProduceError::QueueFull);
        }
        let started = Instant::now();
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let record = FutureRecord::to(&self.topic).key(&message.key).payload(&message.payload);
            match producer.send_result(record) {
                Ok(delivery) => pending.push(Ok(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => pending.push(Err(ProduceError::QueueFull)),
                Err((error, _)) => pending.push(Err(ProduceError::NotAcknowledged(error.to_string()))),
            }
        }
        let results = join_all(pending.into_iter().map(|entry| async move {
            match entry {
                Err(error) => Err(error),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(ProduceError::NotAcknowledged(error.to_string())),
                    Err(_) => Err(ProduceError::NotAcknowledged("the producer was shut down".into())),
                },
            }
        }))
        .await;
        self.metrics.produce_seconds.observe(started.elapsed().as_secs_f64());
        let delivered = results.iter().any(Result::is_ok);
        let failed = results.iter().any(|result| matches!(result, Err(ProduceError::NotAcknowledged(_))));
        self.progress.lock().expect("progress lock poisoned").record(delivered, failed);
        Ok(results)
    }

    /// A cloneable probe for `/ready`.
    pub fn checker(&self) -> TopicChecker {
        TopicChecker { producer: self.producer.clone(), config: self.config.clone(), topic: self.topic.clone() }
    }

    /// Waits (bounded) for every queued message to be delivered; called at shutdown.
    pub fn flush(&self, timeout: Duration) {
        let producer = self.current();
        if let Err(error) = producer.flush(timeout) {
            tracing::warn!(%error, in_flight = producer.in_flight_count(), "producer flush incomplete at shutdown");
        }
    }
}

/// Whether the producer still acknowledges anything. After a broker restart, librdkafka's
/// idempotent producer was seen to send sequence numbers the broker rejected
/// (`OutOfOrderSequenceException` in the broker log) and then fail every later delivery by
/// timeout without ever reporting a fatal error: ingest answered 503 forever. A producer that
/// has failed deliveries and acknowledged nothing for [`EventProducer::stall_limit`] is replaced;
/// a new producer has a new producer id and no sequence state. Nothing acknowledged is lost:
/// the failed events were answered as not acknowledged, and clients resend them.
#[derive(Debug)]
struct Progress {
    last_delivery: Instant,
    failing_since: Option<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { last_delivery: Instant::now(), failing_since: None }
    }
}

impl Progress {
    fn record(&mut self, delivered: bool, failed: bool) {
        if delivered {
            self.last_delivery = Instant::now();
            self.failing_since = None;
        } else if failed {
            self.failing_since.get_or_insert_with(Instant::now);
        }
    }

    fn stalled(&self, limit: Duration) -> bool {
        self.failing_since.is_some_and(|since| since.elapsed() >= limit && self.last_delivery.elapsed() >= limit)
    }
}

/// The producer in `slot`, replaced first if librdkafka declared it fatally failed.
fn current_producer(slot_lock: &RwLock<FutureProducer>, config: &KafkaConfig) -> FutureProducer {
    let producer = slot_lock.read().expect("producer lock poisoned").clone();
    let Some((code, reason)) = producer.client().fatal_error() else { return producer };
    let mut slot = slot_lock.write().expect("producer lock poisoned");
    if slot.client().fatal_error().is_some() {
        tracing::error!(?code, %reason, "Kafka producer failed fatally; creating a new one");
        match stores::producer_config(config).create::<FutureProducer>() {
            Ok(fresh) => *slot = fresh,
            Err(error) => tracing::error!(%error, "cannot create a new Kafka producer"),
        }
    }
    slot.clone()
}

/// Checks that the broker answers and the topic exists.
#[derive(Clone)]
pub struct TopicChecker {
    /// The same slot as the producer's, so the probe follows a replaced producer.
    producer: Arc<RwLock<FutureProducer>>,
    config: KafkaConfig,
    topic: String,
}

impl TopicChecker {
    pub async fn check(&self) -> Result<(), String> {
        let producer = current_producer(&self.producer, &self.config);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map_err(|error| error.to_string())?;
            match metadata.topics().first() {
                Some(found) if found.error().is_none() && !found.partitions().is_empty() => Ok(()),
                _ => Err(format!("topic {topic} does not exist; run `tally migrate`")),
            }
        })
        .await
        .map_err(|error| error.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_stalls_only_when_it_fails_and_delivers_nothing() {
        let mut progress = Progress::default();
        assert!(!progress.stalled(Duration::ZERO), "nothing failed yet");
        progress.record(false, true);
        assert!(progress.stalled(Duration::ZERO));
        assert!(!progress.stalled(Duration::from_secs(60)), "not for long enough");
        progress.record(true, true);
        assert!(!progress.stalled(Duration::ZERO), "a delivery resets it");
        progress.record(false, false);
        assert!(!progress.stalled(Duration::ZERO), "queue-full refusals are not failures of the producer");
    }
}
