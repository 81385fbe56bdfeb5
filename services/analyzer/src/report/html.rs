//! The HTML report: one self-contained page (inline CSS and SVG; no scripts, fonts or images
//! from anywhere) with the charts of [`super::svg`] and the tables of the Markdown report.

use std::fmt::Write as _;

use modelperf_schema::messages::Severity;

use super::svg::{Chart, PALETTE, Scale, escape, ticks};
use super::{Estimate, ModelReport, Report, markdown};

const CSS: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:960px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}\
.chart{display:block;margin:8px 0}.chart text{font-size:11px;fill:#333}.chart .axis{font-weight:bold}\
.note{color:#8a4b00}";

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The page.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let title = format!(
        "modelperf {} report {} – {}",
        r.period,
        r.start.format("%Y-%m-%d %H:%M"),
        r.end.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<p>{} windows of <code>{}</code>, {} models; latency buckets of {} min. Intervals are 95 %: \
         Wilson for success rates, Student t for mean quality. Production traffic is observational: \
         the router's choices confound differences between models.</p>",
        r.windows,
        escape(&r.window),
        r.models.len(),
        r.bucket_secs / 60
    );
    for n in &r.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(n));
    }
    out.push_str("<h2>Summary</h2>\n");
    out.push_str(&summary_table(r));
    out.push_str("<h2>Latency percentiles over time</h2>\n");
    for (i, m) in r.models.iter().enumerate() {
        out.push_str(&latency_chart(r, i, m));
    }
    out.push_str("<h2>Success rate</h2>\n");
    out.push_str(&interval_chart(
        "success-rate",
        "Success rate with 95 % Wilson intervals",
        "success rate",
        &r.models.iter().map(|m| (m.model.as_str(), m.success_rate)).collect::<Vec<_>>(),
        |v| format!("{:.1} %", v * 100.0),
    ));
    out.push_str("<h2>Quality</h2>\n");
    out.push_str(&interval_chart(
        "quality",
        "Mean judgment score with 95 % intervals",
        "mean quality (0..1)",
        &r.models.iter().map(|m| (m.model.as_str(), m.quality)).collect::<Vec<_>>(),
        |v| format!("{v:.3}"),
    ));
    out.push_str("<h2>Cost per task</h2>\n");
    out.push_str(&cost_chart(r));
    out.push_str("<h2>Quality vs cost</h2>\n");
    out.push_str(&pareto_chart(r));
    out.push_str("<h2>Anomalies</h2>\n");
    out.push_str(&anomaly_chart(r));
    out.push_str(&anomaly_table(r));
    out.push_str("</body></html>\n");
    out
}

fn summary_table(r: &Report) -> String {
    let mut t = String::from(
        "<table id=\"summary\"><tr><th>model</th><th>completions</th><th>success rate (95 % CI)</th>\
         <th>quality (95 % CI, n)</th><th>p50 / p95 / p99 ms</th><th>cost per task</th><th>per success</th>\
         <th>Pareto</th></tr>\n",
    );
    for m in &r.models {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.model),
            m.completions,
            escape(&markdown::rate(m.success_rate)),
            escape(&markdown::quality(m)),
            escape(&markdown::latency(m)),
            escape(&markdown::usd(m.cost_per_task)),
            escape(&markdown::usd(m.cost_per_success)),
            if m.pareto { "yes" } else { "" }
        );
    }
    t.push_str("</table>\n");
    t
}

