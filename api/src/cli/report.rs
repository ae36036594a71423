//! `keyledger report`: the compliance report for a time range (DESIGN.md §6), as a
//! self-contained HTML page with charts, as JSON or as CSV.
//!
//! It replays and verifies the whole event stream itself (root key pinned with `--root-key`,
//! else trusted on first use), folds the verified events into
//! [`projector::report::ComplianceReport`] and renders it with [`api::report_render`]. The report
//! is always written; the exit status is 1 when the chain is broken, foreign messages are in the
//! stream or the stream does not protect history (the report says so), 0 otherwise, and 2 for
//! usage and infrastructure problems.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ledger::nats::reader::replay_each;
use ledger::{Bytes32, ChainState};
use projector::report::{ChainStatus, ReportBuilder};

use crate::{connect, Cli};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Html,
    Json,
    Csv,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Start of the range, inclusive: RFC 3339 (`2026-01-01T00:00:00Z`, `2026-01-01`) or
    /// milliseconds since the Unix epoch. Default: the beginning.
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive (same forms, or `now`). Default: now. Inventory, rotation,
    /// compromised and destroyed keys are as of this instant.
    #[arg(long)]
    to: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Html)]
    format: Format,
    /// Where to write the report (`-` for standard output).
    #[arg(long)]
    out: PathBuf,
    /// Pin the ledger's root public key (hex); without it the genesis key is trusted on first use.
    #[arg(long)]
    root_key: Option<String>,
}

/// Days from 1970-01-01 to the civil date `y-m-d` (H. Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an instant: milliseconds since the epoch, `now`, a date `YYYY-MM-DD` (midnight UTC)
/// or an RFC 3339 date-time with `Z` or a numeric offset and optional fractional seconds.
pub fn parse_instant(s: &str, now_ms: u64) -> Result<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().context("milliseconds out of range");
    }
    let bad = || {
        anyhow::anyhow!("{s:?} is not RFC 3339 (2026-01-31T12:00:00Z), a date (2026-01-31) or milliseconds since the epoch")
    };
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        let part = s.get(r).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if hh > 23 || mm > 59 || ss > 60 {
            return Err(bad());
        }
        ms += (hh * 3600 + mm * 60 + ss.min(59)) * 1000;
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            if i == start {
                return Err(bad());
            }
            // Milliseconds: the first three digits (more precision is dropped).
            let frac = &s[start..i];
            let digits: String = frac.chars().chain("000".chars()).take(3).collect();
            ms += digits.parse::<i64>().map_err(|_| bad())?;
        }
        match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                let off = (oh * 60 + om) * 60_000;
                ms -= if *sign == b'+' { off } else { -off };
            }
            _ => return Err(bad()),
        }
    }
    u64::try_from(ms).map_err(|_| anyhow::anyhow!("{s:?} is before 1970"))
}

fn progress_bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} replaying and verifying [{bar:40}] {pos}/{len} seq ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

