//! A Rust client of the keyledger service. One method per operation; every call is one NATS
//! request to `keyledger.v1.<ledger>.<operation>` (see [`crate::wire`] and API.md).

use std::time::Duration;

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use ledger::quote::Quote;

use crate::wire::*;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The service answered with an error.
    #[error("{code}: {message}")]
    Service {
        code: String,
        status: u16,
        message: String,
    },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("no keyledger service is listening on {0}")]
    NoResponders(String),
    #[error("nats: {0}")]
    Nats(String),
    #[error("undecodable reply: {0}")]
    Decode(String),
}

impl ClientError {
    /// The service's stable error code, if the service answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Service { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A successful reply: the result and the ledger sequence it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    pub result: T,
    pub seq: u64,
}

/// Per-call extras: an idempotency key and platform evidence.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub request_id: Option<String>,
    pub quote: Option<Quote>,
}

/// A client bound to one ledger and one bearer token.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    prefix: String,
    token: Option<String>,
    encoding: Encoding,
    timeout: Duration,
}

fn wire_quote(q: &Quote) -> WireQuote {
    WireQuote {
        platform: q.platform.clone(),
        nonce: B64(q.nonce.0.to_vec()),
        measurement: B64(q.measurement.0.to_vec()),
        transport_key: B64(q.transport_key.0.to_vec()),
        signature: B64(q.signature.to_vec()),
    }
}

impl Client {
    pub fn new(nats: async_nats::Client, ledger: &str) -> Client {
        Client {
            nats,
            prefix: subject_prefix(ledger),
            token: None,
            encoding: Encoding::Json,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// Speak MessagePack instead of JSON.
    pub fn with_msgpack(mut self) -> Client {
        self.encoding = Encoding::MsgPack;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sends raw bytes to an operation's subject and returns the raw reply (for tests of bad
    /// input and for other encodings).
    pub async fn raw(
        &self,
        op: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<async_nats::Message, ClientError> {
        let subject = format!("{}.{op}", self.prefix);
        let req = async_nats::Request::new()
            .payload(body.into())
            .headers(headers)
            .timeout(Some(self.timeout));
        self.nats
            .send_request(subject.clone(), req)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::TimedOut => ClientError::Timeout(self.timeout),
                async_nats::RequestErrorKind::NoResponders => ClientError::NoResponders(subject),
                _ => ClientError::Nats(e.to_string()),
            })
    }

    /// Calls `op` with `args` and the client's token.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
        opts: &CallOptions,
    ) -> Result<Answer<R>, ClientError> {
        let common = Common {
            token: self.token.clone(),
            request_id: opts.request_id.clone(),
            quote: opts.quote.as_ref().map(wire_quote),
        };
        let body = encode_request(self.encoding, &common, args);
        let mut headers = HeaderMap::new();
        if self.encoding == Encoding::MsgPack {
            headers.insert("Content-Type", MSGPACK);
        }
        let msg = self.raw(op, headers, body).await?;
        decode_reply(self.encoding, &msg)
    }

    async fn simple<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        Ok(self.call(op, args, &CallOptions::default()).await?.result)
    }

    pub async fn nonce(&self) -> Result<NonceResult, ClientError> {
        self.simple("nonce", &NoArgs {}).await
    }

    pub async fn create(&self, args: &CreateArgs) -> Result<KeyDescription, ClientError> {
        self.simple("create", args).await
    }

    pub async fn import(&self, args: &ImportArgs) -> Result<KeyDescription, ClientError> {
        self.simple("import", args).await
    }

    pub async fn describe(&self, key: &str) -> Result<KeyDescription, ClientError> {
        self.simple("describe", &KeyArgs { key: key.into() }).await
    }

    pub async fn list(&self, args: &ListArgs) -> Result<KeyList, ClientError> {
        self.simple("list", args).await
    }

    pub async fn rotate(&self, key: &str) -> Result<KeyDescription, ClientError> {
        self.simple("rotate", &KeyArgs { key: key.into() }).await
    }

    pub async fn set_versions(
        &self,
        args: &SetVersionsArgs,
    ) -> Result<KeyDescription, ClientError> {
        self.simple("set-versions", args).await
    }

    /// `op` is `activate`, `suspend` or `deactivate`.
    pub async fn change_state(
        &self,
        op: &str,
        key: &str,
        reason: Option<&str>,
    ) -> Result<KeyDescription, ClientError> {
        let args = StateArgs {
            key: key.into(),
            reason: reason.map(str::to_owned),
        };
        self.simple(op, &args).await
    }

    pub async fn compromise(&self, args: &CompromiseArgs) -> Result<KeyDescription, ClientError> {
        self.simple("compromise", args).await
    }

    pub async fn schedule_destroy(
        &self,
        key: &str,
        wait_s: Option<u64>,
    ) -> Result<KeyDescription, ClientError> {
        let args = ScheduleDestroyArgs {
            key: key.into(),
            wait_s,
        };
        self.simple("schedule-destroy", &args).await
    }

    pub async fn cancel_destroy(&self, key: &str) -> Result<KeyDescription, ClientError> {
        self.simple("cancel-destroy", &KeyArgs { key: key.into() })
            .await
    }

    pub async fn destroy(
        &self,
        key: &str,
        versions: Option<Vec<u32>>,
    ) -> Result<KeyDescription, ClientError> {
        let args = DestroyArgs {
            key: key.into(),
            versions,
        };
        self.simple("destroy", &args).await
    }

