//! `keyledger activity <key|principal|platform|refusals>`: the service's audit views
//! (`audit-key`, `audit-principal`, `audit-platform`, `audit-refusals`), each one call of
//! [`api::client::Client`] per page.
//!
//! Output is a table (sequence, time in UTC, event, operation, principal, platform, detail) by
//! default, the page as JSON with `--json`. `--all` follows `next` to the end, bounded by
//! `--max-pages`. Every view answers records of the caller's tenant only.
//!
//! `activity key` is recorded as a `describe` use of the key, so each page adds one record to
//! the very history it reads; with `--all` the walk stops at the ledger sequence of the first
//! page's answer (the history as it stood when the walk began), so it always ends.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use api::client::{CallOptions, Client, ClientError};
use api::wire::*;

use super::key::TOKEN_ENV;
use super::{print_json, utc};
use crate::{connect, Cli};

#[derive(Args)]
pub struct ActivityCommand {
    /// Bearer token (`key`: any role that may describe the key; `principal`, `platform`,
    /// `refusals`: the role tenant-admin or auditor).
    #[arg(long, global = true, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait for each of the service's replies.
    #[arg(long, global = true, default_value_t = 30)]
    timeout_s: u64,
    #[command(subcommand)]
    view: ActivityView,
}

#[derive(Subcommand)]
pub enum ActivityView {
    /// History of one key: every version, state change, grant, use, access and refusal
    /// (recorded as a describe of the key).
    Key {
        /// Key id.
        key: String,
        #[command(flatten)]
        range: RangeOpts,
    },
    /// Everything one principal (a token's `sub`) did or was refused, in your tenant.
    Principal {
        /// The principal.
        principal: String,
        #[command(flatten)]
        range: RangeOpts,
    },
    /// Everything done from one attested platform, in your tenant.
    Platform {
        /// Platform id (as enrolled).
        platform: String,
        #[command(flatten)]
        range: RangeOpts,
    },
    /// Refused requests in your tenant, with their codes and counts.
    Refusals {
        #[command(flatten)]
        range: RangeOpts,
    },
}

#[derive(Args, Clone)]
pub struct RangeOpts {
    /// Only records at or after this time, ms since the epoch.
    #[arg(long)]
    from_ms: Option<u64>,
    /// Only records before this time, ms since the epoch.
    #[arg(long)]
    to_ms: Option<u64>,
    /// Only records of the last DURATION: a number with s, m, h or d (`90s`, `15m`, `1h`, `7d`);
    /// sets --from-ms from this machine's clock.
    #[arg(long, value_name = "DURATION", conflicts_with = "from_ms", value_parser = parse_since)]
    since: Option<u64>,
    /// Continue after this record (a page's `next`, `<seq>.<sub>`).
    #[arg(long)]
    after: Option<String>,
    /// Page size (service default 100, at most 1000).
    #[arg(long)]
    limit: Option<usize>,
    /// Follow `next` until the last page.
    #[arg(long)]
    all: bool,
    /// With --all: stop after this many pages.
    #[arg(long, default_value_t = 1000)]
    max_pages: usize,
}

/// `90s`, `15m`, `1h`, `7d` (or plain seconds) as milliseconds.
fn parse_since(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?}: expected a number with s, m, h or d, e.g. 1h");
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .and_then(|x| x.checked_mul(1000))
        .ok_or_else(bad)
}

/// Runs an activity view. A service error prints `error: <code>: <message>` on stderr and exits
/// 1; other failures (no NATS, no service) are the caller's exit-2 errors.
pub async fn activity(cli: &Cli, a: &ActivityCommand) -> Result<ExitCode> {
    match run(cli, a).await {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Service { code, message, .. }) => {
                eprintln!("error: {code}: {message}");
                if cli.json {
                    print_json(&json!({"error": {"code": code, "message": message}}))?;
                }
                Ok(ExitCode::from(1))
            }
            _ => Err(e),
        },
    }
}