fn latency_chart(r: &Report, i: usize, m: &ModelReport) -> String {
    let title = format!("Latency of {} (p50, p95, p99 per {} min)", m.model, r.bucket_secs / 60);
    let mut c = Chart::new(&format!("latency-{i}"), &title, 220.0);
    c.text(c.left, 12.0, "start", "axis model", &m.model);
    let (s, e) = (r.start.timestamp() as f64, r.end.timestamp() as f64);
    let x = Scale::new(s, e, c.left, c.right);
    let hi = m.latency_series.iter().map(|p| p.p99_ms).fold(0.0, f64::max);
    let yt = ticks(0.0, hi * 1.05, 5);
    let y = Scale::new(0.0, yt.last().copied().unwrap_or(hi).max(hi), c.bottom, c.top);
    c.y_axis(&y, &yt, "latency (ms)");
    c.time_axis(&x, r.start, r.end);
    if m.latency_series.is_empty() {
        c.text((c.left + c.right) / 2.0, (c.top + c.bottom) / 2.0, "middle", "empty", "no latency data");
    }
    let mid = r.bucket_secs as f64 / 2.0;
    for (name, pick, dash) in [
        ("p50", (|p: &super::Percentiles| p.p50_ms) as fn(&super::Percentiles) -> f64, Some("4 3")),
        ("p95", |p| p.p95_ms, None),
        ("p99", |p| p.p99_ms, Some("1 2")),
    ] {
        let points: Vec<(f64, f64, String)> = m
            .latency_series
            .iter()
            .map(|p| {
                let v = pick(p);
                let label = format!("{} {name} {v:.0} ms at {}", m.model, p.start.format("%Y-%m-%d %H:%M"));
                (x.at(p.start.timestamp() as f64 + mid), y.at(v), label)
            })
            .collect();
        c.line(&points, colour(i), &format!("latency {name}"), &format!("{} {name}", m.model), dash);
    }
    // Legend.
    for (k, (name, dash)) in [("p50", "4 3"), ("p95", ""), ("p99", "1 2")].iter().enumerate() {
        let lx = c.right - 150.0 + 50.0 * k as f64;
        c.raw(&format!(
            r#"<line x1="{lx:.1}" x2="{:.1}" y1="12" y2="12" stroke="{}" stroke-width="1.8" stroke-dasharray="{dash}"/>"#,
            lx + 18.0,
            colour(i)
        ));
        c.text(lx + 22.0, 16.0, "start", "legend", name);
    }
    c.finish()
}

/// Points with interval whiskers, one row per model.
fn interval_chart(
    id: &str,
    title: &str,
    axis: &str,
    rows: &[(&str, Option<Estimate>)],
    fmt: impl Fn(f64) -> String,
) -> String {
    let height = 66.0 + 30.0 * rows.len().max(1) as f64;
    let mut c = Chart::new(id, title, height);
    let values: Vec<f64> = rows.iter().filter_map(|(_, e)| *e).flat_map(|e| [e.low, e.high]).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(0.005);
    let xt = ticks((lo - pad).max(0.0), (hi + pad).min(1.0), 5);
    let x = Scale::new(
        xt.first().copied().unwrap_or(lo).min(lo),
        xt.last().copied().unwrap_or(hi).max(hi),
        c.left,
        c.right,
    );
    let y0 = c.top + 24.0;
    c.x_axis(&x, &xt, axis);
    for (i, (model, est)) in rows.iter().enumerate() {
        let yy = y0 + 30.0 * i as f64;
        c.text(c.left - 6.0, yy + 4.0, "end", "model", model);
        let Some(e) = est else {
            c.text(c.left + 6.0, yy + 4.0, "start", "empty", "no data");
            continue;
        };
        let label = format!("{model} {} ({} – {})", fmt(e.value), fmt(e.low), fmt(e.high));
        c.raw(&format!(
            r#"<g class="estimate" data-model="{}"><line x1="{:.1}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{col}" stroke-width="2"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{col}"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{col}"/><circle cx="{:.1}" cy="{yy:.1}" r="4" fill="{col}"><title>{}</title></circle></g>"#,
            escape(model),
            x.at(e.low),
            x.at(e.high),
            x.at(e.low),
            x.at(e.low),
            yy - 5.0,
            yy + 5.0,
            x.at(e.high),
            x.at(e.high),
            yy - 5.0,
            yy + 5.0,
            x.at(e.value),
            escape(&label),
            col = colour(i)
        ));
        c.text(x.at(e.value), yy - 8.0, "middle", "value", &fmt(e.value));
    }
    c.raw(&format!(
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999999"/>"##,
        c.left,
        c.top,
        c.right - c.left,
        c.bottom - c.top
    ));
    c.finish()
}

