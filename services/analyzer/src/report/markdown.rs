//! The Markdown report: the summary table, latency per bucket, the Pareto front and the
//! anomalies. Text from data is escaped so a model name cannot break a table or inject markup.

use std::fmt::Write as _;

use modelperf_schema::messages::{AnomalyType, Severity};

use super::{Estimate, ModelReport, Report};

/// Escapes Markdown punctuation (tables, emphasis, links, inline HTML) and flattens newlines.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `85.0 % (79.4 – 89.3)`.
pub fn rate(e: Option<Estimate>) -> String {
    e.map_or("–".into(), |e| format!("{:.1} % ({:.1} – {:.1})", e.value * 100.0, e.low * 100.0, e.high * 100.0))
}

/// `0.700 (0.203 – 1.197, n = 3)`.
pub fn quality(m: &ModelReport) -> String {
    m.quality.map_or("–".into(), |e| format!("{:.3} ({:.3} – {:.3}, n = {})", e.value, e.low, e.high, m.quality_n))
}

/// `199 / 390 / 398`.
pub fn latency(m: &ModelReport) -> String {
    m.latency.map_or("–".into(), |l| format!("{:.0} / {:.0} / {:.0}", l.p50_ms, l.p95_ms, l.p99_ms))
}

/// `$0.0100` (four significant digits for small amounts).
pub fn usd(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1.0 || v == 0.0 => format!("${v:.2}"),
        Some(v) => {
            let digits = ((-v.abs().log10()).floor() as usize + 4).min(12);
            format!("${v:.digits$}")
        }
    }
}

/// The wire name of an anomaly type.
pub fn kind(k: AnomalyType) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The wire name of a severity.
pub fn severity(s: Severity) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# modelperf {} report\n\n{} – {} (UTC), {} windows of `{}`, {} models. Intervals are 95 %: \
         Wilson for success rates, Student t for mean quality. Production traffic is observational: \
         the router's choices confound differences between models.\n",
        escape(&r.period),
        r.start.format("%Y-%m-%d %H:%M"),
        r.end.format("%Y-%m-%d %H:%M"),
        r.windows,
        escape(&r.window),
        r.models.len()
    );
    for n in &r.notes {
        let _ = writeln!(out, "> {}\n", escape(n));
    }
    out.push_str("## Summary\n\n");
    out.push_str(
        "| model | completions | success rate (95 % CI) | quality (95 % CI) | p50 / p95 / p99 ms | cost per task | per success | Pareto |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|:---:|\n");
    for m in &r.models {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            escape(&m.model),
            m.completions,
            rate(m.success_rate),
            quality(m),
            latency(m),
            escape(&usd(m.cost_per_task)),
            escape(&usd(m.cost_per_success)),
            if m.pareto { "yes" } else { "" }
        );
    }
    out.push_str("\n## Quality vs cost\n\n");
    if r.pareto_front.is_empty() {
        out.push_str("No model has both a quality and a cost in this period.\n");
    } else {
        let front: Vec<String> = r.pareto_front.iter().map(|m| escape(m)).collect();
        let _ = writeln!(out, "Pareto front, cheapest first: {}.", front.join(", "));
    }
    let _ = writeln!(out, "\n## Latency per {} min (p50 / p95 / p99 ms)\n", r.bucket_secs / 60);
    for m in &r.models {
        if m.latency_series.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "### {}\n\n| bucket start | completions | p50 | p95 | p99 |\n|---|---:|---:|---:|---:|",
            escape(&m.model)
        );
        for p in &m.latency_series {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.start.format("%Y-%m-%d %H:%M"),
                p.count,
                p.p50_ms,
                p.p95_ms,
                p.p99_ms
            );
        }
        out.push('\n');
    }
    out.push_str("## Anomalies\n\n");
    if r.anomalies.is_empty() {
        out.push_str("None in the period.\n");
    } else {
        out.push_str("| model | type | severity | opened | resolved | observed | baseline | description |\n");
        out.push_str("|---|---|---|---|---|---:|---:|---|\n");
        for a in &r.anomalies {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {} |",
                escape(&a.model),
                escape(&kind(a.kind)),
                escape(&severity(a.severity)),
                a.detected_at.format("%Y-%m-%d %H:%M"),
                a.resolved_at.map_or("open".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
                a.observed,
                a.baseline,
                escape(&a.description)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{anomaly, completions, input, judgments};
    use super::*;
    use modelperf_schema::messages::AnomalyState;

    #[test]
    fn a_model_name_cannot_break_the_table() {
        let evil = "a|b\n# <b>x</b>";
        let mut i = input(vec![completions(evil, 0, 100.0, 90, 10, 1.0), judgments(evil, 0, &[0.5, 0.7])]);
        i.anomalies = vec![anomaly("f", evil, AnomalyState::Open, 2)];
        let md = render(&super::super::build(&i));
        let row = md.lines().find(|l| l.starts_with("| acme/a")).unwrap();
        // Nine unescaped pipes: eight columns.
        let pipes = row.match_indices('|').filter(|(i, _)| !row[..*i].ends_with('\\')).count();
        assert_eq!(pipes, 9, "{row}");
        assert!(!md.contains("<b>") && md.contains("acme/a\\|b \\# &lt;b&gt;x&lt;/b&gt;"));
        assert!(md.contains("90.0 % ("), "{md}");
        assert!(md.contains("latency\\_spike"), "{md}");
    }

    #[test]
    fn amounts_keep_four_significant_digits() {
        assert_eq!(usd(Some(0.012346)), "$0.01235");
        assert_eq!(usd(Some(2.5)), "$2.50");
        assert_eq!(usd(Some(0.0)), "$0.00");
        assert_eq!(usd(None), "–");
    }
}
