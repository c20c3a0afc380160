//! Connections to the four stores, built from the configuration in one place so that every
//! service sets them up the same way (timeouts, client settings the old ClickHouse needs, the
//! Kafka producer's durability settings).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::{ClickHouseCompression, ClickHouseConfig, Config, KafkaConfig, PostgresConfig};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// A Postgres pool. Connections are made lazily so a service can start (and answer `/ready`
/// with the reason) while Postgres is down.
pub fn postgres_pool(config: &PostgresConfig) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = config.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// A ClickHouse HTTP client for the configured database.
///
/// Row validation is off: the crate's validation fetches the table with `DESCRIBE TABLE` and the
/// setting `describe_include_subcolumns` and sends `RowBinaryWithNamesAndTypes`, and ClickHouse
/// 18.16 (the development stack) knows neither the setting nor the format (codes 115 and 73). The
/// services check their row structs against the tables' columns at startup instead
/// ([`crate::schema_check`]).
pub fn clickhouse_client(config: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse_server_client(config).with_database(&config.database)
}

/// A ClickHouse client without a default database (to create it).
pub fn clickhouse_server_client(config: &ClickHouseConfig) -> clickhouse::Client {
    let compression = match config.compression {
        ClickHouseCompression::Lz4 => clickhouse::Compression::Lz4,
        ClickHouseCompression::None => clickhouse::Compression::None,
    };
    let mut client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_validation(false)
        .with_compression(compression);
    if !config.password.expose().is_empty() {
        client = client.with_password(config.password.expose());
    }
    client
}

pub fn redis_client(config: &Config) -> Result<redis::Client, StoreError> {
    Ok(redis::Client::open(config.redis.url.expose())?)
}

/// Settings every Kafka client shares.
pub fn kafka_base(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    // TCP_NODELAY: a produce request's last segment must not wait for the broker's delayed ACK.
    client.set("bootstrap.servers", &config.brokers).set("client.id", "tally").set("socket.nagle.disable", "true");
    if !config.debug.is_empty() {
        client.set("debug", &config.debug);
    }
    client
}

/// The producer settings that make "acknowledged" mean "Kafka has it": idempotence,
/// `acks=all`, bounded local queue (a full queue is answered with 503, not buffered).
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = kafka_base(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("queue.buffering.max.messages", config.queue_max_messages.to_string())
        .set("queue.buffering.max.kbytes", "1048576")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("compression.type", config.compression.as_str());
    client
}

/// Creates `topic` with `partitions` unless it exists. Returns whether it was created.
pub async fn ensure_topic(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<bool, StoreError> {
    let admin: AdminClient<DefaultClientContext> = kafka_base(config).create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // One topic asked for, so one result.
    match admin.create_topics([&new_topic], &options).await?.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((name, code))) => Err(StoreError::Topic { topic: name, reason: code.to_string() }),
    }
}

/// Deletes a topic (used by tests to clean up after themselves).
pub async fn delete_topic(config: &KafkaConfig, topic: &str) -> Result<(), StoreError> {
    let admin: AdminClient<DefaultClientContext> = kafka_base(config).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&[topic], &options).await? {
        if let Err((name, code)) = result {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(StoreError::Topic { topic: name, reason: code.to_string() });
            }
        }
    }
    Ok(())
}
