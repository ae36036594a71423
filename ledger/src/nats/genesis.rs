//! Initialising a ledger: streams, genesis and the first writer's enrolment.

use crate::bytes32::Bytes32;
use crate::entry::signer_id;
use crate::event::{Actor, LedgerCreated, SignerEnrolled, SignerRole};
use crate::ids::RequestId;
use crate::nats::appender::{AppendError, Appender, AppenderConfig, Receipt};
use crate::nats::stream::{LedgerConn, StreamError, StreamSettings};
use crate::sign::{Draft, EventSigner};
use crate::verify::ChainState;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("ledger {ledger} already holds {events} messages; refusing to initialise it again")]
    AlreadyInitialised { ledger: String, events: u64 },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Creates the streams and appends, as one atomic batch signed by the root key, the genesis
/// event (pinning the root key and the master key's id) and the enrolment of the first writer.
pub async fn initialise(
    conn: &LedgerConn,
    settings: &StreamSettings,
    root: EventSigner,
    writer_public: Bytes32,
    kek_id: Bytes32,
) -> Result<Vec<Receipt>, InitError> {
    conn.create_streams(settings).await?;
    let events = conn.last_seq().await?;
    if events != 0 {
        return Err(InitError::AlreadyInitialised {
            ledger: conn.names.ledger.to_string(),
            events,
        });
    }
    let root_key = root.public_key();
    let state = ChainState::new(conn.names.ledger.clone(), Some(root_key));
    let appender = Appender::start(conn.clone(), root, state, AppenderConfig::default()).await?;
    let actor = Actor::system("init");
    let drafts = vec![
        Draft {
            request_id: RequestId::random(),
            actor: actor.clone(),
            context: None,
            body: LedgerCreated { root_key, kek_id }.into(),
        },
        Draft {
            request_id: RequestId::random(),
            actor,
            context: None,
            body: SignerEnrolled {
                signer: signer_id(&writer_public.0),
                public_key: writer_public,
                role: SignerRole::Writer,
                label: "writer-1".into(),
            }
            .into(),
        },
    ];
    Ok(appender.append_all(drafts).await?)
}
