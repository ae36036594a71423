//! Plain-text result tables for the benchmark harness.

use std::time::Duration;

use crate::baseline::{Latency, Rate};

/// One line of a benchmark table.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured, e.g. "raw pipelined publish (window 256)".
    pub name: String,
    /// The measurement itself.
    pub rate: Rate,
    /// The reference this row is compared with: its name and its events/s.
    pub baseline: Option<(String, f64)>,
}

impl Row {
    /// A row without a baseline.
    pub fn new(name: impl Into<String>, rate: Rate) -> Self {
        Self {
            name: name.into(),
            rate,
            baseline: None,
        }
    }

    /// A row compared with `baseline` (its name and rate).
    pub fn with_baseline(name: impl Into<String>, rate: Rate, baseline: &Row) -> Self {
        Self {
            name: name.into(),
            rate,
            baseline: Some((baseline.name.clone(), baseline.rate.per_sec())),
        }
    }

    /// `rate / baseline`, if there is a baseline with a positive rate.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, base)| *base > 0.0)
            .map(|(_, base)| self.rate.per_sec() / base)
    }
}

/// Column headers, in order.
const HEADERS: [&str; 6] = [
    "measurement",
    "events",
    "seconds",
    "events/s",
    "baseline",
    "ratio vs baseline",
];

/// Formats `rows` as an aligned plain-text table under `title`. Text columns are
/// left-aligned, numbers right-aligned; a missing baseline shows as `-`.
pub fn format_table(title: &str, rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            let (base_name, ratio) = match (&row.baseline, row.ratio()) {
                (Some((name, _)), Some(ratio)) => (name.clone(), format!("{ratio:.2}x")),
                (Some((name, _)), None) => (name.clone(), "-".to_owned()),
                (None, _) => ("-".to_owned(), "-".to_owned()),
            };
            [
                row.name.clone(),
                row.rate.events.to_string(),
                format!("{:.3}", row.rate.elapsed.as_secs_f64()),
                format!("{:.0}", row.rate.per_sec()),
                base_name,
                ratio,
            ]
        })
        .collect();
    // Columns 1..=3 and 5 are numeric.
    render_aligned(
        title,
        &HEADERS,
        &[false, true, true, true, false, true],
        &cells,
    )
}

/// An aligned plain-text table: `title`, `headers`, a rule, then `cells`; column `i` is
/// right-aligned when `right[i]`.
fn render_aligned<const N: usize>(
    title: &str,
    headers: &[&str; N],
    right: &[bool; N],
    cells: &[[String; N]],
) -> String {
    let mut widths = headers.map(str::len);
    for line in cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |line: &[String]| -> String {
        line.iter()
            .zip(widths.iter().zip(right))
            .map(|(cell, (&width, &right))| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let header = render(&headers.map(str::to_owned));
    let rule = "-".repeat(header.chars().count());
    let mut out = format!("{title}\n{header}\n{rule}\n");
    for line in cells {
        out.push_str(&render(line));
        out.push('\n');
    }
    out
}

/// One line of the service table: throughput of many concurrent clients and latency of one
/// sequential client, for the same operation.
#[derive(Clone, Debug)]
pub struct ServiceRow {
    /// What was measured, e.g. "keyledger encrypt".
    pub name: String,
    /// Throughput with many concurrent clients.
    pub rate: Rate,
    /// Median latency of one sequential client.
    pub p50: Duration,
    /// 99th percentile latency of one sequential client.
    pub p99: Duration,
    /// The reference: its name, ops/s and p50.
    pub baseline: Option<(String, f64, Duration)>,
}

impl ServiceRow {
    /// A row without a baseline.
    pub fn new(name: impl Into<String>, rate: Rate, latency: &Latency) -> Self {
        Self {
            name: name.into(),
            rate,
            p50: latency.p50(),
            p99: latency.p99(),
            baseline: None,
        }
    }

    /// The same row compared with `baseline`.
    pub fn against(mut self, baseline: &ServiceRow) -> Self {
        self.baseline = Some((baseline.name.clone(), baseline.rate.per_sec(), baseline.p50));
        self
    }

    /// `ops/s / baseline ops/s`, if there is a baseline with a positive rate.
    pub fn rate_ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, rate, _)| *rate > 0.0)
            .map(|(_, rate, _)| self.rate.per_sec() / rate)
    }

    /// `p50 / baseline p50`, if there is a baseline with a positive p50.
    pub fn p50_ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, _, p50)| !p50.is_zero())
            .map(|(_, _, p50)| self.p50.as_secs_f64() / p50.as_secs_f64())
    }
}

