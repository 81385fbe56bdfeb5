//! The report's charts as inline SVG, written by hand: lines, bars, points with intervals, spans
//! on a time axis, axis ticks. Every string from data goes through [`escape`]; model names are
//! untrusted input.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// Chart size in SVG user units.
pub const WIDTH: f64 = 720.0;
const MARGIN_LEFT: f64 = 170.0;
const MARGIN_RIGHT: f64 = 60.0;
const MARGIN_TOP: f64 = 28.0;
const MARGIN_BOTTOM: f64 = 34.0;

/// Colours of successive series (distinguishable, also in grey scale by position).
pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/// Escapes text for HTML and SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML text; show them as a replacement.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// About `n` round tick values covering `[lo, hi]` (steps of 1, 2 or 5 × 10ᵏ).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || n == 0 {
        return Vec::new();
    }
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A short label for a tick value.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 || (a >= 1.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let digits = (-a.log10()).ceil().max(1.0) as usize;
        format!("{v:.digits$}")
    }
}

/// A linear scale from a data range onto a pixel range.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    d0: f64,
    d1: f64,
    p0: f64,
    p1: f64,
}

impl Scale {
    /// Maps `[d0, d1]` onto `[p0, p1]`; an empty data range is widened.
    pub fn new(d0: f64, d1: f64, p0: f64, p1: f64) -> Self {
        let (d0, d1) = if d1 > d0 { (d0, d1) } else { (d0 - 0.5, d0 + 0.5) };
        Self { d0, d1, p0, p1 }
    }

    /// The pixel of a value.
    pub fn at(&self, v: f64) -> f64 {
        self.p0 + (v - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)
    }
}

/// A chart being drawn: a plot area with axes, and the SVG written so far.
#[derive(Debug)]
pub struct Chart {
    out: String,
    height: f64,
    /// The plot area's left, right, top and bottom pixels.
    pub left: f64,
    #[allow(missing_docs)]
    pub right: f64,
    #[allow(missing_docs)]
    pub top: f64,
    #[allow(missing_docs)]
    pub bottom: f64,
}

impl Chart {
    /// Opens an SVG of `height` with an accessible title; `id` names it for tests and links.
    pub fn new(id: &str, title: &str, height: f64) -> Self {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{}"><title>{}</title>"#,
            escape(id),
            escape(title),
            escape(title)
        );
        let _ = write!(out, r##"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>"##);
        Self {
            out,
            height,
            left: MARGIN_LEFT,
            right: WIDTH - MARGIN_RIGHT,
            top: MARGIN_TOP,
            bottom: height - MARGIN_BOTTOM,
        }
    }

    /// Raw SVG (callers escape data).
    pub fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// A text element; `text` is escaped.
    pub fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, text: &str) {
        let _ = write!(
            self.out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" class="{class}">{}</text>"#,
            escape(text)
        );
    }

    /// The value axis on the left with ticks and grid lines, and its label.
    pub fn y_axis(&mut self, scale: &Scale, values: &[f64], label: &str) {
        for &v in values {
            let y = scale.at(v);
            let _ = write!(
                self.out,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
                self.left, self.right
            );
            self.text(self.left - 6.0, y + 4.0, "end", "tick", &tick_label(v));
        }
        self.text(8.0, MARGIN_TOP - 10.0, "start", "axis", label);
        self.frame();
    }

    /// The value axis along the bottom with ticks and grid lines, and its label.
    pub fn x_axis(&mut self, scale: &Scale, values: &[f64], label: &str) {
        for &v in values {
            let x = scale.at(v);
            let _ = write!(
                self.out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#e0e0e0"/>"##,
                self.top, self.bottom
            );
            self.text(x, self.bottom + 14.0, "middle", "tick", &tick_label(v));
        }
        self.text(self.right, self.height - 4.0, "end", "axis", label);
    }

    /// A time axis along the bottom: about five ticks labelled by date and hour (UTC).
    pub fn time_axis(&mut self, scale: &Scale, start: DateTime<Utc>, end: DateTime<Utc>) {
        let (s, e) = (start.timestamp() as f64, end.timestamp() as f64);
        let span = e - s;
        let step = [3600.0, 3.0 * 3600.0, 6.0 * 3600.0, 12.0 * 3600.0, 86_400.0, 2.0 * 86_400.0, 7.0 * 86_400.0]
            .into_iter()
            .find(|st| span / st <= 6.0)
            .unwrap_or(span / 5.0)
            .max(1.0);
        let mut t = (s / step).ceil() * step;
        while t <= e {
            let x = scale.at(t);
            let _ = write!(
                self.out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#eeeeee"/>"##,
                self.top, self.bottom
            );
            let label = DateTime::from_timestamp(t as i64, 0).map(|d| d.format("%m-%d %H:%M").to_string());
            self.text(x, self.bottom + 14.0, "middle", "tick", &label.unwrap_or_default());
            t += step;
        }
        self.text(self.right, self.height - 4.0, "end", "axis", "time (UTC)");
    }

    fn frame(&mut self) {
        let _ = write!(
            self.out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999999"/>"##,
            self.left,
            self.top,
            self.right - self.left,
            self.bottom - self.top
        );
    }

    /// A polyline through `points` (pixels) with a dot at each; `label` is the series name and
    /// each dot's tooltip carries its value.
    pub fn line(&mut self, points: &[(f64, f64, String)], colour: &str, class: &str, label: &str, dash: Option<&str>) {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
        let dash = dash.map(|d| format!(r#" stroke-dasharray="{d}""#)).unwrap_or_default();
        let _ = write!(
            self.out,
            r#"<g class="{class}" data-series="{}"><polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>"#,
            escape(label),
            path.join(" ")
        );
        for (x, y, value) in points {
            let _ = write!(
                self.out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.2" fill="{colour}"><title>{}</title></circle>"#,
                escape(value)
            );
        }
        self.out.push_str("</g>");
    }

    /// Closes the SVG.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        let e = escape(r#"<script>alert("x")</script> & 'y'"#);
        assert_eq!(e, "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;");
        assert_eq!(escape("a\u{0}b"), "a\u{FFFD}b");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(123.0, 987.0, 5);
        assert_eq!(t, vec![200.0, 400.0, 600.0, 800.0]);
        assert_eq!(ticks(5.0, 5.0, 4), vec![4.5, 5.0, 5.5]); // widened around a single value
        assert!(ticks(f64::NAN, 1.0, 5).is_empty());
        assert_eq!(tick_label(0.004), "0.004");
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(2.5), "2.5");
    }
}
