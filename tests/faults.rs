//! Fault tests with real processes: processor workers run as `tally processor` child processes
//! and are killed with SIGKILL mid-stream; a second consumer group re-reads every offset; an
//! undecodable message lands on the topic. After each fault the ClickHouse and Postgres
//! contents are compared with the ground truth: nothing acknowledged is missing, nothing is
//! counted twice.

mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use support::truth::{assert_exact, counted, send_all, set_price, stored};
use support::{eventually, spawn_processor, TestEnv};
use tally_common::stores;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processor_killed_mid_stream_then_restarted() {
    let mut env = TestEnv::new().await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    let mut first = spawn_processor(&env, "first");
    let sender = tokio::spawn(send_all(env.http.clone(), url, key, 12_000));
    eventually("the first worker to apply some events", Duration::from_secs(60), || async { (counted(&env).await >= 2_000).then_some(()) }).await;
    first.kill(); // SIGKILL
    let at_kill = counted(&env).await;
    let mut second = spawn_processor(&env, "second");
    let truth = sender.await.unwrap();
    assert!(at_kill < truth.requests, "the kill happened mid-stream ({at_kill} of {})", truth.requests);
    assert_exact(&env, &truth).await;

    // The same offsets processed again: a second consumer group re-reads the whole topic.
    env.config.kafka.consumer_group = format!("{}-replay", env.config.kafka.consumer_group);
    let replay = env.start_processor().await;
    let group = env.config.kafka.consumer_group.clone();
    let kafka = env.config.kafka.clone();
    eventually("the replaying group to reach the end of the topic", Duration::from_secs(60), || {
        let (group, kafka) = (group.clone(), kafka.clone());
        async move { tokio::task::spawn_blocking(move || caught_up(&kafka, &group)).await.unwrap().then_some(()) }
    })
    .await;
    replay.cancel();
    assert_eq!(stored(&env).await.unwrap().0, truth, "re-reading every offset changed nothing");
    second.kill();
    env.cleanup().await;
}

/// Whether `group` has committed offsets at the high watermark of every partition.
fn caught_up(kafka: &tally_common::config::KafkaConfig, group: &str) -> bool {
    let consumer: BaseConsumer = stores::kafka_base(kafka).set("group.id", group).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), Duration::from_secs(5)).unwrap();
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition(&kafka.topic, partition.id());
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).unwrap();
    committed.elements().iter().all(|element| {
        let (_, high) = consumer.fetch_watermarks(&kafka.topic, element.partition(), Duration::from_secs(5)).unwrap();
        high == 0 || element.offset().to_raw() == Some(high)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_workers_killed_then_a_third_joins() {
    let mut env = TestEnv::new().await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    let mut first = spawn_processor(&env, "first");
    let mut second = spawn_processor(&env, "second");
    let sender = tokio::spawn(send_all(env.http.clone(), url, key, 12_000));
    eventually("the workers to apply some events", Duration::from_secs(60), || async { (counted(&env).await >= 3_000).then_some(()) }).await;
    first.kill();
    eventually("the survivor to go on", Duration::from_secs(60), || async { (counted(&env).await >= 6_000).then_some(()) }).await;
    let mut third = spawn_processor(&env, "third");
    let truth = sender.await.unwrap();
    assert_exact(&env, &truth).await;
    second.kill();
    third.kill();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let mut env = TestEnv::new().await;
    set_price(&env).await;
    let url = env.start_ingest().await;
    let key = env.api_key("acme").await;
    env.start_processor().await;
    let producer: FutureProducer = stores::producer_config(&env.config.kafka).create().unwrap();
    producer
        .send(FutureRecord::to(&env.config.kafka.topic).key("trace-0").payload(&b"\xc3\x01garbage that is not avro"[..]), Duration::from_secs(10))
        .await
        .unwrap();
    let truth = send_all(env.http.clone(), url, key, 1_000).await;
    assert_exact(&env, &truth).await;
    let kafka = env.config.kafka.clone();
    let letters = tokio::task::spawn_blocking(move || tally_processor::dlq::read(&kafka, 10)).await.unwrap().unwrap();
    assert_eq!(letters.len(), 1);
    let reason = letters[0].reason.clone().unwrap();
    assert!(reason.contains("fingerprint") || reason.contains("short") || reason.contains("marker"), "{reason}");
    env.cleanup().await;
}
