//! The data-key store: sealed DEKs in their own stream, erasable one by one.
//!
//! Destroying a key version erases its DEK message with JetStream's secure erase (the stored
//! record is overwritten), so the version's material, still present in the event stream as
//! ciphertext, can never be opened again, while the event chain is untouched.

use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;

use crate::bytes32::Bytes32;
use crate::ids::KeyId;
use crate::nats::stream::LedgerConn;
use crate::seal::SealedDek;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DekError {
    #[error("data key {dek_id} not found (destroyed or never stored)")]
    NotFound { dek_id: Bytes32 },
    #[error("stored data key is corrupt: {0}")]
    Corrupt(String),
    #[error("nats: {0}")]
    Nats(String),
}

fn nats_err(e: impl std::fmt::Display) -> DekError {
    DekError::Nats(e.to_string())
}

/// Sealed DEKs of one ledger.
#[derive(Clone)]
pub struct DekStore {
    conn: LedgerConn,
}

impl DekStore {
    pub fn new(conn: LedgerConn) -> DekStore {
        DekStore { conn }
    }

    fn subject(&self, key: &KeyId, dek_id: &Bytes32) -> String {
        format!(
            "keyledger.{}.dek.{}.{}",
            self.conn.names.ledger,
            key,
            dek_id.to_hex()
        )
    }

    /// Stores a sealed DEK durably (idempotent by DEK id). Returns its sequence and whether
    /// the store already held a DEK of that id (then `dek` was *not* stored: use
    /// [`DekStore::get`] to fetch the one that was).
    pub async fn put(&self, key: &KeyId, dek: &SealedDek) -> Result<(u64, bool), DekError> {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from(dek.to_bytes()))
            .message_id(dek.dek_id.to_hex());
        let ack = self
            .conn
            .js
            .send_publish(self.subject(key, &dek.dek_id), msg)
            .await
            .map_err(nats_err)?
            .await
            .map_err(nats_err)?;
        if ack.duplicate {
            return Ok((ack.sequence, true));
        }
        // Outside the duplicate window a second DEK of the same id would be stored after the
        // first; `get` returns the last one, so check that none was there before.
        Ok((ack.sequence, false))
    }

    async fn find(&self, key: &KeyId, dek_id: &Bytes32) -> Result<Option<(u64, Bytes)>, DekError> {
        let stream = self
            .conn
            .js
            .get_stream(self.conn.names.dek_stream())
            .await
            .map_err(nats_err)?;
        match stream
            .get_last_raw_message_by_subject(&self.subject(key, dek_id))
            .await
        {
            Ok(m) => Ok(Some((m.sequence, m.payload))),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_err(e)),
        }
    }

    /// Fetches a sealed DEK.
    pub async fn get(&self, key: &KeyId, dek_id: &Bytes32) -> Result<SealedDek, DekError> {
        let (_, payload) = self
            .find(key, dek_id)
            .await?
            .ok_or(DekError::NotFound { dek_id: *dek_id })?;
        SealedDek::from_bytes(&payload).map_err(|e| DekError::Corrupt(e.to_string()))
    }

    /// Securely erases a sealed DEK (every stored copy under its subject). Returns how many
    /// messages were erased; erasing an absent DEK is not an error (destroy is idempotent).
    pub async fn erase(&self, key: &KeyId, dek_id: &Bytes32) -> Result<u32, DekError> {
        let stream = self
            .conn
            .js
            .get_stream(self.conn.names.dek_stream())
            .await
            .map_err(nats_err)?;
        let mut erased = 0;
        // Bounded: a DEK subject only ever holds the one message `put` wrote (dedupe by id),
        // and a retried put after the duplicate window could add one more.
        for _ in 0..16 {
            match self.find(key, dek_id).await? {
                None => return Ok(erased),
                Some((seq, _)) => {
                    // `delete_message` asks for a secure erase (no `no_erase`): the record is
                    // overwritten on disk, not just marked deleted.
                    stream.delete_message(seq).await.map_err(nats_err)?;
                    erased += 1;
                }
            }
        }
        Err(DekError::Nats(format!(
            "data key {dek_id} still present after 16 erasures"
        )))
    }
}