/// The selection fields every view shares.
struct Selection {
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn page(
    client: &Client,
    view: &ActivityView,
    s: Selection,
) -> Result<(AuditPage, u64), ClientError> {
    let o = CallOptions::default();
    let Selection {
        from_ms,
        to_ms,
        after,
        limit,
    } = s;
    let a = match view {
        ActivityView::Key { key, .. } => {
            let args = AuditKeyArgs {
                key: key.clone(),
                from_ms,
                to_ms,
                after,
                limit,
            };
            client.call("audit-key", &args, &o).await?
        }
        ActivityView::Principal { principal, .. } => {
            let args = AuditPrincipalArgs {
                principal: principal.clone(),
                from_ms,
                to_ms,
                after,
                limit,
            };
            client.call("audit-principal", &args, &o).await?
        }
        ActivityView::Platform { platform, .. } => {
            let args = AuditPlatformArgs {
                platform: platform.clone(),
                from_ms,
                to_ms,
                after,
                limit,
            };
            client.call("audit-platform", &args, &o).await?
        }
        ActivityView::Refusals { .. } => {
            let args = AuditRefusalsArgs {
                from_ms,
                to_ms,
                after,
                limit,
            };
            client.call("audit-refusals", &args, &o).await?
        }
    };
    Ok((a.result, a.seq))
}

async fn run(cli: &Cli, a: &ActivityCommand) -> Result<ExitCode> {
    let Some(token) = a.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        bail!("give --token TOKEN or set {TOKEN_ENV}");
    };
    let range = match &a.view {
        ActivityView::Key { range, .. }
        | ActivityView::Principal { range, .. }
        | ActivityView::Platform { range, .. }
        | ActivityView::Refusals { range } => range.clone(),
    };
    if range.all && range.max_pages == 0 {
        bail!("--max-pages must be at least 1");
    }
    let from_ms = match range.since {
        Some(d) => Some(
            super::now_s()
                .checked_mul(1000)
                .context("clock")?
                .saturating_sub(d),
        ),
        None => range.from_ms,
    };
    let conn = connect(cli).await?;
    let client = Client::new(conn.client.clone(), conn.names.ledger.as_str())
        .with_timeout(Duration::from_secs(a.timeout_s.max(1)))
        .with_token(token);
    let is_key = matches!(a.view, ActivityView::Key { .. });
    let select = |after: Option<String>| Selection {
        from_ms,
        to_ms: range.to_ms,
        after,
        limit: range.limit,
    };

    let (first, first_seq) = page(&client, &a.view, select(range.after.clone())).await?;
    let mut records = first.records;
    let mut next = first.next;
    if range.all {
        // `activity key` records a use of the key per page: stop at the history as it stood
        // when the first page was read, so the walk cannot feed itself.
        let bound = is_key.then_some(first_seq);
        let mut pages = 1;
        while let Some(after) = next.take() {
            if pages >= range.max_pages {
                eprintln!("(stopped after {pages} pages, --max-pages)");
                next = Some(after);
                break;
            }
            let (p, _) = page(&client, &a.view, select(Some(after))).await?;
            pages += 1;
            let mut reached_bound = false;
            for r in p.records {
                if bound.is_some_and(|b| r.seq >= b) {
                    reached_bound = true;
                    break;
                }
                records.push(r);
            }
            next = if reached_bound { None } else { p.next };
        }
    }
    let page = AuditPage { records, next };
    if cli.json {
        print_json(&page)?;
        return Ok(ExitCode::SUCCESS);
    }
    show(&page, !is_key)?;
    if let Some(next) = &page.next {
        eprintln!("(more: --after {next})");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(p: &AuditPage, with_key: bool) -> Result<()> {
    let key_col = |k: &str| {
        if with_key {
            format!("{k:<26} ")
        } else {
            String::new()
        }
    };
    outln!(
        "{:>10}  {:<20} {:<18} {:<18} {}{:<20} {:<14} DETAIL",
        "SEQ",
        "TIME (UTC)",
        "EVENT",
        "OPERATION",
        key_col("KEY"),
        "PRINCIPAL",
        "PLATFORM"
    )?;
    for r in &p.records {
        let seq = if r.sub == 0 {
            r.seq.to_string()
        } else {
            format!("{}.{}", r.seq, r.sub)
        };
        let mut detail = r.detail.clone();
        if let Some(n) = r.refusal_count.filter(|n| *n > 1) {
            detail.push_str(&format!(" (x{n})"));
        }
        outln!(
            "{:>10}  {:<20} {:<18} {:<18} {}{:<20} {:<14} {}",
            seq,
            utc(r.time_ms),
            r.event,
            r.operation.map_or("-".to_owned(), |o| o.to_string()),
            key_col(r.key.as_deref().unwrap_or("-")),
            r.principal,
            r.platform.as_deref().unwrap_or("-"),
            detail
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_durations() {
        assert_eq!(parse_since("90s"), Ok(90_000));
        assert_eq!(parse_since("15m"), Ok(900_000));
        assert_eq!(parse_since("1h"), Ok(3_600_000));
        assert_eq!(parse_since("7d"), Ok(604_800_000));
        assert_eq!(parse_since("30"), Ok(30_000));
        for bad in ["", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