const SERVICE_HEADERS: [&str; 9] = [
    "measurement",
    "ops",
    "seconds",
    "ops/s",
    "p50 us",
    "p99 us",
    "baseline",
    "ops/s ratio",
    "p50 ratio",
];

/// Formats service `rows` like [`format_table`]; latencies in microseconds.
pub fn format_service_table(title: &str, rows: &[ServiceRow]) -> String {
    let ratio = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}x"));
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            [
                row.name.clone(),
                row.rate.events.to_string(),
                format!("{:.3}", row.rate.elapsed.as_secs_f64()),
                format!("{:.0}", row.rate.per_sec()),
                row.p50.as_micros().to_string(),
                row.p99.as_micros().to_string(),
                row.baseline
                    .as_ref()
                    .map_or("-".to_owned(), |(name, _, _)| name.clone()),
                ratio(row.rate_ratio()),
                ratio(row.p50_ratio()),
            ]
        })
        .collect();
    render_aligned(
        title,
        &SERVICE_HEADERS,
        &[false, true, true, true, true, true, false, true, true],
        &cells,
    )
}

/// Prints [`format_service_table`] to stdout.
pub fn print_service_table(title: &str, rows: &[ServiceRow]) {
    print!("{}", format_service_table(title, rows));
}

/// Prints [`format_table`] to stdout.
pub fn print_table(title: &str, rows: &[Row]) {
    print!("{}", format_table(title, rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_is_aligned_and_shows_ratio() {
        let base = Row::new(
            "raw",
            Rate {
                events: 1000,
                elapsed: Duration::from_secs(1),
            },
        );
        let other = Row::with_baseline(
            "ledger append",
            Rate {
                events: 500,
                elapsed: Duration::from_secs(1),
            },
            &base,
        );
        let table = format_table("t", &[base, other]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "t");
        assert!(lines[1].starts_with("measurement  "));
        assert!(lines[3].starts_with("raw "));
        assert!(lines[4].contains("0.50x"), "{table}");
        assert!(lines[4].contains("  raw  "), "{table}");
        // Numeric columns end at the same offset.
        let end = |l: &str, n: &str| l.find(n).map(|i| i + n.len());
        assert_eq!(end(lines[3], "1000"), end(lines[4], " 500"));
    }

    #[test]
    fn service_table_shows_both_ratios() {
        let lat = |us: u64| Latency::from_samples(vec![Duration::from_micros(us)]);
        let rate = |events| Rate {
            events,
            elapsed: Duration::from_secs(1),
        };
        let base = ServiceRow::new("raw + ack", rate(40_000), &lat(200));
        let row = ServiceRow::new("encrypt", rate(20_000), &lat(300)).against(&base);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(row.rate_ratio(), 0.5), "{:?}", row.rate_ratio());
        assert!(close(row.p50_ratio(), 1.5), "{:?}", row.p50_ratio());
        let table = format_service_table("s", &[base, row]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("measurement  "), "{table}");
        assert!(
            lines[3].ends_with('-') && !lines[3].contains('x'),
            "{table}"
        );
        assert!(lines[4].ends_with("0.50x      1.50x"), "{table}");
    }
}
