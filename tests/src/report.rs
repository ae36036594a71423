//! Plain-text result tables for the benchmark harness.

use crate::baseline::Rate;

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
    let mut widths = HEADERS.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Columns 1..=3 and 5 are numeric.
    let right = [false, true, true, true, false, true];
    let render = |line: &[String]| -> String {
        line.iter()
            .zip(widths.iter().zip(right))
            .map(|(cell, (&width, right))| {
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
    let header = render(&HEADERS.map(str::to_owned));
    let rule = "-".repeat(header.chars().count());
    let mut out = format!("{title}\n{header}\n{rule}\n");
    for line in &cells {
        out.push_str(&render(line));
        out.push('\n');
    }
    out
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
}