fn cost_chart(r: &Report) -> String {
    let height = 60.0 + 26.0 * r.models.len().max(1) as f64;
    let mut c = Chart::new("cost", "Cost per task (USD, fully priced windows)", height);
    let hi = r.models.iter().filter_map(|m| m.cost_per_task).fold(0.0, f64::max);
    let xt = ticks(0.0, if hi > 0.0 { hi * 1.3 } else { 1.0 }, 5);
    let x = Scale::new(0.0, xt.last().copied().unwrap_or(hi).max(hi), c.left, c.right);
    c.x_axis(&x, &xt, "USD per task");
    let y0 = c.top + 8.0;
    for (i, m) in r.models.iter().enumerate() {
        let yy = y0 + 26.0 * i as f64;
        c.text(c.left - 6.0, yy + 12.0, "end", "model", &m.model);
        let Some(cost) = m.cost_per_task else {
            c.text(c.left + 6.0, yy + 12.0, "start", "empty", "unpriced");
            continue;
        };
        let label = format!("{} {}", m.model, markdown::usd(Some(cost)));
        c.raw(&format!(
            r#"<rect class="bar" data-model="{}" x="{:.1}" y="{yy:.1}" width="{:.1}" height="16" fill="{}"><title>{}</title></rect>"#,
            escape(&m.model),
            c.left,
            (x.at(cost) - c.left).max(1.0),
            colour(i),
            escape(&label)
        ));
        c.text(x.at(cost) + 6.0, yy + 12.0, "start", "value", &markdown::usd(Some(cost)));
    }
    c.finish()
}

fn pareto_chart(r: &Report) -> String {
    let mut c = Chart::new("pareto", "Quality vs cost per task; the Pareto front is joined", 300.0);
    let pts: Vec<(usize, &ModelReport, f64, Estimate)> =
        r.models.iter().enumerate().filter_map(|(i, m)| Some((i, m, m.cost_per_task?, m.quality?))).collect();
    if pts.is_empty() {
        c.text((c.left + c.right) / 2.0, 150.0, "middle", "empty", "no model has both a quality and a cost");
        return c.finish();
    }
    let cmax = pts.iter().map(|p| p.2).fold(0.0, f64::max);
    let qlo = pts.iter().map(|p| p.3.low).fold(f64::INFINITY, f64::min);
    let qhi = pts.iter().map(|p| p.3.high).fold(f64::NEG_INFINITY, f64::max);
    let xt = ticks(0.0, cmax * 1.15, 5);
    let x = Scale::new(0.0, xt.last().copied().unwrap_or(cmax).max(cmax * 1.15), c.left, c.right);
    let pad = ((qhi - qlo) * 0.1).max(0.01);
    let yt = ticks((qlo - pad).max(0.0), (qhi + pad).min(1.0), 5);
    let y = Scale::new(
        yt.first().copied().unwrap_or(qlo).min(qlo),
        yt.last().copied().unwrap_or(qhi).max(qhi),
        c.bottom,
        c.top,
    );
    c.y_axis(&y, &yt, "mean quality");
    c.x_axis(&x, &xt, "USD per task");
    let mut front: Vec<&(usize, &ModelReport, f64, Estimate)> = pts.iter().filter(|p| p.1.pareto).collect();
    front.sort_by(|a, b| a.2.total_cmp(&b.2));
    let path: Vec<String> = front.iter().map(|p| format!("{:.1},{:.1}", x.at(p.2), y.at(p.3.value))).collect();
    c.raw(&format!(
        r##"<polyline class="front" points="{}" fill="none" stroke="#444444" stroke-dasharray="5 3"/>"##,
        path.join(" ")
    ));
    for (i, m, cost, q) in &pts {
        let (px, py) = (x.at(*cost), y.at(q.value));
        let label = format!("{} quality {:.3} at {}", m.model, q.value, markdown::usd(Some(*cost)));
        c.raw(&format!(
            r#"<g class="point" data-model="{}"><line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="{col}"/><circle cx="{px:.1}" cy="{py:.1}" r="{}" fill="{col}"><title>{}</title></circle></g>"#,
            escape(&m.model),
            y.at(q.low),
            y.at(q.high),
            if m.pareto { 6 } else { 4 },
            escape(&label),
            col = colour(*i)
        ));
        c.text(px + 8.0, py - 6.0, "start", "model", &m.model);
    }
    c.finish()
}

