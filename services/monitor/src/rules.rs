//! Rules as code: the alert rules file (`deploy/alerts.toml`), parsed and validated at start-up
//! with errors that name the rule and the field, and the evaluation of one rule on one window or
//! one anomaly.
//!
//! ```toml
//! [defaults]                  # optional; each rule may override
//! window = "1m"
//! for = "5m"
//! severity = "warning"
//!
//! [[rules]]
//! name = "ModelLatencyP95High"
//! type = "threshold"          # threshold | error_rate | cost_per_task | anomaly
//! metric = "latency_p95_ms"   # any field of a metrics window, or sums.<name>
//! op = ">"
//! value = 8000
//! match = { model = "gpt-4o", task_type = "~code_.*" }   # `~` = anchored regular expression
//! labels = { team = "ml-platform" }
//! annotations = { summary = "p95 of {{model}} is {{value}} ms", runbook_url = "https://..." }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use modelperf_schema::messages::{Anomaly, AnomalyState, AnomalyType, Severity, WindowMetrics};
use modelperf_schema::names::WindowSpec;
use regex::Regex;
use serde::Deserialize;

/// The dimensions a metrics window's series can have.
pub const DIMS: [&str; 6] = ["kind", "provider", "model", "model_version", "task_type", "tenant"];

/// Labels the monitor sets itself.
pub const RESERVED_LABELS: [&str; 3] = ["alertname", "severity", "anomaly_type"];

/// Fields of a metrics window a threshold can test (plus `sums.<name>`).
pub const METRICS: [&str; 20] = [
    "count",
    "weighted_count",
    "success",
    "failure",
    "success_rate",
    "error_rate",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "latency_mean_ms",
    "tokens_input",
    "tokens_output",
    "cost_usd",
    "cost_per_task",
    "unpriced",
    "quality_mean",
    "quality_n",
    "revision",
];

/// Template variables an annotation may use besides labels.
const TEMPLATE_VALUES: [&str; 8] =
    ["value", "threshold", "window", "observed", "baseline", "score", "description", "rule"];

/// A rules file that cannot be used: names the rule (by name, or by position when it has none)
/// and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {field}: {reason}")]
pub struct RuleError {
    /// `rule "Name"`, `rules[3]` or `defaults`.
    pub rule: String,
    /// The field, e.g. `for` or `annotations.summary`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        })
    }
}

/// One label matcher: an exact value, or an anchored regular expression (`~` prefix).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal to.
    Eq(String),
    /// Matches entirely.
    Re(Regex),
}

impl Matcher {
    fn matches(&self, value: Option<&str>) -> bool {
        // A missing label is the empty string, as in Alertmanager.
        let v = value.unwrap_or("");
        match self {
            Matcher::Eq(want) => v == want,
            Matcher::Re(re) => re.is_match(v),
        }
    }
}

/// All of these must match.
#[derive(Debug, Clone, Default)]
pub struct LabelMatchers(Vec<(String, Matcher)>);

impl LabelMatchers {
    /// Compiles `name → value` (or `~regex`); the error names the matcher.
    pub fn compile(raw: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut out = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let matcher = match value.strip_prefix('~') {
                Some(re) => Matcher::Re(
                    Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| format!("{name}: invalid regular expression: {e}"))?,
                ),
                None => Matcher::Eq(value.clone()),
            };
            out.push((name.clone(), matcher));
        }
        Ok(Self(out))
    }

    /// Whether every matcher holds on `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(name, m)| m.matches(labels.get(name).map(String::as_str)))
    }

    /// The names matched on.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

