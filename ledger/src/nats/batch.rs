//! ADR-50 atomic batch publish: a whole batch is stored, or none of it.
//!
//! Message 1 carries `Nats-Batch-Id`, `Nats-Batch-Sequence: 1` and (optionally)
//! `Nats-Expected-Last-Sequence`, and is sent with a reply subject (the server answers empty or
//! with an error). Middle messages carry the id and the next sequence. The last one also carries
//! `Nats-Batch-Commit: 1`; its reply is the PubAck of the whole batch, or the error that refused
//! it (10071 when the expected sequence no longer matches: nothing of the batch was stored).
//! Every message carries `Nats-Msg-Id`. Replies arrive on one wildcard inbox subscription, so the
//! messages keep their wire order.

use std::time::Duration;

use async_nats::header::{self, HeaderMap};
use async_nats::{Client, StatusCode, Subscriber};
use bytes::Bytes;
use futures::StreamExt;

/// JetStream error code: wrong last sequence (the expected sequence did not match).
pub const ERR_WRONG_LAST_SEQUENCE: u64 = 10071;
/// JetStream error code: batch contains a duplicate message id.
pub const ERR_BATCH_DUPLICATE_MSG_ID: u64 = 10201;
/// Largest batch the server accepts.
pub const MAX_BATCH: usize = 1000;

/// One message of a batch.
#[derive(Clone, Debug)]
pub struct OutMsg {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

/// What the server said about a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Stored; `last_seq` is the stream sequence of the batch's last message.
    Committed { last_seq: u64 },
    /// Refused whole (nothing stored).
    Refused { err_code: u64, description: String },
}

/// The batch's fate is unknown or it could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("no commit reply within {0:?} (the batch may or may not be stored)")]
    TimedOut(Duration),
    #[error("no responders: the stream has no leader right now")]
    NoResponders,
    #[error("batch of {0} messages is outside 1..={MAX_BATCH}")]
    Size(usize),
    #[error("nats: {0}")]
    Nats(String),
    #[error("unreadable reply: {0}")]
    Reply(String),
}

/// Publishes atomic batches over one connection, one at a time.
pub struct BatchPublisher {
    client: Client,
    inbox: String,
    replies: Subscriber,
    counter: u64,
    nonce: String,
}

#[derive(serde::Deserialize)]
struct AckError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(serde::Deserialize)]
struct Ack {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    error: Option<AckError>,
}

/// Parses a batch reply: a PubAck or an error.
pub fn parse_reply(payload: &[u8]) -> Result<Option<BatchOutcome>, BatchError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let ack: Ack = serde_json::from_slice(payload).map_err(|e| BatchError::Reply(e.to_string()))?;
    match (ack.error, ack.seq) {
        (Some(e), _) => Ok(Some(BatchOutcome::Refused {
            err_code: e.err_code,
            description: e.description,
        })),
        (None, Some(seq)) => Ok(Some(BatchOutcome::Committed { last_seq: seq })),
        (None, None) => Err(BatchError::Reply(
            String::from_utf8_lossy(payload).into_owned(),
        )),
    }
}

impl BatchPublisher {
    pub async fn new(client: Client) -> Result<BatchPublisher, BatchError> {
        let inbox = client.new_inbox();
        let replies = client
            .subscribe(format!("{inbox}.>"))
            .await
            .map_err(|e| BatchError::Nats(e.to_string()))?;
        let nonce = hex::encode(rand::random::<[u8; 8]>());
        Ok(BatchPublisher {
            client,
            inbox,
            replies,
            counter: 0,
            nonce,
        })
    }

    /// Sends `msgs` as one atomic batch and waits for the server's verdict.
    pub async fn publish(
        &mut self,
        msgs: &[OutMsg],
        expected_last_seq: Option<u64>,
        timeout: Duration,
    ) -> Result<BatchOutcome, BatchError> {
        let sent = self.send(msgs, expected_last_seq).await?;
        self.outcome(sent, timeout).await
    }

