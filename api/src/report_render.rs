//! Rendering a [`ComplianceReport`] as JSON, CSV and a self-contained HTML page.
//!
//! - [`to_json`]: the report struct, pretty-printed (it round-trips through serde).
//! - [`to_csv`]: one flat table, `section,item,metric,value,seqs` (RFC 4180: CRLF line ends,
//!   fields with commas, quotes or line breaks quoted, quotes doubled). `seqs` lists the
//!   evidence's stream sequences separated by spaces; when a figure has more than
//!   [`projector::report::MAX_SEQS`], the list ends with `… (<listed> of <total>)`. Text cells
//!   that a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, tab or CR)
//!   are prefixed with `'`: principals, reasons and names come from callers.
//! - [`to_html`]: one HTML file with inline CSS and hand-drawn inline SVG charts; no script,
//!   no external font, image or style sheet, and a Content-Security-Policy that forbids
//!   loading anything, so it shows the same offline and can never call out. Every string that
//!   comes from events (principals, reasons, names, codes) is HTML-escaped.

use std::fmt::Write as _;

use projector::report::{
    AccessRow, ComplianceReport, Count, Evidence, InventoryGroup, RefusalGroup,
};

/// The report as pretty-printed JSON.
pub fn to_json(r: &ComplianceReport) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(r)
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, proleptic Gregorian).
pub fn utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (H. Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A duration in ms as a short human string (`3d 4h`, `1.5s`).
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 86_400 {
        format!("{}d {}h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, ms % 1000 / 100)
    }
}

// ---- CSV ------------------------------------------------------------------------------------

/// The CSV header.
pub const CSV_HEADER: [&str; 5] = ["section", "item", "metric", "value", "seqs"];

fn csv_text(s: &str) -> String {
    // Neutralise spreadsheet formulas in caller-controlled text.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn seq_list(e: &Evidence) -> String {
    let mut s = e
        .seqs
        .iter()
        .map(|q| q.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    if e.truncated() {
        let _ = write!(s, " … ({} of {})", e.seqs.len(), e.total);
    }
    s
}

struct Csv(String);

impl Csv {
    fn row(&mut self, section: &str, item: &str, metric: &str, value: &str, seqs: &Evidence) {
        let cells = [
            csv_text(section),
            csv_text(item),
            csv_text(metric),
            csv_text(value),
            csv_text(&seq_list(seqs)),
        ];
        self.0.push_str(&cells.join(","));
        self.0.push_str("\r\n");
    }

    fn one(&mut self, section: &str, item: &str, metric: &str, value: &str, seq: u64) {
        self.row(section, item, metric, value, &Evidence::from_seqs([seq]));
    }

    fn plain(&mut self, section: &str, item: &str, metric: &str, value: &str) {
        self.row(section, item, metric, value, &Evidence::default());
    }
}

/// The report as one flat CSV table (see the module documentation).
pub fn to_csv(r: &ComplianceReport) -> String {
    let mut c = Csv(String::new());
    c.0.push_str(&CSV_HEADER.join(","));
    c.0.push_str("\r\n");

    c.plain("report", "", "format", &r.format);
    c.plain("report", "", "ledger", &r.ledger);
    c.plain("report", "", "from_ms", &r.range.from_ms.to_string());
    c.plain("report", "", "to_ms", &r.range.to_ms.to_string());
    c.plain("report", "", "from_utc", &utc_ms(r.range.from_ms));
    c.plain("report", "", "to_utc", &utc_ms(r.range.to_ms));
    if let Some(g) = r.generated_ms {
        c.plain("report", "", "generated_utc", &utc_ms(g));
    }
    for f in &r.summary {
        c.row(
            "summary",
            &f.label,
            &f.metric,
            &f.value.to_string(),
            &f.evidence,
        );
    }

    let ch = &r.chain;
    c.plain("chain", "", "ok", &ch.ok.to_string());
    c.plain(
        "chain",
        "",
        "events_verified",
        &ch.events_verified.to_string(),
    );
    c.plain("chain", "", "last_seq", &ch.last_seq.to_string());
    c.plain(
        "chain",
        "",
        "root_key",
        ch.root_key.as_deref().unwrap_or(""),
    );
    c.plain("chain", "", "root_pinned", &ch.root_pinned.to_string());
    if let Some(h) = &ch.head {
        c.one("chain", "head", "index", &h.index.to_string(), h.seq);
        c.one("chain", "head", "hash", &h.hash, h.seq);
    }
    c.row(
        "chain",
        "",
        "foreign_messages",
        &ch.foreign_total.to_string(),
        &Evidence::from_seqs(ch.foreign.iter().map(|f| f.seq)),
    );
    for f in &ch.foreign {
        c.one(
            "chain_foreign",
            &f.seq.to_string(),
            "reason",
            &f.reason,
            f.seq,
        );
    }
    if let Some(b) = &ch.chain_break {
        c.one("chain_break", &b.seq.to_string(), "error", &b.error, b.seq);
    }
    if let Some(p) = &ch.stream_problem {
        c.plain("chain", "", "stream_problem", p);
    }
    match &r.checkpoint {
        Some(cp) => {
            let ev = Evidence::from_seqs(cp.seq);
            c.row("checkpoint", "", "size", &cp.size.to_string(), &ev);
            c.row("checkpoint", "", "root", &cp.root, &ev);
            c.row("checkpoint", "", "verified", &cp.verified.to_string(), &ev);
            c.row("checkpoint", "", "detail", &cp.detail, &ev);
        }
        None => c.plain("checkpoint", "", "status", "unknown"),
    }

    let a = &r.activity;
    c.row(
        "activity",
        "",
        "events_in_range",
        &a.events_in_range.to_string(),
        &a.evidence,
    );
    c.plain(
        "activity",
        "",
        "events_before",
        &a.events_before.to_string(),
    );
    c.plain("activity", "", "events_after", &a.events_after.to_string());
    for t in &a.by_type {
        c.row(
            "activity",
            &t.name,
            "events",
            &t.count.to_string(),
            &t.evidence,
        );
    }

    let inv = &r.inventory;
    c.plain("inventory", "", "as_of_ms", &inv.as_of_ms.to_string());
    c.one(
        "inventory",
        "",
        "as_of_seq",
        &inv.as_of_seq.to_string(),
        inv.as_of_seq,
    );
    c.row(
        "inventory",
        "",
        "keys",
        &inv.total.to_string(),
        &Evidence::from_seqs(inv.keys.iter().map(|k| k.created_seq)),
    );
    for (section, groups) in [
        ("inventory_by_type", &inv.by_type),
        ("inventory_by_state", &inv.by_state),
        ("inventory_by_tenant", &inv.by_tenant),
    ] {
        for g in groups {
            c.row(section, &g.name, "keys", &g.count.to_string(), &g.evidence);
        }
    }
    for k in &inv.keys {
        let (cs, ss, vs) = (k.created_seq, k.state_seq, k.latest_version_seq);
        c.one("inventory_key", &k.key, "tenant", &k.tenant, cs);
        c.one("inventory_key", &k.key, "name", &k.name, cs);
        c.one("inventory_key", &k.key, "type", &k.key_type, cs);
        c.one("inventory_key", &k.key, "state", &k.state, ss);
        c.one(
            "inventory_key",
            &k.key,
            "latest_version",
            &k.latest_version.to_string(),
            vs,
        );
        if let Some(p) = k.rotation_period_s {
            c.one(
                "inventory_key",
                &k.key,
                "rotation_period_s",
                &p.to_string(),
                cs,
            );
        }
    }

    for o in &r.rotation_overdue {
        c.row(
            "rotation_overdue",
            &o.key,
            "due_ms",
            &o.due_ms.to_string(),
            &o.evidence,
        );
        c.row(
            "rotation_overdue",
            &o.key,
            "due_utc",
            &utc_ms(o.due_ms),
            &o.evidence,
        );
        c.row(
            "rotation_overdue",
            &o.key,
            "overdue_ms",
            &o.overdue_ms.to_string(),
            &o.evidence,
        );
        c.one(
            "rotation_overdue",
            &o.key,
            "latest_version",
            &o.latest_version.to_string(),
            o.version_seq,
        );
        c.row(
            "rotation_overdue",
            &o.key,
            "rotation_period_s",
            &o.rotation_period_s.to_string(),
            &o.evidence,
        );
    }

    c.row(
        "access",
        "",
        "operations",
        &r.access.total.to_string(),
        &r.access.evidence,
    );
    c.plain("access", "", "unattested", &r.access.unattested.to_string());
    for (section, rows) in [
        ("access_by_principal", &r.access.by_principal),
        ("access_by_platform", &r.access.by_platform),
    ] {
        for a in rows {
            c.row(section, &a.name, "total", &a.total.to_string(), &a.evidence);
            c.plain(section, &a.name, "keys", &a.keys.to_string());
            for op in &a.operations {
                c.row(
                    section,
                    &a.name,
                    &op.name,
                    &op.count.to_string(),
                    &op.evidence,
                );
            }
        }
    }

    c.row(
        "refusals",
        "",
        "refusals",
        &r.refusals.total.to_string(),
        &r.refusals.evidence,
    );
    c.row(
        "refusals",
        "",
        "events",
        &r.refusals.events.to_string(),
        &r.refusals.evidence,
    );
    for (section, groups, prefix) in [
        ("refusals_by_code", &r.refusals.by_code, "principal:"),
        ("refusals_by_principal", &r.refusals.by_principal, "code:"),
    ] {
        for g in groups {
            c.row(
                section,
                &g.name,
                "refusals",
                &g.count.to_string(),
                &g.evidence,
            );
            c.row(
                section,
                &g.name,
                "events",
                &g.events.to_string(),
                &g.evidence,
            );
            for b in &g.breakdown {
                c.row(
                    section,
                    &g.name,
                    &format!("{prefix}{}", b.name),
                    &b.count.to_string(),
                    &b.evidence,
                );
            }
        }
    }

    for k in &r.compromised {
        let s = k.seq;
        c.one("compromised", &k.key, "tenant", &k.tenant, s);
        c.one(
            "compromised",
            &k.key,
            "compromised_at_ms",
            &k.compromised_at_ms.to_string(),
            s,
        );
        c.one(
            "compromised",
            &k.key,
            "compromised_at_utc",
            &utc_ms(k.compromised_at_ms),
            s,
        );
        c.one(
            "compromised",
            &k.key,
            "recorded_utc",
            &utc_ms(k.recorded_ms),
            s,
        );
        c.one("compromised", &k.key, "reason", &k.reason, s);
        c.one("compromised", &k.key, "state", &k.state, s);
    }
    for u in &r.use_after_compromise {
        c.one(
            "use_after_compromise",
            &u.key,
            "use",
            &format!(
                "{} v{} by {}{} at {} (compromised since {}, seq {})",
                u.operation,
                u.version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
                u.principal,
                u.platform
                    .as_ref()
                    .map_or_else(String::new, |p| format!(" on platform {p}")),
                utc_ms(u.time_ms),
                utc_ms(u.compromised_at_ms),
                u.compromise_seq
            ),
            u.seq,
        );
    }
    for d in &r.destroyed {
        let s = d.seq;
        c.one("destroyed", &d.key, "tenant", &d.tenant, s);
        c.one(
            "destroyed",
            &d.key,
            "destroyed_utc",
            &utc_ms(d.destroyed_ms),
            s,
        );
        c.one(
            "destroyed",
            &d.key,
            "versions",
            &d.versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            s,
        );
        c.one("destroyed", &d.key, "state", &d.state, s);
    }
    for t in &r.trust_changes {
        c.one("trust_changes", &t.subject, &t.event, &t.detail, t.seq);
    }
    for a in &r.anomalies {
        c.one("anomalies", &a.event, &a.view, &a.problem, a.seq);
    }
    c.0
}

// ---- HTML -----------------------------------------------------------------------------------

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business in a report; show them as U+FFFD.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// At most `n` characters of `s`, with an ellipsis when cut (before escaping).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const PALETTE: [&str; 10] = [
    "#2f6fb0", "#e07b39", "#3a9d5d", "#8e5ea2", "#b8860b", "#17a2b8", "#c0392b", "#7f8c8d",
    "#d35400", "#2c3e50",
];

fn state_color(state: &str) -> &'static str {
    match state {
        "active" => "#3a9d5d",
        "pre-active" => "#17a2b8",
        "suspended" => "#b8860b",
        "deactivated" => "#7f8c8d",
        "compromised" => "#c0392b",
        "destroyed" => "#2c3e50",
        "destroyed-compromised" => "#6d1a12",
        _ => "#8e5ea2",
    }
}

