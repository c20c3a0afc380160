//! The Kafka side of ingest: produce a request's events as one burst, then wait for all their
//! delivery reports. An event counts as accepted only when the broker acknowledged it
//! (`acks=all`, idempotent producer, see `tally_common::stores::producer_config`).
//!
//! Backpressure instead of buffering: when the local producer queue cannot take the whole
//! request, nothing is enqueued and the request is answered 503 with `Retry-After`.

use std::sync::{Arc, RwLock};
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
    /// sequence state cannot produce again); see [`EventProducer::current`].
    producer: Arc<RwLock<FutureProducer>>,
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
            config: config.clone(),
            topic: config.topic.clone(),
            queue_max_messages: config.queue_max_messages as usize,
            metrics,
        })
    }

    /// The producer to use, after replacing it if librdkafka declared it fatally failed. Events
    /// in flight on the old instance were reported as not acknowledged, so clients resend them.
    fn current(&self) -> FutureProducer {
        current_producer(&self.producer, &self.config)
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