    /// Sends `msgs` as one atomic batch without waiting; with `expected_last_seq`, the server
    /// commits it only if the stream's last sequence is exactly that when the batch commits.
    /// Call [`BatchPublisher::outcome`] next (work done in between overlaps the commit).
    pub async fn send(
        &mut self,
        msgs: &[OutMsg],
        expected_last_seq: Option<u64>,
    ) -> Result<SentBatch, BatchError> {
        if msgs.is_empty() || msgs.len() > MAX_BATCH {
            return Err(BatchError::Size(msgs.len()));
        }
        self.counter += 1;
        let batch_id = format!("{}-{}", self.nonce, self.counter);
        let first_reply = format!("{}.{}.first", self.inbox, batch_id);
        let commit_reply = format!("{}.{}.commit", self.inbox, batch_id);
        let last = msgs.len() - 1;
        for (i, m) in msgs.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(header::NATS_BATCH_ID, batch_id.as_str());
            h.insert(header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            h.insert(header::NATS_MESSAGE_ID, m.msg_id.as_str());
            if i == 0 {
                if let Some(seq) = expected_last_seq {
                    h.insert(
                        header::NATS_EXPECTED_LAST_SEQUENCE,
                        seq.to_string().as_str(),
                    );
                }
            }
            if i == last {
                h.insert(header::NATS_BATCH_COMMIT, "1");
            }
            let reply = if i == last {
                Some(commit_reply.clone())
            } else if i == 0 {
                Some(first_reply.clone())
            } else {
                None
            };
            let sent = match reply {
                Some(r) => {
                    self.client
                        .publish_with_reply_and_headers(m.subject.clone(), r, h, m.payload.clone())
                        .await
                }
                None => {
                    self.client
                        .publish_with_headers(m.subject.clone(), h, m.payload.clone())
                        .await
                }
            };
            sent.map_err(|e| BatchError::Nats(e.to_string()))?;
        }
        self.client
            .flush()
            .await
            .map_err(|e| BatchError::Nats(e.to_string()))?;
        Ok(SentBatch {
            first_reply,
            commit_reply,
        })
    }

    /// Waits for the verdict on a sent batch.
    pub async fn outcome(
        &mut self,
        sent: SentBatch,
        timeout: Duration,
    ) -> Result<BatchOutcome, BatchError> {
        let SentBatch {
            first_reply,
            commit_reply,
        } = sent;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first_error: Option<BatchOutcome> = None;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.replies.next()).await {
                Err(_) => return Err(BatchError::TimedOut(timeout)),
                Ok(None) => return Err(BatchError::Nats("reply subscription closed".into())),
                Ok(Some(m)) => m,
            };
            let subject = msg.subject.as_str();
            let is_first = subject == first_reply;
            let is_commit = subject == commit_reply;
            if !is_first && !is_commit {
                continue; // a late reply of an earlier batch
            }
            if msg.status == Some(StatusCode::NO_RESPONDERS) {
                return Err(BatchError::NoResponders);
            }
            let outcome = parse_reply(&msg.payload)?;
            if is_first {
                if let Some(o @ BatchOutcome::Refused { .. }) = outcome {
                    first_error = Some(o);
                }
                continue;
            }
            return match outcome {
                Some(o @ BatchOutcome::Refused { .. }) => Ok(first_error.unwrap_or(o)),
                Some(o) => Ok(o),
                None => Err(BatchError::Reply("empty commit reply".into())),
            };
        }
    }
}

/// A batch that was sent and awaits its verdict.
#[derive(Debug)]
pub struct SentBatch {
    first_reply: String,
    commit_reply: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply(b"").unwrap(), None);
        assert_eq!(
            parse_reply(br#"{"stream":"S","seq":42,"batch":"b","count":3}"#).unwrap(),
            Some(BatchOutcome::Committed { last_seq: 42 })
        );
        assert_eq!(
            parse_reply(
                br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}"#
            )
            .unwrap(),
            Some(BatchOutcome::Refused {
                err_code: 10071,
                description: "wrong last sequence: 5".into()
            })
        );
        assert!(parse_reply(b"{}").is_err());
        assert!(parse_reply(b"nope").is_err());
    }
}
