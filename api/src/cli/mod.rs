//! The service side of the `keyledger` binary: `serve` (a service replica), operator
//! administration appended straight to the ledger (`issuer trust/revoke`, `platform
//! enrol/revoke`), issuer keys and tokens (`issuer new`, `token issue`), and `key <verb>`, one
//! verb per service operation, each one call of [`api::client::Client`].
//!
//! Exit codes: 0 success; 1 the service refused or failed the request (`error: <code>:
//! <message>` on stderr), or a `verify`/`verify-mac` that does not hold; 2 usage and
//! infrastructure problems (no NATS, no service, unreadable files: the binary's `anyhow` path).
//!
//! This module holds no secrets longer than one command: key files and keystores are opened,
//! used and dropped (zeroized); material released by the service arrives sealed to a transport
//! key generated for the one request and is opened here, never on the wire.

/// `println!` that returns an `io::Result` instead of panicking when stdout is closed
/// (`keyledger ... | head`); `main` exits quietly on a broken pipe. Formats straight into the
/// locked stdout (no intermediate `String`, which matters for material and plaintexts).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let mut out = ::std::io::stdout().lock();
        writeln!(out, $($arg)*).and_then(|()| out.flush())
    }};
}

pub mod admin;
pub mod audit;
pub mod audit_views;
pub mod key;
pub mod report;
pub mod serve;
pub mod tokens;

use std::time::{SystemTime, UNIX_EPOCH};

use ledger::nats::{Appender, AppenderConfig, LedgerConn, Receipt};
use ledger::sign::{Draft, EventSigner};
use ledger::{EventBody, RequestId};

use ledger::event::Actor;

/// Prints a JSON value on one line.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(v)?)?;
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC, proleptic Gregorian).
pub fn utc(ms: u64) -> String {
    // The report's formatter, without the milliseconds.
    let full = api::report_render::utc_ms(ms);
    format!("{}Z", &full[..full.len() - 5])
}

/// Opens a writer on the ledger with the keystore's writer key, root pinned to the keystore's.
pub async fn open_writer(
    conn: &LedgerConn,
    secrets: &ledger::custody::Secrets,
) -> anyhow::Result<Appender> {
    let (appender, report) = Appender::open(
        conn.clone(),
        EventSigner::new(secrets.writer.clone()),
        Some(secrets.root_public()),
        AppenderConfig::default(),
        false,
    )
    .await?;
    for f in &report.foreign {
        eprintln!("warning: foreign message at seq {}: {}", f.seq, f.reason);
    }
    Ok(appender)
}

/// Appends one operator event (actor `system:operator`, a fresh request id).
pub async fn append_operator_event(
    appender: &Appender,
    body: impl Into<EventBody>,
) -> anyhow::Result<Receipt> {
    Ok(appender
        .append(Draft {
            request_id: RequestId::random(),
            actor: Actor::system("operator"),
            context: None,
            body: body.into(),
        })
        .await?)
}

/// Prints where an operator event was stored.
pub fn print_receipt(json: bool, what: &str, r: &Receipt) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({
            "event": what,
            "seq": r.seq,
            "index": r.index,
            "hash": r.hash.to_hex(),
        }))
    } else {
        outln!(
            "{what}: seq {} index {} hash {}",
            r.seq,
            r.index,
            r.hash.short()
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (1_800_000_000_999, "2027-01-15T08:00:00Z"),
            (4_102_444_799_000, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(utc(ms), want, "{ms}");
        }
    }
}