/// What a rule tests.
#[derive(Debug, Clone)]
pub enum Condition {
    /// A field of a metrics window compared with a threshold.
    Metric {
        /// The field (see [`METRICS`]) or `sums.<name>`.
        metric: String,
        /// The comparison.
        op: Op,
        /// The threshold.
        threshold: f64,
        /// The window length it reads.
        window: WindowSpec,
        /// Windows with fewer events are not evaluated (no data).
        min_count: u64,
    },
    /// An open anomaly from the analyzer.
    Anomaly {
        /// The anomaly types; empty: all.
        types: Vec<AnomalyType>,
        /// The least severity that counts.
        min_severity: Severity,
    },
    /// A built-in pipeline health rule, observed by [`crate::health`] (never in the file).
    Health,
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `alertname`.
    pub name: String,
    /// What it tests.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires.
    pub for_: Duration,
    /// How long the condition must be clear before a firing alert resolves; `None`: two
    /// windows of the series.
    pub keep_firing_for: Option<Duration>,
    /// The alert's severity; `None` (anomaly rules only): the anomaly's.
    pub severity: Option<Severity>,
    /// The series dimensions that identify an alert; `None`: all the series has.
    pub by: Option<Vec<String>>,
    /// Matchers on the series' dimensions.
    pub matchers: LabelMatchers,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates (`{{label}}`, `{{value}}`, ...).
    pub annotations: BTreeMap<String, String>,
}

/// What a rule saw in one window or anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the condition holds.
    pub breach: bool,
    /// Template values (`value`, `threshold`, ...).
    pub values: BTreeMap<String, String>,
    /// The alert's severity.
    pub severity: Severity,
}

/// The validated rules of a file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// In file order.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    rules: Vec<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    window: Option<String>,
    #[serde(rename = "for", default, with = "humantime_serde::option")]
    for_: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    keep_firing_for: Option<Duration>,
    severity: Option<Severity>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RuleType {
    Threshold,
    ErrorRate,
    CostPerTask,
    Anomaly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "type")]
    kind: RuleType,
    metric: Option<String>,
    op: Option<String>,
    value: Option<f64>,
    window: Option<String>,
    #[serde(rename = "for", default, with = "humantime_serde::option")]
    for_: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    keep_firing_for: Option<Duration>,
    severity: Option<Severity>,
    min_count: Option<u64>,
    by: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    matchers: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    anomaly_types: Option<Vec<AnomalyType>>,
    min_severity: Option<Severity>,
}

/// Events a window needs before `error_rate` and `cost_per_task` rules evaluate it, by default.
pub const DEFAULT_MIN_COUNT: u64 = 10;

impl Rules {
    /// Parses and validates a rules file.
    pub fn parse(text: &str) -> Result<Rules, RuleError> {
        let file: RawFile = {
            let de = toml::Deserializer::parse(text).map_err(|e| RuleError {
                rule: "file".into(),
                field: "syntax".into(),
                reason: e.to_string().trim().replace('\n', " "),
            })?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let (rule, field) = match path.strip_prefix("defaults.") {
                    Some(field) => ("defaults", field.to_owned()),
                    None => ("file", path),
                };
                RuleError { rule: rule.into(), field, reason: e.into_inner().message().to_owned() }
            })?
        };
        let defaults = &file.defaults;
        let at = |rule: &str, field: &str, reason: String| RuleError { rule: rule.into(), field: field.into(), reason };
        if let Some(w) = &defaults.window {
            w.parse::<WindowSpec>().map_err(|e| at("defaults", "window", e))?;
        }
        check_labels("defaults", &defaults.labels, &[])?;
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, value) in file.rules.into_iter().enumerate() {
            let position = format!("rules[{i}]");
            let named = value
                .get("name")
                .and_then(toml::Value::as_str)
                .map(|n| format!("rule {n:?}"))
                .unwrap_or_else(|| position.clone());
            let raw: RawRule = serde_path_to_error::deserialize(value).map_err(|e| {
                let field = e.path().to_string();
                at(&named, if field == "." { "(rule)" } else { &field }, e.into_inner().message().to_owned())
            })?;
            let rule = compile(raw, defaults, &named)?;
            if !names.insert(rule.name.clone()) {
                return Err(at(&named, "name", "another rule has this name".into()));
            }
            rules.push(rule);
        }
        Ok(Rules { rules })
    }

    /// Adds built-in rules; a rule of the file with the same name is an error naming it.
    pub fn with_builtins(mut self, builtins: Vec<Rule>) -> Result<Rules, RuleError> {
        for b in builtins {
            if self.get(&b.name).is_some() {
                return Err(RuleError {
                    rule: format!("rule {:?}", b.name),
                    field: "name".into(),
                    reason: "the name of a built-in health rule; choose another".into(),
                });
            }
            self.rules.push(b);
        }
        Ok(self)
    }

    /// The rule called `name`.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