    pub async fn grant(&self, args: &GrantArgs) -> Result<GrantResult, ClientError> {
        self.simple("grant", args).await
    }

    pub async fn revoke(&self, key: &str, grant_id: &str) -> Result<KeyDescription, ClientError> {
        let args = RevokeArgs {
            key: key.into(),
            grant_id: grant_id.into(),
        };
        self.simple("revoke", &args).await
    }

    pub async fn get_material(
        &self,
        args: &GetMaterialArgs,
        opts: &CallOptions,
    ) -> Result<MaterialResult, ClientError> {
        Ok(self.call("get-material", args, opts).await?.result)
    }

    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<CiphertextResult, ClientError> {
        let args = EncryptArgs {
            key: key.into(),
            plaintext: B64(plaintext.to_vec()),
            aad: aad.map(|a| B64(a.to_vec())),
        };
        self.simple("encrypt", &args).await
    }

    pub async fn decrypt(
        &self,
        key: &str,
        ciphertext: &str,
        aad: Option<&[u8]>,
    ) -> Result<PlaintextResult, ClientError> {
        let args = DecryptArgs {
            key: key.into(),
            ciphertext: ciphertext.into(),
            aad: aad.map(|a| B64(a.to_vec())),
        };
        self.simple("decrypt", &args).await
    }

    pub async fn rewrap(
        &self,
        key: &str,
        ciphertext: &str,
        aad: Option<&[u8]>,
    ) -> Result<CiphertextResult, ClientError> {
        let args = DecryptArgs {
            key: key.into(),
            ciphertext: ciphertext.into(),
            aad: aad.map(|a| B64(a.to_vec())),
        };
        self.simple("rewrap", &args).await
    }

    pub async fn generate_data_key(
        &self,
        args: &DataKeyArgs,
        opts: &CallOptions,
    ) -> Result<DataKeyResult, ClientError> {
        Ok(self.call("generate-data-key", args, opts).await?.result)
    }

    pub async fn sign(&self, key: &str, message: &[u8]) -> Result<SignatureResult, ClientError> {
        let args = MessageArgs {
            key: key.into(),
            message: B64(message.to_vec()),
        };
        self.simple("sign", &args).await
    }

    pub async fn verify(
        &self,
        key: &str,
        message: &[u8],
        signature: &str,
    ) -> Result<bool, ClientError> {
        let args = VerifyArgs {
            key: key.into(),
            message: B64(message.to_vec()),
            signature: signature.into(),
        };
        let r: ValidResult = self.simple("verify", &args).await?;
        Ok(r.valid)
    }

    pub async fn mac(&self, key: &str, message: &[u8]) -> Result<MacResult, ClientError> {
        let args = MessageArgs {
            key: key.into(),
            message: B64(message.to_vec()),
        };
        self.simple("mac", &args).await
    }

    pub async fn verify_mac(
        &self,
        key: &str,
        message: &[u8],
        mac: &str,
    ) -> Result<bool, ClientError> {
        let args = VerifyMacArgs {
            key: key.into(),
            message: B64(message.to_vec()),
            mac: mac.into(),
        };
        let r: ValidResult = self.simple("verify-mac", &args).await?;
        Ok(r.valid)
    }

    /// `audit-key`: one page of a key's history (recorded as a `describe` use of the key).
    pub async fn audit_key(&self, args: &AuditKeyArgs) -> Result<AuditPage, ClientError> {
        self.simple("audit-key", args).await
    }

    /// `audit-principal`: one page of a principal's activity in the caller's tenant.
    pub async fn audit_principal(
        &self,
        args: &AuditPrincipalArgs,
    ) -> Result<AuditPage, ClientError> {
        self.simple("audit-principal", args).await
    }

    /// `audit-platform`: one page of what was done from an attested platform.
    pub async fn audit_platform(&self, args: &AuditPlatformArgs) -> Result<AuditPage, ClientError> {
        self.simple("audit-platform", args).await
    }

    /// `audit-refusals`: one page of the caller's tenant's refused requests.
    pub async fn audit_refusals(&self, args: &AuditRefusalsArgs) -> Result<AuditPage, ClientError> {
        self.simple("audit-refusals", args).await
    }

    pub async fn random(&self, bytes: usize) -> Result<Vec<u8>, ClientError> {
        let r: RandomResult = self.simple("random", &RandomArgs { bytes }).await?;
        Ok(r.random.0.clone())
    }
}

/// Decodes a reply body (either encoding), turning error replies into [`ClientError::Service`].
pub fn decode_reply<R: DeserializeOwned>(
    encoding: Encoding,
    msg: &async_nats::Message,
) -> Result<Answer<R>, ClientError> {
    let status = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
        .and_then(|v| v.as_str().parse::<u16>().ok());
    let value = encoding
        .decode_value(&msg.payload)
        .map_err(|e| ClientError::Decode(e.message))?;
    if let Some(err) = value.get("error") {
        let body: ErrorBody =
            serde_json::from_value(err.clone()).map_err(|e| ClientError::Decode(e.to_string()))?;
        return Err(ClientError::Service {
            code: body.code,
            status: status.unwrap_or(0),
            message: body.message,
        });
    }
    let seq = value
        .get("seq")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| ClientError::Decode("reply without seq".into()))?;
    let ok = value
        .get("ok")
        .cloned()
        .ok_or_else(|| ClientError::Decode("reply without ok".into()))?;
    let result = serde_json::from_value(ok).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(Answer { result, seq })
}