pub async fn report(cli: &Cli, a: &ReportArgs) -> Result<ExitCode> {
    let now = ledger::sign::now_ms();
    let from = match &a.from {
        Some(s) => parse_instant(s, now).context("--from")?,
        None => 0,
    };
    let to = match &a.to {
        Some(s) => parse_instant(s, now).context("--to")?,
        None => now,
    };
    if from >= to {
        bail!("--from must be before --to");
    }
    let pinned = match &a.root_key {
        Some(h) => Some(Bytes32::from_hex(h).context("--root-key must be 64 hex digits")?),
        None => None,
    };
    let conn = connect(cli).await?;
    let stream_problem = conn.event_stream(false).await.err().map(|e| e.to_string());
    conn.event_stream(true).await?;
    let mut state = ChainState::new(conn.names.ledger.clone(), pinned);
    let mut builder = ReportBuilder::new((from, to));
    let pb = progress_bar(cli.json || a.out.as_os_str() == "-");
    let t = Instant::now();
    let mut tree = ledger::merkle::Tree::new();
    let mut writers: Vec<Bytes32> = Vec::new();
    let replay = replay_each(
        &conn,
        &mut state,
        |seq, target| {
            pb.set_length(target);
            pb.set_position(seq);
        },
        |v| {
            builder.apply(v);
            // The Merkle tree and the enrolled writers, to judge the latest checkpoint.
            tree.push_leaf(v.entry());
            if let ledger::EventBody::SignerEnrolled(e) = &v.event().body {
                if e.role == ledger::event::SignerRole::Writer {
                    writers.push(e.public_key);
                }
            }
        },
    )
    .await?;
    pb.finish_and_clear();
    let chain = ChainStatus::from_replay(&state, &replay, pinned.is_some(), stream_problem);
    let ok = chain.ok;
    let mut report = builder.finish(chain);
    report.generated_ms = Some(ledger::sign::now_ms());
    // The latest published checkpoint, judged against the log just replayed.
    let latest = api::audit::latest_note(&conn, &conn.names.checkpoint_subject())
        .await
        .ok()
        .flatten();
    report.checkpoint = latest.map(|note| {
        let origin = conn.names.origin();
        let keys = api::audit::log_keys(&origin, &writers);
        let check = api::audit::check_checkpoint(&note, &origin, &keys, &[], &tree);
        let parsed = ledger::checkpoint::Note::parse(&note)
            .ok()
            .and_then(|n| ledger::checkpoint::Checkpoint::parse(n.text()).ok());
        projector::report::CheckpointStatus {
            size: parsed.as_ref().map_or(0, |c| c.size),
            root: parsed
                .as_ref()
                .map_or_else(String::new, |c| hex::encode(c.root)),
            verified: check.is_ok(),
            seq: None,
            time_ms: None,
            detail: serde_json::to_string(&check).unwrap_or_default(),
        }
    });
    // A checkpoint the log no longer matches (truncated, forked) fails the report too.
    let ok = ok && report.checkpoint.as_ref().is_none_or(|c| c.verified);

    let text = match a.format {
        Format::Html => api::report_render::to_html(&report),
        Format::Json => api::report_render::to_json(&report)?,
        Format::Csv => api::report_render::to_csv(&report),
    };
    if a.out.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    } else {
        std::fs::write(&a.out, text.as_bytes())
            .with_context(|| format!("writing {}", a.out.display()))?;
    }

    let ch = &report.chain;
    if cli.json {
        super::print_json(&serde_json::json!({
            "ledger": report.ledger,
            "ok": ok,
            "out": a.out,
            "format": format!("{:?}", a.format).to_lowercase(),
            "from_ms": from,
            "to_ms": to,
            "verified": ch.events_verified,
            "foreign": ch.foreign_total,
            "chain_break": ch.chain_break.as_ref().map(|b| b.seq),
            "stream_problem": ch.stream_problem,
            "seconds": t.elapsed().as_secs_f64(),
        }))?;
    } else {
        // Progress and status go to stderr, so `--out -` keeps stdout for the report.
        eprintln!(
            "ledger {}: {} events verified in {:.2}s; report {} → {}",
            report.ledger,
            ch.events_verified,
            t.elapsed().as_secs_f64(),
            format!("{:?}", a.format).to_lowercase(),
            a.out.display()
        );
        for f in &ch.foreign {
            eprintln!("  FOREIGN  seq {}: {}", f.seq, f.reason);
        }
        if let Some(b) = &ch.chain_break {
            eprintln!("  BROKEN   {}", b.error);
        }
        if let Some(p) = &ch.stream_problem {
            eprintln!("  PROBLEM  {p}");
        }
        if !ok {
            eprintln!("FAILED: the chain does not verify cleanly (the report says so)");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_instant;

    #[test]
    fn instants() {
        let now = 1_234;
        assert_eq!(parse_instant("now", now).unwrap(), now);
        assert_eq!(
            parse_instant("1700000000000", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_instant("1970-01-01", now).unwrap(), 0);
        assert_eq!(
            parse_instant("2000-02-29T00:00:00Z", now).unwrap(),
            951_782_400_000
        );
        assert_eq!(
            parse_instant("2027-01-15T08:00:00.999Z", now).unwrap(),
            1_800_000_000_999
        );
        assert_eq!(
            parse_instant("2027-01-15T10:00:00.9+02:00", now).unwrap(),
            1_800_000_000_900
        );
        assert_eq!(
            parse_instant("2027-01-15T07:30:00-00:30", now).unwrap(),
            1_800_000_000_000
        );
        for bad in [
            "",
            "2027-13-01",
            "2027-02-29",
            "2027-01-15T08:00:00",
            "2027-01-15T08:00Z",
            "2027-01-15T08:00:00.Z",
            "yesterday",
            "1969-12-31",
        ] {
            assert!(parse_instant(bad, now).is_err(), "{bad:?}");
        }
    }
}