fn compile(raw: RawRule, defaults: &RawDefaults, named: &str) -> Result<Rule, RuleError> {
    let at = |field: &str, reason: String| RuleError { rule: named.into(), field: field.into(), reason };
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 64
        && raw.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(at("name", "a rule name is 1-64 characters of [A-Za-z0-9_-]".into()));
    }
    let is_anomaly = matches!(raw.kind, RuleType::Anomaly);
    let forbid = |field: &str, present: bool, why: &str| {
        if present { Err(at(field, format!("not allowed on {why} rules"))) } else { Ok(()) }
    };
    let condition = if is_anomaly {
        forbid("metric", raw.metric.is_some(), "anomaly")?;
        forbid("op", raw.op.is_some(), "anomaly")?;
        forbid("value", raw.value.is_some(), "anomaly")?;
        forbid("window", raw.window.is_some(), "anomaly")?;
        forbid("min_count", raw.min_count.is_some(), "anomaly")?;
        Condition::Anomaly {
            types: raw.anomaly_types.unwrap_or_default(),
            min_severity: raw.min_severity.unwrap_or(Severity::Info),
        }
    } else {
        forbid("anomaly_types", raw.anomaly_types.is_some(), "metrics")?;
        forbid("min_severity", raw.min_severity.is_some(), "metrics")?;
        let (metric, default_min) = match raw.kind {
            RuleType::ErrorRate => ("error_rate".to_owned(), DEFAULT_MIN_COUNT),
            RuleType::CostPerTask => ("cost_per_task".to_owned(), DEFAULT_MIN_COUNT),
            // Threshold (anomaly rules took the other branch).
            _ => {
                let metric = raw.metric.clone().ok_or_else(|| at("metric", "required on threshold rules".into()))?;
                (metric, 0)
            }
        };
        if !matches!(raw.kind, RuleType::Threshold) && raw.metric.is_some() {
            return Err(at("metric", "implied by the rule type; remove it".into()));
        }
        let known = METRICS.contains(&metric.as_str()) || metric.strip_prefix("sums.").is_some_and(|s| !s.is_empty());
        if !known {
            return Err(at("metric", format!("unknown metric {metric:?}; known: {}, sums.<name>", METRICS.join(", "))));
        }
        let op = match raw.op.as_deref() {
            Some(s) => Op::parse(s).ok_or_else(|| at("op", format!("{s:?}: use >, >=, <, <=, == or !=")))?,
            None => Op::Gt,
        };
        let threshold = raw.value.ok_or_else(|| at("value", "required: the threshold".into()))?;
        if !threshold.is_finite() {
            return Err(at("value", "must be a finite number".into()));
        }
        let window = raw.window.as_deref().or(defaults.window.as_deref()).unwrap_or("1m");
        let window = window.parse::<WindowSpec>().map_err(|e| at("window", e))?;
        Condition::Metric { metric, op, threshold, window, min_count: raw.min_count.unwrap_or(default_min) }
    };
    let severity = match (raw.severity, is_anomaly) {
        (Some(s), _) => Some(s),
        (None, true) => None,
        (None, false) => Some(defaults.severity.unwrap_or(Severity::Warning)),
    };
    // Anomaly rules fire as soon as the analyzer opens an anomaly, unless they say otherwise.
    let for_ = raw.for_.or(if is_anomaly { None } else { defaults.for_ }).unwrap_or(Duration::ZERO);
    let keep_firing_for = raw.keep_firing_for.or(defaults.keep_firing_for);
    let matchers = LabelMatchers::compile(&raw.matchers).map_err(|e| at("match", e))?;
    if let Some(by) = &raw.by {
        for d in by {
            if !DIMS.contains(&d.as_str()) {
                return Err(at("by", format!("{d:?} is not a series dimension ({})", DIMS.join(", "))));
            }
        }
    }
    for name in matchers.names() {
        if !DIMS.contains(&name) {
            return Err(at(&format!("match.{name}"), format!("not a series dimension ({})", DIMS.join(", "))));
        }
    }
    let mut labels = defaults.labels.clone();
    labels.extend(raw.labels);
    let dims: Vec<&str> = match &raw.by {
        Some(by) => by.iter().map(String::as_str).collect(),
        None => DIMS.to_vec(),
    };
    check_labels(named, &labels, &dims)?;
    let mut annotations = raw.annotations;
    annotations.entry("summary".to_owned()).or_insert_with(|| default_summary(&raw.name, is_anomaly));
    for (key, template) in &annotations {
        for var in placeholders(template).map_err(|e| at(&format!("annotations.{key}"), e))? {
            let known = TEMPLATE_VALUES.contains(&var)
                || DIMS.contains(&var)
                || RESERVED_LABELS.contains(&var)
                || labels.contains_key(var);
            if !known {
                return Err(at(
                    &format!("annotations.{key}"),
                    format!(
                        "unknown template variable {{{{{var}}}}}; use a label or one of {}",
                        TEMPLATE_VALUES.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(url) = annotations.get("runbook_url")
        && reqwest::Url::parse(url).is_err()
    {
        return Err(at("annotations.runbook_url", format!("{url:?} is not a URL")));
    }
    Ok(Rule { name: raw.name, condition, for_, keep_firing_for, severity, by: raw.by, matchers, labels, annotations })
}

fn default_summary(name: &str, anomaly: bool) -> String {
    if anomaly {
        format!("{name}: {{{{description}}}}")
    } else {
        format!("{name}: {{{{value}}}} (threshold {{{{threshold}}}})")
    }
}

fn check_labels(rule: &str, labels: &BTreeMap<String, String>, dims: &[&str]) -> Result<(), RuleError> {
    for name in labels.keys() {
        let at = |reason: String| RuleError { rule: rule.into(), field: format!("labels.{name}"), reason };
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(at("a label name is [A-Za-z_][A-Za-z0-9_]*".into()));
        }
        if RESERVED_LABELS.contains(&name.as_str()) {
            return Err(at("set by the monitor itself".into()));
        }
        if dims.contains(&name.as_str()) {
            return Err(at("collides with a series dimension of the alert".into()));
        }
    }
    Ok(())
}

/// The variables `{{name}}` of a template.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| "an unclosed {{".to_owned())?;
        out.push(after[..close].trim());
        rest = &after[close + 2..];
    }
    Ok(out)
}

/// Fills `{{name}}` from `labels`, then `values`; unknown names become empty.
pub fn render(template: &str, labels: &BTreeMap<String, String>, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let var = after[..close].trim();
        if let Some(v) = labels.get(var).or_else(|| values.get(var)) {
            out.push_str(v);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// A number for a human: integers without a fraction, others with up to 4 significant decimals.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The value of `metric` in a window, when it has one.
pub fn metric_value(m: &WindowMetrics, metric: &str) -> Option<f64> {
    let completions = m.success + m.failure;
    Some(match metric {
        "count" => m.count as f64,
        "weighted_count" => m.weighted_count,
        "success" => m.success as f64,
        "failure" => m.failure as f64,
        "success_rate" => m.success_rate?,
        "error_rate" => {
            if completions == 0 {
                return None;
            }
            match m.success_rate {
                Some(rate) => 1.0 - rate,
                None => m.failure as f64 / completions as f64,
            }
        }
        "latency_p50_ms" => m.latency_p50_ms?,
        "latency_p90_ms" => m.latency_p90_ms?,
        "latency_p95_ms" => m.latency_p95_ms?,
        "latency_p99_ms" => m.latency_p99_ms?,
        "latency_max_ms" => m.latency_max_ms?,
        "latency_mean_ms" => m.latency_mean_ms?,
        "tokens_input" => m.tokens_input as f64,
        "tokens_output" => m.tokens_output as f64,
        "cost_usd" => m.cost_usd?,
        "cost_per_task" => {
            // The cost is of priced events only: divide by the priced share of the weighted count.
            let cost = m.cost_usd?;
            if m.count == 0 || m.unpriced >= m.count {
                return None;
            }
            let priced = m.weighted_count * (m.count - m.unpriced) as f64 / m.count as f64;
            if priced <= 0.0 {
                return None;
            }
            cost / priced
        }
        "unpriced" => m.unpriced as f64,
        "quality_mean" => m.quality_mean?,
        "quality_n" => m.quality_n as f64,
        "revision" => f64::from(m.revision),
        other => *m.sums.get(other.strip_prefix("sums.")?)?,
    })
    .filter(|v| v.is_finite())
}

impl Rule {
    fn series_labels(&self, dims: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = match &self.by {
            Some(by) => by.iter().filter_map(|d| dims.get(d).map(|v| (d.clone(), v.clone()))).collect(),
            None => {
                dims.iter().filter(|(k, _)| DIMS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
        };
        labels.extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels.insert("alertname".into(), self.name.clone());
        labels
    }

    /// The window length a metrics rule reads.
    pub fn window(&self) -> Option<&WindowSpec> {
        match &self.condition {
            Condition::Metric { window, .. } => Some(window),
            Condition::Anomaly { .. } | Condition::Health => None,
        }
    }

    /// What this rule sees in a window; `None` when it does not apply (another window length,
    /// other series, too few events, no such value).
    pub fn observe_window(&self, m: &WindowMetrics) -> Option<Observation> {
        let Condition::Metric { metric, op, threshold, window, min_count } = &self.condition else { return None };
        if m.window != window.name() {
            return None;
        }
        // error_rate and cost_per_task are about completed tasks unless the rule says otherwise.
        if matches!(metric.as_str(), "error_rate" | "cost_per_task")
            && !self.matchers.names().any(|n| n == "kind")
            && m.dims.get("kind").is_some_and(|k| k != "task_completed")
        {
            return None;
        }
        if !self.matchers.matches(&m.dims) || m.count < *min_count {
            return None;
        }
        let value = metric_value(m, metric)?;
        let severity = self.severity.unwrap_or(Severity::Warning);
        let mut labels = self.series_labels(&m.dims);
        labels.insert("severity".into(), severity_label(severity).into());
        let values = BTreeMap::from([
            ("value".to_owned(), format_number(value)),
            ("threshold".to_owned(), format_number(*threshold)),
            ("window".to_owned(), m.window.clone()),
            ("rule".to_owned(), self.name.clone()),
        ]);
        Some(Observation { labels, breach: op.holds(value, *threshold), values, severity })
    }

    /// What this rule sees in an anomaly announcement; `None` when it does not apply. An
    /// anomaly below the rule's least severity is seen as clear.
    pub fn observe_anomaly(&self, a: &Anomaly) -> Option<Observation> {
        let Condition::Anomaly { types, min_severity } = &self.condition else { return None };
        if !types.is_empty() && !types.contains(&a.kind) {
            return None;
        }
        if !self.matchers.matches(&a.series) {
            return None;
        }
        let severity = self.severity.unwrap_or(a.severity);
        let mut labels = self.series_labels(&a.series);
        labels.insert("severity".into(), severity_label(severity).into());
        labels.insert("anomaly_type".into(), anomaly_type_label(a.kind).into());
        let values = BTreeMap::from([
            ("value".to_owned(), format_number(a.observed)),
            ("observed".to_owned(), format_number(a.observed)),
            ("baseline".to_owned(), format_number(a.baseline)),
            ("score".to_owned(), format_number(a.score)),
            ("description".to_owned(), a.description.clone()),
            ("window".to_owned(), a.window.clone()),
            ("rule".to_owned(), self.name.clone()),
        ]);
        let breach = a.state == AnomalyState::Open && a.severity >= *min_severity;
        Some(Observation { labels, breach, values, severity })
    }
}

/// The label value of a severity.
pub fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The label value of an anomaly type.
pub fn anomaly_type_label(t: AnomalyType) -> &'static str {
    match t {
        AnomalyType::LatencySpike => "latency_spike",
        AnomalyType::ErrorRateIncrease => "error_rate_increase",
        AnomalyType::QualityDrop => "quality_drop",
        AnomalyType::CostSpike => "cost_spike",
        AnomalyType::ThroughputDrop => "throughput_drop",
        AnomalyType::UnpricedModel => "unpriced_model",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> RuleError {
        Rules::parse(text).unwrap_err()
    }

    fn window(dims: &[(&str, &str)]) -> WindowMetrics {
        WindowMetrics {
            window: "1m".into(),
            dims: dims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            count: 100,
            weighted_count: 200.0,
            success: 90,
            failure: 10,
            latency_p95_ms: Some(9_000.0),
            cost_usd: Some(1.5),
            unpriced: 25,
            ..Default::default()
        }
    }

    #[test]
    fn the_shipped_rules_are_valid() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/alerts.toml")).unwrap();
        let rules = Rules::parse(&text).unwrap();
        assert!(rules.rules.len() >= 4);
        assert!(rules.rules.iter().any(|r| matches!(r.condition, Condition::Anomaly { .. })));
        for r in &rules.rules {
            assert!(r.annotations.contains_key("summary"), "{}", r.name);
            assert!(r.annotations.contains_key("runbook_url"), "{}", r.name);
        }
    }

    #[test]
    fn a_threshold_with_matchers_reads_its_series() {
        let rules = Rules::parse(
            r#"
[defaults]
for = "5m"
[[rules]]
name = "P95High"
type = "threshold"
metric = "latency_p95_ms"
op = ">"
value = 8000
match = { model = "gpt-4o", task_type = "~code_.*" }
labels = { team = "ml" }
annotations = { summary = "p95 of {{model}} on {{task_type}} is {{value}} ms (> {{threshold}})", runbook_url = "https://runbooks.example/p95" }
"#,
        )
        .unwrap();
        let r = &rules.rules[0];
        assert_eq!(r.for_, Duration::from_secs(300));
        let dims =
            [("kind", "task_completed"), ("model", "gpt-4o"), ("task_type", "code_edit"), ("provider", "openai")];
        let o = r.observe_window(&window(&dims)).unwrap();
        assert!(o.breach);
        assert_eq!(o.labels["alertname"], "P95High");
        assert_eq!(o.labels["severity"], "warning");
        assert_eq!(o.labels["team"], "ml");
        assert_eq!(o.labels["provider"], "openai");
        assert_eq!(
            render(&r.annotations["summary"], &o.labels, &o.values),
            "p95 of gpt-4o on code_edit is 9000 ms (> 8000)"
        );
        assert!(r.observe_window(&window(&[("model", "gpt-4o"), ("task_type", "summarize")])).is_none());
        assert!(r.observe_window(&window(&[("model", "gpt-4o-mini"), ("task_type", "code_edit")])).is_none());
        let mut hourly = window(&dims);
        hourly.window = "1h".into();
        assert!(r.observe_window(&hourly).is_none(), "another window length");
        let mut fast = window(&dims);
        fast.latency_p95_ms = Some(100.0);
        assert!(!r.observe_window(&fast).unwrap().breach);
    }

    #[test]
    fn error_rate_and_cost_per_task_are_derived() {
        let rules = Rules::parse(
            r#"
[[rules]]
name = "Errors"
type = "error_rate"
value = 0.05
by = ["model"]
[[rules]]
name = "Cost"
type = "cost_per_task"
value = 0.01
min_count = 50
"#,
        )
        .unwrap();
        let w = window(&[("kind", "task_completed"), ("model", "m"), ("tenant", "t")]);
        let o = rules.rules[0].observe_window(&w).unwrap();
        assert!(o.breach);
        assert_eq!(o.values["value"], "0.1");
        assert_eq!(o.labels.keys().collect::<Vec<_>>(), ["alertname", "model", "severity"]);
        // 1.5 USD over 200 × 75/100 = 150 priced tasks.
        let o = rules.rules[1].observe_window(&w).unwrap();
        assert_eq!(o.values["value"], "0.01");
        assert!(!o.breach);
        assert!(rules.rules[0].observe_window(&window(&[("kind", "judgment")])).is_none(), "completions only");
        let mut few = w.clone();
        few.count = 5;
        assert!(rules.rules[0].observe_window(&few).is_none(), "below min_count");
    }

    #[test]
    fn mistakes_name_the_rule_and_the_field() {
        let cases = [
            ("[[rules]]\nname = \"A\"\ntype = \"threshold\"\nvalue = 1\n", "rule \"A\": metric"),
            (
                "[[rules]]\nname = \"A\"\ntype = \"threshold\"\nmetric = \"latency_p42\"\nvalue = 1\n",
                "rule \"A\": metric",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"threshold\"\nmetric = \"count\"\nvalue = 1\nop = \"=>\"\n",
                "rule \"A\": op",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"threshold\"\nmetric = \"count\"\nvalue = 1\nfor = \"soon\"\n",
                "rule \"A\": for",
            ),
            ("[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nwindow = \"1x\"\n", "rule \"A\": window"),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nseverity = \"dire\"\n",
                "rule \"A\": severity",
            ),
            ("[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nfo = \"1m\"\n", "rule \"A\": fo"),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nmatch = { modle = \"x\" }\n",
                "rule \"A\": match.modle",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nmatch = { model = \"~(\" }\n",
                "rule \"A\": match",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nlabels = { severity = \"x\" }\n",
                "rule \"A\": labels.severity",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nlabels = { model = \"x\" }\n",
                "rule \"A\": labels.model",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nannotations = { summary = \"{{nope}}\" }\n",
                "rule \"A\": annotations.summary",
            ),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\nannotations = { runbook_url = \"wiki page\" }\n",
                "rule \"A\": annotations.runbook_url",
            ),
            ("[[rules]]\nname = \"A\"\ntype = \"anomaly\"\nvalue = 1\n", "rule \"A\": value"),
            ("[[rules]]\nname = \"A\"\ntype = \"anomaly\"\nanomaly_types = [\"vibes\"]\n", "rule \"A\": anomaly_types"),
            ("[[rules]]\nname = \"A\"\ntype = \"cpu\"\n", "rule \"A\": type"),
            ("[[rules]]\ntype = \"error_rate\"\nvalue = 1\n", "rules[0]"),
            ("[[rules]]\nname = \"a b\"\ntype = \"error_rate\"\nvalue = 1\n", "rule \"a b\": name"),
            (
                "[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 1\n[[rules]]\nname = \"A\"\ntype = \"error_rate\"\nvalue = 2\n",
                "rule \"A\": name",
            ),
            ("[defaults]\nfor = \"x\"\n", "defaults: for"),
            ("[[rules]\n", "file: syntax"),
        ];
        for (text, want) in cases {
            let e = err(text).to_string();
            assert!(e.starts_with(want), "{want:?} not at the start of {e:?}");
        }
    }

    #[test]
    fn anomaly_rules_follow_the_anomaly() {
        let rules = Rules::parse(
            "[[rules]]\nname = \"Spikes\"\ntype = \"anomaly\"\nanomaly_types = [\"latency_spike\"]\nmin_severity = \"warning\"\n",
        )
        .unwrap();
        let r = &rules.rules[0];
        assert_eq!(r.for_, Duration::ZERO);
        let mut a = Anomaly {
            id: "a1".into(),
            fingerprint: "f".into(),
            kind: AnomalyType::LatencySpike,
            severity: Severity::Critical,
            state: AnomalyState::Open,
            series: BTreeMap::from([("model".into(), "m".into())]),
            window: "1m".into(),
            observed: 900.0,
            baseline: 300.0,
            score: 7.5,
            detected_at: chrono::Utc::now(),
            resolved_at: None,
            description: "p95 tripled".into(),
        };
        let o = r.observe_anomaly(&a).unwrap();
        assert!(o.breach);
        assert_eq!(o.labels["severity"], "critical");
        assert_eq!(o.labels["anomaly_type"], "latency_spike");
        assert_eq!(render(&r.annotations["summary"], &o.labels, &o.values), "Spikes: p95 tripled");
        a.severity = Severity::Info;
        assert!(!r.observe_anomaly(&a).unwrap().breach, "below min_severity");
        a.kind = AnomalyType::CostSpike;
        assert!(r.observe_anomaly(&a).is_none());
    }
}
