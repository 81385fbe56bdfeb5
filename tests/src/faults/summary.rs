//! The summary table of a run: one row per fault with the exact accounting after it.

use std::fmt::Write as _;
use std::time::Duration;

use super::account::{Accounting, Tally};

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was done, e.g. `kill -9 collector`.
    pub fault: String,
    /// The accounting when the scenario ended (converged, or at its deadline).
    pub accounting: Accounting,
    /// Publishes the load generator had to send again.
    pub retries: u64,
    /// Problems outside the accounting (a service that exited, a step that failed).
    pub problems: Vec<String>,
    /// Load, fault and drain together.
    pub elapsed: Duration,
}

impl Row {
    /// The accounting is exact and nothing else went wrong.
    pub fn passed(&self) -> bool {
        self.accounting.exact() && self.problems.is_empty()
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn once(t: &Tally) -> String {
    let mut s = format!("{} {}/{}", mark(t.exact()), t.once, t.expected);
    if t.duplicates > 0 || t.missing > 0 || t.unexpected > 0 {
        let _ = write!(s, " (dup {}, missing {}, unknown {})", t.duplicates, t.missing, t.unexpected);
    }
    s
}

/// The table in Markdown, then the details of every failing row.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| fault | events published | in PERF_EVENTS exactly once | invalid in PERF_DLQ once | \
         InfluxDB count / published | tasks complete → in exactly one RL batch | \
         alert transitions → webhook / Alertmanager | publish retries | time | result |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let a = &r.accounting;
        let al = &a.alerts;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{} | {} {} / {} | {} → {} | {} {} → {} / {}{} | {} | {:.0} s | {} |",
            r.fault,
            a.events.expected,
            once(&a.events),
            once(&a.dlq),
            if a.dlq_wrong > 0 { format!(", {} wrong code or body", a.dlq_wrong) } else { String::new() },
            mark(a.influx_matches()),
            a.influx_count,
            a.events.expected,
            a.tasks.expected,
            once(&a.tasks),
            mark(al.exact()),
            al.transitions,
            al.webhook,
            al.alertmanager,
            if al.own_fired_and_resolved { "" } else { " (the scenario's alert did not fire and resolve)" },
            r.retries,
            r.elapsed.as_secs_f64(),
            if r.passed() { "pass" } else { "FAIL" },
        );
    }
    for r in rows.iter().filter(|r| !r.passed()) {
        let _ = writeln!(out, "\n**{}**", r.fault);
        for p in &r.problems {
            let _ = writeln!(out, "- {p}");
        }
        for u in &r.accounting.alerts.undelivered {
            let _ = writeln!(out, "- undelivered: {u}");
        }
    }
    out
}