fn severity_colour(s: Severity) -> &'static str {
    match s {
        Severity::Info => "#6baed6",
        Severity::Warning => "#fd8d3c",
        Severity::Critical => "#cb181d",
    }
}

fn anomaly_chart(r: &Report) -> String {
    let rows = r.anomalies.len();
    let mut c = Chart::new("anomalies", "Anomaly timeline (open spans)", 70.0 + 20.0 * rows.max(1) as f64);
    let (s, e) = (r.start.timestamp() as f64, r.end.timestamp() as f64);
    let x = Scale::new(s, e, c.left, c.right);
    c.time_axis(&x, r.start, r.end);
    if rows == 0 {
        c.text((c.left + c.right) / 2.0, c.top + 20.0, "middle", "empty", "no anomalies in the period");
    }
    for (i, a) in r.anomalies.iter().enumerate() {
        let yy = c.top + 6.0 + 20.0 * i as f64;
        let from = (a.detected_at.timestamp() as f64).max(s);
        let to = a.resolved_at.map_or(e, |t| (t.timestamp() as f64).min(e));
        let kind = serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let who = if a.model.is_empty() { "(no model)".to_owned() } else { a.model.clone() };
        c.text(c.left - 6.0, yy + 11.0, "end", "model", &format!("{who} {kind}"));
        let label = format!(
            "{who} {kind} from {} {} — {}",
            a.detected_at.format("%Y-%m-%d %H:%M"),
            a.resolved_at.map_or("still open".to_owned(), |t| format!("to {}", t.format("%Y-%m-%d %H:%M"))),
            a.description
        );
        c.raw(&format!(
            r#"<rect class="span" data-model="{}" x="{:.1}" y="{yy:.1}" width="{:.1}" height="14" fill="{}"><title>{}</title></rect>"#,
            escape(&a.model),
            x.at(from),
            (x.at(to) - x.at(from)).max(2.0),
            severity_colour(a.severity),
            escape(&label)
        ));
    }
    c.finish()
}

fn anomaly_table(r: &Report) -> String {
    if r.anomalies.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "<table id=\"anomaly-table\"><tr><th>model</th><th>type</th><th>severity</th><th>opened</th>\
         <th>resolved</th><th>observed</th><th>baseline</th><th>description</th></tr>\n",
    );
    for a in &r.anomalies {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            escape(&a.model),
            escape(&markdown::kind(a.kind)),
            escape(&markdown::severity(a.severity)),
            a.detected_at.format("%Y-%m-%d %H:%M"),
            a.resolved_at.map_or("open".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
            a.observed,
            a.baseline,
            escape(&a.description)
        );
    }
    t.push_str("</table>\n");
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::{anomaly, completions, input, judgments};
    use super::*;
    use modelperf_schema::messages::AnomalyState;

    #[test]
    fn the_page_draws_every_chart_and_escapes_names() {
        let evil = "<img src=x onerror=alert(1)>";
        let mut i = input(vec![
            completions("fast", 0, 100.0, 90, 10, 1.0),
            completions("fast", 1, 120.0, 90, 10, 1.0),
            judgments("fast", 0, &[0.5, 0.7]),
            completions(evil, 0, 400.0, 50, 50, 3.0),
            judgments(evil, 0, &[0.9, 0.8]),
        ]);
        i.anomalies = vec![anomaly("f", evil, AnomalyState::Open, 1)];
        let page = render(&super::super::build(&i));
        assert!(!page.contains(evil) && !page.contains("<img") && !page.contains("<script"));
        assert!(page.contains("acme/&lt;img src=x onerror=alert(1)&gt;"));
        for id in ["latency-0", "latency-1", "success-rate", "quality", "cost", "pareto", "anomalies"] {
            assert!(page.contains(&format!("id=\"{id}\"")), "chart {id} missing");
        }
        assert!(page.contains("<polyline"), "the latency lines are drawn");
        assert!(page.contains("acme/fast p95"), "the lines are labelled");
        assert!(page.contains("90.0 %"), "the success rate of fast is written");
        // Nothing is fetched: no URL in the page besides the SVG namespace.
        let without_ns = page.replace("http://www.w3.org/2000/svg", "");
        assert!(!without_ns.contains("http://") && !without_ns.contains("https://") && !without_ns.contains(" src=\""));
    }
}