/// An axis maximum and step: 1, 2 or 5 times a power of ten, at most 5 steps.
fn axis(max: u64) -> (u64, u64) {
    let max = max.max(1);
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let s = step.saturating_mul(m);
            if max.div_ceil(s) <= 5 {
                return (s * max.div_ceil(s), s);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// One bar: a label and its segments `(legend name, value, colour)`.
struct Bar {
    label: String,
    segments: Vec<(String, u64, &'static str)>,
}

/// A horizontal bar chart (stacked when bars have several segments), as inline SVG.
fn bar_chart(title: &str, bars: &[Bar], legend: &[(String, &'static str)]) -> String {
    const W: u64 = 600;
    const LABEL_W: u64 = 170;
    const VALUE_W: u64 = 56;
    const ROW: u64 = 26;
    const TOP: u64 = 8;
    let plot_w = W - LABEL_W - VALUE_W;
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure class=\"chart\"><figcaption>{}</figcaption>",
        esc(title)
    );
    if bars.is_empty() {
        s.push_str("<p class=\"empty\">No data in this range.</p></figure>");
        return s;
    }
    let totals: Vec<u64> = bars
        .iter()
        .map(|b| b.segments.iter().map(|x| x.1).sum())
        .collect();
    let (axis_max, step) = axis(totals.iter().copied().max().unwrap_or(0));
    let legend_rows = (legend.len() as u64).div_ceil(4);
    let plot_h = ROW * bars.len() as u64;
    let h = TOP + plot_h + 22 + legend_rows * 20 + 4;
    let _ = write!(
        s,
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\">",
        esc(title)
    );
    // Grid and axis labels.
    let mut t = 0;
    while t <= axis_max {
        let x = LABEL_W + plot_w * t / axis_max;
        let _ = write!(
            s,
            "<line x1=\"{x}\" y1=\"{TOP}\" x2=\"{x}\" y2=\"{}\" class=\"grid\"/>\
             <text x=\"{x}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{t}</text>",
            TOP + plot_h,
            TOP + plot_h + 14
        );
        t += step;
    }
    for (i, (b, total)) in bars.iter().zip(&totals).enumerate() {
        let y = TOP + ROW * i as u64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"label\" text-anchor=\"end\"><title>{}</title>{}</text>",
            LABEL_W - 6,
            y + 17,
            esc(&b.label),
            esc(&clip(&b.label, 24))
        );
        let mut x = LABEL_W;
        for (name, v, color) in &b.segments {
            let w = plot_w * v / axis_max;
            if w > 0 {
                let _ = write!(
                    s,
                    "<rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"18\" fill=\"{color}\"><title>{}: {v}</title></rect>",
                    y + 4,
                    esc(&format!("{} {}", b.label, name))
                );
            }
            x += w;
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"value\">{total}</text>",
            x + 5,
            y + 17
        );
    }
    for (i, (name, color)) in legend.iter().enumerate() {
        let (col, row) = (i as u64 % 4, i as u64 / 4);
        let x = LABEL_W + col * 105;
        let y = TOP + plot_h + 24 + row * 20;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>",
            x + 16,
            y + 10,
            esc(&clip(name, 14))
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// Top `n` items by value, the rest folded into one "others" bar.
fn top_bars(mut bars: Vec<Bar>, n: usize) -> Vec<Bar> {
    if bars.len() > n {
        let rest = bars.split_off(n - 1);
        let total: u64 = rest
            .iter()
            .flat_map(|b| b.segments.iter().map(|s| s.1))
            .sum();
        bars.push(Bar {
            label: format!("({} others)", rest.len()),
            segments: vec![("others".into(), total, "#aab2bd")],
        });
    }
    bars
}

fn group_chart(
    title: &str,
    groups: &[InventoryGroup],
    color: impl Fn(usize, &str) -> &'static str,
) -> String {
    let bars = groups
        .iter()
        .enumerate()
        .map(|(i, g)| Bar {
            label: g.name.clone(),
            segments: vec![(String::new(), g.count, color(i, &g.name))],
        })
        .collect();
    bar_chart(title, &top_bars(bars, 15), &[])
}

fn refusal_chart(title: &str, groups: &[RefusalGroup], color: &'static str) -> String {
    let bars = groups
        .iter()
        .map(|g| Bar {
            label: g.name.clone(),
            segments: vec![(String::new(), g.count, color)],
        })
        .collect();
    bar_chart(title, &top_bars(bars, 15), &[])
}

/// Access rows as bars stacked by operation, with a legend.
fn access_chart(title: &str, rows: &[AccessRow]) -> String {
    let mut ops: Vec<(String, u64)> = Vec::new();
    for r in rows {
        for o in &r.operations {
            match ops.iter_mut().find(|(n, _)| n == &o.name) {
                Some((_, c)) => *c += o.count,
                None => ops.push((o.name.clone(), o.count)),
            }
        }
    }
    ops.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // The 9 most frequent operations get their own colour; the rest share grey.
    let color_of = |name: &str| -> &'static str {
        ops.iter()
            .position(|(n, _)| n == name)
            .filter(|i| *i < 9)
            .map_or("#aab2bd", |i| PALETTE[i])
    };
    let bars = rows
        .iter()
        .map(|r| Bar {
            label: r.name.clone(),
            segments: r
                .operations
                .iter()
                .map(|o| (o.name.clone(), o.count, color_of(&o.name)))
                .collect(),
        })
        .collect();
    let mut legend: Vec<(String, &'static str)> = ops
        .iter()
        .take(9)
        .map(|(n, _)| (n.clone(), color_of(n)))
        .collect();
    if ops.len() > 9 {
        legend.push(("other".into(), "#aab2bd"));
    }
    bar_chart(title, &top_bars(bars, 15), &legend)
}

/// Evidence as HTML: short lists inline, long ones folded in a `<details>`.
fn seqs_html(e: &Evidence) -> String {
    const INLINE: usize = 12;
    if e.seqs.is_empty() {
        return "<span class=\"muted\">—</span>".into();
    }
    let list = |seqs: &[u64]| {
        seqs.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let more = if e.truncated() {
        format!(
            " <span class=\"muted\">(first {} of {})</span>",
            e.seqs.len(),
            e.total
        )
    } else {
        String::new()
    };
    if e.seqs.len() <= INLINE {
        format!("<span class=\"seqs\">{}</span>{more}", list(&e.seqs))
    } else {
        format!(
            "<details class=\"seqs\"><summary>{}, … ({} events)</summary>{}</details>{more}",
            list(&e.seqs[..INLINE]),
            e.total,
            list(&e.seqs)
        )
    }
}

/// A UTC time that does not wrap inside a table cell.
fn time_html(ms: u64) -> String {
    format!("<span class=\"nw\">{}</span>", utc_ms(ms))
}

fn seq_html(seq: u64) -> String {
    format!("<span class=\"seqs\">{seq}</span>")
}

/// A table; `rows` are cells of HTML the caller escaped.
fn table(headers: &[&str], rows: Vec<Vec<String>>, empty: &str) -> String {
    table_with(headers, rows, empty, "")
}

/// [`table`] with a class on every body row.
fn table_with(headers: &[&str], rows: Vec<Vec<String>>, empty: &str, row_class: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", esc(empty));
    }
    let mut s = String::from("<table>");
    if headers.iter().any(|h| !h.is_empty()) {
        s.push_str("<thead><tr>");
        for h in headers {
            let _ = write!(s, "<th>{}</th>", esc(h));
        }
        s.push_str("</tr></thead>");
    }
    s.push_str("<tbody>");
    for r in rows {
        if row_class.is_empty() {
            s.push_str("<tr>");
        } else {
            let _ = write!(s, "<tr class=\"{row_class}\">");
        }
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn counts_html(counts: &[Count]) -> String {
    counts
        .iter()
        .map(|c| {
            format!(
                "<div><b>{}</b> × {} <span class=\"muted\">seq</span> {}</div>",
                esc(&c.name),
                c.count,
                seqs_html(&c.evidence)
            )
        })
        .collect()
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font-family:"DejaVu Sans","Liberation Sans",Arial,Helvetica,sans-serif;font-size:13px;color:#1d2733;background:#f4f6f8}
main{max-width:1240px;margin:0 auto;padding:18px 20px 40px}
header.top{background:#1d2d44;color:#fff;padding:18px 20px}
header.top .inner{max-width:1240px;margin:0 auto;display:flex;justify-content:space-between;align-items:flex-start;gap:20px}
header.top h1{margin:0 0 6px;font-size:22px}
header.top dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0;font-size:12px}
header.top dt{color:#aebbd0}
header.top dd{margin:0;font-family:"DejaVu Sans Mono",monospace;word-break:break-all}
.badges{display:flex;flex-direction:column;gap:6px;align-items:flex-end}
.badge{display:inline-block;padding:6px 12px;border-radius:4px;font-weight:bold;font-size:13px;white-space:nowrap}
.ok{background:#2e8b57;color:#fff}.bad{background:#c0392b;color:#fff}.warn{background:#d68910;color:#fff}.unknown{background:#5d6d7e;color:#fff}
h2{font-size:17px;margin:26px 0 10px;padding-bottom:4px;border-bottom:2px solid #d5dce4}
h3{font-size:14px;margin:16px 0 6px}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:10px}
.card{background:#fff;border:1px solid #d5dce4;border-radius:6px;padding:10px}
.card .v{font-size:24px;font-weight:bold}
.card .l{color:#4a5a6a;font-size:12px;min-height:30px}
.card.alert{border-color:#c0392b;background:#fdecea}
.card.alert .v{color:#c0392b}
.card .s{font-size:11px;color:#6b7b8b;margin-top:4px;word-break:break-all}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:14px}
figure.chart{margin:0;background:#fff;border:1px solid #d5dce4;border-radius:6px;padding:10px}
figure.chart figcaption{font-weight:bold;margin-bottom:6px}
svg{max-width:100%;height:auto}
svg .grid{stroke:#e3e8ee;stroke-width:1}
svg .tick{font-size:10px;fill:#6b7b8b}
svg .label{font-size:12px;fill:#1d2733}
svg .value{font-size:12px;font-weight:bold;fill:#1d2733}
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0 10px;font-size:12px}
th,td{border:1px solid #d5dce4;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#e9eef3}
td{word-break:break-word}
tr.alert td{background:#fdecea}
.seqs{font-family:"DejaVu Sans Mono",monospace;font-size:11px;color:#2f4f6f}
details.seqs summary{cursor:pointer}
.muted{color:#8795a1}
.empty{color:#6b7b8b;font-style:italic;margin:4px 0 10px}
.nw{white-space:nowrap}
.mono{font-family:"DejaVu Sans Mono",monospace;font-size:11px;word-break:break-all}
footer{margin-top:30px;color:#6b7b8b;font-size:11px}
"#;

/// The report as one self-contained HTML page (see the module documentation).
pub fn to_html(r: &ComplianceReport) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let ch = &r.chain;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Compliance report: ledger {}</title><style>{CSS}</style></head><body>",
        esc(&r.ledger)
    );

    // ---- header
    let chain_badge = if ch.chain_break.is_some() {
        format!(
            "<span class=\"badge bad\">CHAIN BROKEN at seq {}</span>",
            ch.chain_break.as_ref().map_or(0, |b| b.seq)
        )
    } else if ch.foreign_total > 0 {
        format!(
            "<span class=\"badge bad\">{} FOREIGN MESSAGE{}</span>",
            ch.foreign_total,
            if ch.foreign_total == 1 { "" } else { "S" }
        )
    } else if ch.stream_problem.is_some() {
        "<span class=\"badge warn\">STREAM DOES NOT PROTECT HISTORY</span>".into()
    } else if ch.ok {
        format!(
            "<span class=\"badge ok\">CHAIN VERIFIED: {} events</span>",
            ch.events_verified
        )
    } else {
        "<span class=\"badge bad\">CHAIN NOT VERIFIED</span>".into()
    };
    let cp_badge = match &r.checkpoint {
        Some(cp) if cp.verified => format!(
            "<span class=\"badge ok\">CHECKPOINT VERIFIED: size {}</span>",
            cp.size
        ),
        Some(cp) => format!(
            "<span class=\"badge bad\">CHECKPOINT NOT VERIFIED: size {}</span>",
            cp.size
        ),
        None => "<span class=\"badge unknown\">CHECKPOINT: unknown</span>".into(),
    };
    let _ = write!(
        h,
        "<header class=\"top\"><div class=\"inner\"><div><h1>keyledger compliance report</h1><dl>\
         <dt>Ledger</dt><dd>{}</dd>\
         <dt>Range (UTC)</dt><dd>{} — {} <span style=\"color:#aebbd0\">(from inclusive, to exclusive)</span></dd>\
         <dt>Generated</dt><dd>{}</dd>\
         <dt>Root key</dt><dd>{}{}</dd>\
         <dt>Head</dt><dd>{}</dd>\
         </dl></div><div class=\"badges\">{chain_badge}{cp_badge}</div></div></header><main>",
        esc(&r.ledger),
        utc_ms(r.range.from_ms),
        utc_ms(r.range.to_ms),
        r.generated_ms.map_or_else(|| "—".into(), utc_ms),
        esc(ch.root_key.as_deref().unwrap_or("—")),
        if ch.root_pinned {
            " (pinned)"
        } else {
            " (trusted on first use)"
        },
        ch.head.as_ref().map_or_else(
            || "—".into(),
            |hd| format!("index {} at seq {}, hash {}", hd.index, hd.seq, esc(&hd.hash))
        ),
    );

    // ---- summary cards
    h.push_str("<h2>Summary</h2><div class=\"cards\">");
    for f in &r.summary {
        let alert = f.value > 0
            && matches!(
                f.metric.as_str(),
                "rotation_overdue"
                    | "compromised"
                    | "use_after_compromise"
                    | "foreign_messages"
                    | "chain_breaks"
                    | "anomalies"
            );
        let _ = write!(
            h,
            "<div class=\"card{}\"><div class=\"v\">{}</div><div class=\"l\">{}</div><div class=\"s\">seq {}</div></div>",
            if alert { " alert" } else { "" },
            f.value,
            esc(&f.label),
            short_seqs(&f.evidence)
        );
    }
    h.push_str("</div>");

    // ---- charts
    let inv = &r.inventory;
    h.push_str("<h2>Charts</h2><div class=\"charts\">");
    h.push_str(&group_chart("Keys by type", &inv.by_type, |i, _| {
        PALETTE[i % PALETTE.len()]
    }));
    h.push_str(&group_chart("Keys by state", &inv.by_state, |_, n| {
        state_color(n)
    }));
    h.push_str(&group_chart("Keys by tenant", &inv.by_tenant, |i, _| {
        PALETTE[(i + 3) % PALETTE.len()]
    }));
    h.push_str(&refusal_chart(
        "Refusals by code (in range)",
        &r.refusals.by_code,
        "#c0392b",
    ));
    h.push_str(&access_chart(
        "Operations by principal (in range)",
        &r.access.by_principal,
    ));
    h.push_str(&refusal_chart(
        "Refusals by principal (in range)",
        &r.refusals.by_principal,
        "#d35400",
    ));
    h.push_str("</div>");

    // ---- chain and checkpoint
    h.push_str("<h2>Chain and checkpoint</h2>");
    let mut rows = vec![
        vec!["Verified events".into(), ch.events_verified.to_string()],
        vec![
            "Last stream sequence examined".into(),
            ch.last_seq.to_string(),
        ],
        vec![
            "Head".into(),
            ch.head.as_ref().map_or_else(
                || "—".into(),
                |hd| {
                    format!(
                        "index {} at seq {} <span class=\"mono\">{}</span>",
                        hd.index,
                        seq_html(hd.seq),
                        esc(&hd.hash)
                    )
                },
            ),
        ],
        vec![
            "Foreign messages".into(),
            format!(
                "{} {}",
                ch.foreign_total,
                seqs_html(&Evidence::from_seqs(ch.foreign.iter().map(|f| f.seq)))
            ),
        ],
        vec![
            "Chain break".into(),
            ch.chain_break.as_ref().map_or_else(
                || "none".into(),
                |b| format!("at seq {}: {}", seq_html(b.seq), esc(&b.error)),
            ),
        ],
        vec![
            "Stream configuration".into(),
            ch.stream_problem
                .as_ref()
                .map_or_else(|| "protects history".into(), |p| esc(p)),
        ],
    ];
    rows.push(vec![
        "Checkpoint".into(),
        match &r.checkpoint {
            None => "unknown (no checkpoint was checked)".into(),
            Some(cp) => format!(
                "size {}, root <span class=\"mono\">{}</span>, {}{}{}",
                cp.size,
                esc(&cp.root),
                if cp.verified {
                    "verified"
                } else {
                    "<b>NOT verified</b>"
                },
                cp.seq
                    .map_or_else(String::new, |s| format!(", checkpoint seq {}", seq_html(s))),
                if cp.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", esc(&cp.detail))
                }
            ),
        },
    ]);
    h.push_str(&table(&["", ""], rows, ""));
    if !ch.foreign.is_empty() {
        h.push_str("<h3>Foreign messages</h3>");
        h.push_str(&table(
            &["Seq", "Reason"],
            ch.foreign
                .iter()
                .map(|f| vec![seq_html(f.seq), esc(&f.reason)])
                .collect(),
            "",
        ));
    }

    // ---- inventory
    let _ = write!(
        h,
        "<h2>Inventory as of {} <span class=\"muted\">(events up to seq {})</span></h2>",
        time_html(inv.as_of_ms),
        inv.as_of_seq
    );
    let mut rows = Vec::new();
    for (what, groups, state) in [
        ("type", &inv.by_type, false),
        ("state", &inv.by_state, true),
        ("tenant", &inv.by_tenant, false),
    ] {
        for g in groups {
            let keys: String = g
                .keys
                .iter()
                .map(|k| {
                    format!(
                        "<div>{} <span class=\"muted\">seq</span> {}</div>",
                        esc(&k.key),
                        seq_html(if state { k.state_seq } else { k.created_seq })
                    )
                })
                .collect();
            let more = if (g.keys.len() as u64) < g.count {
                format!(
                    "<div class=\"muted\">… {} more</div>",
                    g.count - g.keys.len() as u64
                )
            } else {
                String::new()
            };
            rows.push(vec![
                what.into(),
                esc(&g.name),
                g.count.to_string(),
                format!("{keys}{more}"),
            ]);
        }
    }
    h.push_str("<p class=\"muted\">By type and tenant each key cites its creating event; by state, the event that set its state.</p>");
    h.push_str(&table(
        &["By", "Group", "Keys", "Keys (evidence seq)"],
        rows,
        "No keys.",
    ));
    const KEY_ROWS: usize = 500;
    h.push_str("<h3>Keys</h3>");
    h.push_str(&table(
        &[
            "Key",
            "Tenant",
            "Name",
            "Type",
            "State (seq)",
            "Created (seq)",
            "Latest version (seq)",
            "Rotation period",
        ],
        inv.keys
            .iter()
            .take(KEY_ROWS)
            .map(|k| {
                vec![
                    esc(&k.key),
                    esc(&k.tenant),
                    esc(&k.name),
                    esc(&k.key_type),
                    format!("{} {}", esc(&k.state), seq_html(k.state_seq)),
                    format!("{} {}", time_html(k.created_ms), seq_html(k.created_seq)),
                    format!("v{} {}", k.latest_version, seq_html(k.latest_version_seq)),
                    k.rotation_period_s
                        .map_or_else(|| "—".into(), |p| duration(p.saturating_mul(1000))),
                ]
            })
            .collect(),
        "No keys.",
    ));
    if inv.keys.len() > KEY_ROWS {
        let _ = write!(
            h,
            "<p class=\"muted\">{} more keys: see the JSON or CSV report.</p>",
            inv.keys.len() - KEY_ROWS
        );
    }

    // ---- rotation
    h.push_str("<h2>Keys overdue for rotation</h2>");
    h.push_str(&table(
        &[
            "Key",
            "Tenant",
            "Type",
            "Latest version",
            "Created",
            "Period",
            "Due",
            "Overdue by",
            "Evidence seq",
        ],
        r.rotation_overdue
            .iter()
            .map(|o| {
                vec![
                    esc(&o.key),
                    esc(&o.tenant),
                    esc(&o.key_type),
                    format!("v{}", o.latest_version),
                    time_html(o.version_created_ms),
                    duration(o.rotation_period_s.saturating_mul(1000)),
                    time_html(o.due_ms),
                    duration(o.overdue_ms),
                    seqs_html(&o.evidence),
                ]
            })
            .collect(),
        "No active key is overdue for rotation.",
    ));

    // ---- access
    let _ = write!(
        h,
        "<h2>Access</h2><p>{} operations on keys in the range ({} from attested platforms, {} without a platform quote). Refusals are listed separately.</p>",
        r.access.total,
        r.access.total - r.access.unattested,
        r.access.unattested
    );
    let access_rows = |rows: &[AccessRow]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|a| {
                vec![
                    esc(&a.name),
                    a.total.to_string(),
                    a.keys.to_string(),
                    counts_html(&a.operations),
                ]
            })
            .collect()
    };
    h.push_str("<h3>By principal</h3>");
    h.push_str(&table(
        &[
            "Principal",
            "Operations",
            "Keys",
            "By operation (evidence seq)",
        ],
        access_rows(&r.access.by_principal),
        "No operations in the range.",
    ));
    h.push_str("<h3>By platform</h3>");
    h.push_str(&table(
        &[
            "Platform",
            "Operations",
            "Keys",
            "By operation (evidence seq)",
        ],
        access_rows(&r.access.by_platform),
        "No operations from attested platforms in the range.",
    ));

    // ---- refusals
    let _ = write!(
        h,
        "<h2>Refusals</h2><p>{} refused requests in the range, recorded in {} events.</p>",
        r.refusals.total, r.refusals.events
    );
    let refusal_rows = |groups: &[RefusalGroup]| -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| {
                vec![
                    esc(&g.name),
                    g.count.to_string(),
                    g.events.to_string(),
                    counts_html(&g.breakdown),
                ]
            })
            .collect()
    };
    h.push_str("<h3>By code</h3>");
    h.push_str(&table(
        &["Code", "Refusals", "Events", "By principal (evidence seq)"],
        refusal_rows(&r.refusals.by_code),
        "No refusals in the range.",
    ));
    h.push_str("<h3>By principal</h3>");
    h.push_str(&table(
        &["Principal", "Refusals", "Events", "By code (evidence seq)"],
        refusal_rows(&r.refusals.by_principal),
        "No refusals in the range.",
    ));

    // ---- compromised, use after compromise, destroyed
    h.push_str("<h2>Compromised keys</h2>");
    h.push_str(&table(
        &[
            "Key",
            "Tenant",
            "Compromised since",
            "Recorded",
            "From state",
            "State now",
            "Reason",
            "Seq",
        ],
        r.compromised
            .iter()
            .map(|c| {
                vec![
                    esc(&c.key),
                    esc(&c.tenant),
                    time_html(c.compromised_at_ms),
                    format!(
                        "{}{}",
                        time_html(c.recorded_ms),
                        if c.in_range {
                            ""
                        } else {
                            " (before the range)"
                        }
                    ),
                    esc(&c.from_state),
                    esc(&c.state),
                    esc(&c.reason),
                    seq_html(c.seq),
                ]
            })
            .collect(),
        "No compromised keys.",
    ));
    h.push_str("<h3>Use after compromise</h3>");
    h.push_str(&table_with(
        &[
            "Key",
            "Operation",
            "Principal",
            "Platform",
            "Version",
            "Time",
            "Compromised since (seq)",
            "Use seq",
        ],
        r.use_after_compromise
            .iter()
            .map(|u| {
                vec![
                    esc(&u.key),
                    esc(&u.operation),
                    esc(&u.principal),
                    u.platform.as_deref().map_or_else(|| "—".into(), esc),
                    u.version.map_or_else(|| "—".into(), |v| format!("v{v}")),
                    format!(
                        "{}{}",
                        time_html(u.time_ms),
                        if u.in_range {
                            ""
                        } else {
                            " (before the range)"
                        }
                    ),
                    format!(
                        "{} {}",
                        time_html(u.compromised_at_ms),
                        seq_html(u.compromise_seq)
                    ),
                    format!(
                        "{}{}",
                        seq_html(u.seq),
                        if u.sub > 0 {
                            format!(" <span class=\"muted\">use #{}</span>", u.sub)
                        } else {
                            String::new()
                        }
                    ),
                ]
            })
            .collect(),
        "No use of a compromised key at or after its compromise.",
        "alert",
    ));
    h.push_str("<h2>Destroyed keys</h2>");
    h.push_str(&table(
        &[
            "Key",
            "Tenant",
            "Destroyed",
            "Versions",
            "Data keys erased",
            "State",
            "Seq",
        ],
        r.destroyed
            .iter()
            .map(|d| {
                vec![
                    esc(&d.key),
                    esc(&d.tenant),
                    format!(
                        "{}{}",
                        time_html(d.destroyed_ms),
                        if d.in_range {
                            ""
                        } else {
                            " (before the range)"
                        }
                    ),
                    d.versions
                        .iter()
                        .map(|v| format!("v{v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    d.erased_deks.to_string(),
                    esc(&d.state),
                    seq_html(d.seq),
                ]
            })
            .collect(),
        "No destroyed keys.",
    ));

    // ---- trust changes
    h.push_str("<h2>Signer, issuer and platform changes</h2>");
    h.push_str(&table(
        &["Seq", "Time", "Event", "Subject", "Detail", "By"],
        r.trust_changes
            .iter()
            .map(|t| {
                vec![
                    seq_html(t.seq),
                    time_html(t.time_ms),
                    format!("<span class=\"nw\">{}</span>", esc(&t.event)),
                    format!("<span class=\"mono\">{}</span>", esc(&t.subject)),
                    esc(&t.detail),
                    esc(&t.principal),
                ]
            })
            .collect(),
        "No changes in the range.",
    ));

    // ---- activity and anomalies
    let a = &r.activity;
    let _ = write!(
        h,
        "<h2>Events</h2><p>{} verified events in the range; {} before it (folded into the inventory only); {} at or after its end (not included).</p>",
        a.events_in_range, a.events_before, a.events_after
    );
    h.push_str(&table(
        &["Event type", "Events", "Evidence seq"],
        a.by_type
            .iter()
            .map(|t| vec![esc(&t.name), t.count.to_string(), seqs_html(&t.evidence)])
            .collect(),
        "No events in the range.",
    ));
    h.push_str("<h2>Anomalies</h2>");
    h.push_str(&table(
        &["Seq", "Event", "View", "Problem"],
        r.anomalies
            .iter()
            .map(|x| {
                vec![
                    seq_html(x.seq),
                    esc(&x.event),
                    esc(&x.view),
                    esc(&x.problem),
                ]
            })
            .collect(),
        "None: every verified event applied cleanly.",
    ));

    let _ = writeln!(
        h,
        "<footer>Format {}. Every figure cites the stream sequences (seq) of the verified events it was computed from; \
         look them up with <code>keyledger history</code> and re-verify the chain with <code>keyledger verify --root-key &lt;root key&gt;</code>. \
         Lists of sequences are cut at {} per figure (the JSON report gives each total).</footer></main></body></html>",
        esc(&r.format),
        projector::report::MAX_SEQS
    );
    h
}

/// A few sequences for a summary card.
fn short_seqs(e: &Evidence) -> String {
    if e.seqs.is_empty() {
        return "—".into();
    }
    let shown: Vec<String> = e.seqs.iter().take(6).map(|s| s.to_string()).collect();
    let more = e.total.saturating_sub(shown.len() as u64);
    if more > 0 {
        format!("{} … (+{more})", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_ms_formats_known_instants() {
        assert_eq!(utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(utc_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>alert(\"x\")</script>&'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("=1+1"), "'=1+1");
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn axis_steps() {
        assert_eq!(axis(0), (1, 1));
        assert_eq!(axis(4), (4, 1));
        assert_eq!(axis(7), (8, 2));
        assert_eq!(axis(20), (20, 5));
        assert_eq!(axis(23), (25, 5));
        assert_eq!(axis(999), (1000, 200));
    }
}
