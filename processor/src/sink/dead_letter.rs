//! Step 4, the dead letters: messages that cannot be decoded and decoded events that the stores
//! cannot hold go to the dead-letter topic with the reason in headers, and the write waits for
//! the broker's acknowledgement (a dead letter is as durable as a write to a store).
//! `tally dlq list` shows them; `tally dlq replay` sends them back once fixed (a rejected
//! event's first-seen record is forgotten at commit, so a replay counts it).

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::{PartitionBatch, Sink, SinkError};

/// One message for the dead-letter topic.
pub(super) struct DeadLetter<'a> {
    pub offset: i64,
    pub payload: &'a [u8],
    /// `undecodable` or `rejected`.
    pub kind: &'static str,
    pub reason: String,
}

impl<'a> PartitionBatch<'a> {
    /// Undecodable messages and rejected events of the batch, in offset order.
    pub(super) fn dead_letters(&self) -> Vec<DeadLetter<'a>> {
        let mut letters: Vec<DeadLetter<'a>> = self
            .messages
            .iter()
            .filter_map(|message| {
                let error = message.decoded.as_ref().err()?;
                Some(DeadLetter { offset: message.offset, payload: &message.payload, kind: "undecodable", reason: error.to_string() })
            })
            .collect();
        letters.extend(self.output.rejected.iter().map(|rejected| DeadLetter {
            offset: rejected.offset,
            payload: self.payload(rejected.offset),
            kind: "rejected",
            reason: rejected.reason.clone(),
        }));
        letters.sort_by_key(|letter| letter.offset);
        letters
    }
}

impl Sink {
    pub(super) async fn dead_letter(&self, partition: i32, letters: &[DeadLetter<'_>]) -> Result<(), SinkError> {
        let mut deliveries = Vec::with_capacity(letters.len());
        for letter in letters {
            let (offset, reason) = (letter.offset, &letter.reason);
            tracing::warn!(partition, offset, kind = letter.kind, %reason, "message sent to the dead-letter topic");
            let headers = OwnedHeaders::new()
                .insert(Header { key: "tally.error", value: Some(reason.as_bytes()) })
                .insert(Header { key: "tally.error.kind", value: Some(letter.kind.as_bytes()) })
                .insert(Header { key: "tally.source.topic", value: Some(self.topic.as_bytes()) })
                .insert(Header { key: "tally.source.partition", value: Some(partition.to_string().as_bytes()) })
                .insert(Header { key: "tally.source.offset", value: Some(offset.to_string().as_bytes()) });
            let key = format!("{partition}:{offset}");
            let record = FutureRecord::to(&self.dead_letter_topic).key(&key).payload(letter.payload).headers(headers);
            let delivery = self.dlq.send_result(record).map_err(|(error, _)| SinkError::DeadLetter(error.to_string()))?;
            deliveries.push(delivery);
        }
        for delivery in futures::future::join_all(deliveries).await {
            delivery
                .map_err(|_| SinkError::DeadLetter("the producer shut down".into()))?
                .map_err(|(error, _)| SinkError::DeadLetter(error.to_string()))?;
        }
        for letter in letters {
            self.metrics.dead_lettered.with_label_values(&[letter.kind]).inc();
        }
        Ok(())
    }
}
