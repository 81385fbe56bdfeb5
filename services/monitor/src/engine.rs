//! The alert lifecycle, pure: observations of rules in, transitions out, nothing else.
//!
//! An alert is one rule on one set of labels (its fingerprint). Its condition is observed in
//! metrics windows (or anomaly announcements); time is the windows' time, never the wall clock,
//! so a backlog read after an outage is judged as it would have been live:
//!
//! - **inactive → pending** on the first breaching window (`since` = its start);
//! - **pending → firing** once breaching windows cover `for` (`end − since ≥ for`; `for = 0`
//!   fires on the first); a clear window while pending goes back to inactive, silently;
//! - **firing → resolved** once the condition has been clear for the hold: `keep_firing_for`
//!   (default two windows of the series) doubled for every re-fire within `flap.window` of the
//!   previous resolution, up to `2^flap.max_level` and at most `flap.window`. A condition that
//!   toggles every window therefore stays firing and notifies twice: once when it starts, once
//!   when it has really stopped;
//! - a series without a window for `absent_after` resolves (its data is gone) and a rule that
//!   is no longer in the rules file resolves at the next tick.
//!
//! The clock of held anomaly resolutions and absent series is, per window length, the end of the
//! newest window seen, advanced by [`Engine::tick`] to at least the wall clock minus
//! `clock_lag`, so decisions are made even when no window arrives at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use modelperf_schema::messages::{Alert, AlertState, Anomaly, AnomalyState, Severity, WindowMetrics};
use modelperf_schema::names::WindowSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rules::{Condition, Observation, Rule, Rules, render};

/// The clock (and window name) of health alerts: observed on the wall clock at each evaluation.
pub const HEALTH_CLOCK: &str = "health";

/// Settings of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// A series silent this long (metrics time) resolves.
    pub absent_after: Duration,
    /// The clock lags the wall clock by at most this much at a tick.
    pub clock_lag: Duration,
    /// How long a resolution counts towards flapping; the longest hold.
    pub flap_window: Duration,
    /// The largest doubling of the hold.
    pub max_flap_level: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            absent_after: Duration::from_secs(600),
            clock_lag: Duration::from_secs(300),
            flap_window: Duration::from_secs(3_600),
            max_flap_level: 4,
        }
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The condition is clear.
    Inactive,
    /// Breached since `since`, not yet for long enough.
    Pending {
        /// Start of the first breaching window.
        since: DateTime<Utc>,
    },
    /// Notified as firing.
    Firing {
        /// When the condition started (`starts_at`).
        since: DateTime<Utc>,
        /// Start of the first clear window since, while the resolution is held.
        clear_since: Option<DateTime<Utc>>,
    },
}

/// One alert's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The rule.
    pub rule: String,
    /// Its labels (the fingerprint is their hash).
    pub labels: BTreeMap<String, String>,
    /// Annotations rendered at the latest observation.
    pub annotations: BTreeMap<String, String>,
    /// Severity.
    pub severity: Severity,
    /// The window length of its series (metrics) or of the anomaly's detection.
    pub window: String,
    /// Where it stands.
    pub phase: Phase,
    /// Start of the latest window observed (metrics rules; older windows are ignored).
    pub last_start: Option<DateTime<Utc>>,
    /// Metrics time of the latest observation.
    pub last_seen: DateTime<Utc>,
    /// The analyzer's fingerprint of the anomaly (anomaly rules).
    pub anomaly: Option<String>,
    /// Re-fires within the flap window, for the hold's doubling.
    pub flap_level: u32,
    /// When it last resolved (metrics time).
    pub last_resolved: Option<DateTime<Utc>>,
}

/// What a checkpoint keeps of the lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// Alerts by fingerprint (inactive ones while they matter for flapping or pending).
    pub alerts: BTreeMap<String, Entry>,
    /// Per window length, the end of the newest window seen.
    pub clocks: BTreeMap<String, DateTime<Utc>>,
}

/// A notified change: firing or resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The alert as it is now.
    pub alert: Alert,
    /// `firing-<starts_at ms>` or `resolved-<starts_at ms>`: with the fingerprint, the idempotency
    /// key of every delivery of this transition.
    pub id: String,
}

/// The fingerprint of a label set: the first 16 hex digits of SHA-256 over `name=value\n`, in
/// name order.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

/// The transition id of an alert in `state` that started at `starts_at`.
pub fn transition_id(state: AlertState, starts_at: DateTime<Utc>) -> String {
    format!("{}-{}", state.as_str(), starts_at.timestamp_millis())
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn window_len(name: &str) -> Duration {
    name.parse::<WindowSpec>().map(|w| w.duration()).unwrap_or(Duration::from_secs(60))
}

/// The lifecycle of every alert.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Arc<Rules>,
    config: EngineConfig,
    state: EngineState,
    /// Every transition in order, the notified ones and those only recorded (an alert becoming
    /// pending, or a pending one clearing before its `for`), until [`Engine::take_journal`].
    journal: Vec<Transition>,
}

impl Engine {
    /// An engine over `rules`, restored from `state`.
    pub fn new(rules: Arc<Rules>, config: EngineConfig, state: EngineState) -> Self {
        Self { rules, config, state, journal: Vec::new() }
    }

    /// Every transition since the last call, in order, for `perf.alerts.<state>`: the notified
    /// ones the observe and tick calls returned, and between them those only recorded —
    /// `pending` (breached, not yet for its `for`) and `inactive` (a pending alert that cleared
    /// before it fired). An alert that fires in the observation that made it pending records
    /// no `pending`.
    pub fn take_journal(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.journal)
    }

    /// What a checkpoint keeps.
    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// Firing alerts, by fingerprint.
    pub fn firing(&self) -> Vec<Alert> {
        self.state
            .alerts
            .iter()
            .filter_map(|(fp, e)| match e.phase {
                Phase::Firing { since, .. } => Some(alert(fp, e, AlertState::Firing, since, None)),
                _ => None,
            })
            .collect()
    }

    /// How many alerts are pending and firing.
    pub fn counts(&self) -> (usize, usize) {
        let pending = self.state.alerts.values().filter(|e| matches!(e.phase, Phase::Pending { .. })).count();
        let firing = self.state.alerts.values().filter(|e| matches!(e.phase, Phase::Firing { .. })).count();
        (pending, firing)
    }

    /// Applies a metrics window to every rule that reads it.
    pub fn observe_metrics(&mut self, m: &WindowMetrics) -> Vec<Transition> {
        let clock = self.state.clocks.entry(m.window.clone()).or_insert(m.end);
        *clock = (*clock).max(m.end);
        let mut out = Vec::new();
        let rules = self.rules.clone();
        for rule in &rules.rules {
            if let Some(obs) = rule.observe_window(m) {
                self.apply(rule, obs, Some(m.start), m.end, &m.window, None, &mut out);
            }
        }
        out
    }

    /// Applies an anomaly announcement to every anomaly rule that reads it.
    pub fn observe_anomaly(&mut self, a: &Anomaly) -> Vec<Transition> {
        let at = match a.state {
            AnomalyState::Open => a.detected_at,
            AnomalyState::Resolved => a.resolved_at.unwrap_or(a.detected_at),
        };
        let mut out = Vec::new();
        let rules = self.rules.clone();
        for rule in &rules.rules {
            let Some(obs) = rule.observe_anomaly(a) else { continue };
            // The same anomaly under other labels (its severity changed): that alert ends now.
            let fp = fingerprint(&obs.labels);
            let stale: Vec<String> = self
                .state
                .alerts
                .iter()
                .filter(|(k, e)| **k != fp && e.rule == rule.name && e.anomaly.as_deref() == Some(&a.fingerprint))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.end(&k, at, at, &mut out);
            }
            self.apply(rule, obs, None, at, &a.window, Some(&a.fingerprint), &mut out);
        }
        out
    }

    /// Applies what the health checks saw at `now` (wall clock: health has no windows); each
    /// observation names its built-in rule.
    pub fn observe_health(&mut self, observations: Vec<(String, Observation)>, now: DateTime<Utc>) -> Vec<Transition> {
        let clock = self.state.clocks.entry(HEALTH_CLOCK.to_owned()).or_insert(now);
        *clock = (*clock).max(now);
        let mut out = Vec::new();
        let rules = self.rules.clone();
        for (name, obs) in observations {
            let Some(rule) = rules.get(&name) else { continue };
            self.apply(rule, obs, Some(now), now, HEALTH_CLOCK, None, &mut out);
        }
        out
    }

    #[allow(clippy::too_many_arguments)] // one observation's parts
    fn apply(
        &mut self,
        rule: &Rule,
        obs: Observation,
        start: Option<DateTime<Utc>>,
        end: DateTime<Utc>,
        window: &str,
        anomaly: Option<&str>,
        out: &mut Vec<Transition>,
    ) {
        let fp = fingerprint(&obs.labels);
        let annotations =
            rule.annotations.iter().map(|(k, t)| (k.clone(), render(t, &obs.labels, &obs.values))).collect();
        let entry = self.state.alerts.entry(fp.clone()).or_insert_with(|| Entry {
            rule: rule.name.clone(),
            labels: obs.labels.clone(),
            annotations: BTreeMap::new(),
            severity: obs.severity,
            window: window.to_owned(),
            phase: Phase::Inactive,
            last_start: None,
            last_seen: end,
            anomaly: None,
            flap_level: 0,
            last_resolved: None,
        });
        if let Some(start) = start {
            // A window older than the latest one seen is history; the latest may be revised.
            if entry.last_start.is_some_and(|last| start < last) {
                return;
            }
            entry.last_start = Some(start);
        }
        entry.last_seen = entry.last_seen.max(end);
        entry.annotations = annotations;
        entry.severity = obs.severity;
        entry.window = window.to_owned();
        if let Some(a) = anomaly {
            entry.anomaly = Some(a.to_owned());
        }
        let began = start.unwrap_or(end);
        if obs.breach {
            let entered = entry.phase == Phase::Inactive;
            match entry.phase {
                Phase::Inactive => entry.phase = Phase::Pending { since: began },
                Phase::Pending { .. } => {}
                Phase::Firing { since, .. } => entry.phase = Phase::Firing { since, clear_since: None },
            }
            if let Phase::Pending { since } = entry.phase {
                if end - since >= delta(rule.for_) {
                    self.fire(&fp, since, end, out);
                } else if entered {
                    self.record(&fp, AlertState::Pending, since, None);
                }
            }
        } else {
            match entry.phase {
                Phase::Inactive => {}
                Phase::Pending { since } => {
                    entry.phase = Phase::Inactive;
                    self.record(&fp, AlertState::Inactive, since, Some(began.max(since)));
                }
                Phase::Firing { since, clear_since } => {
                    let cleared = clear_since.unwrap_or(began);
                    entry.phase = Phase::Firing { since, clear_since: Some(cleared) };
                    let hold = self.hold(rule, &self.state.alerts[&fp]);
                    if end - cleared >= hold {
                        self.end(&fp, cleared, end, out);
                    }
                }
            }
        }
    }

    /// Records a transition that notifies nobody.
    fn record(&mut self, fp: &str, state: AlertState, since: DateTime<Utc>, ends_at: Option<DateTime<Utc>>) {
        let Some(e) = self.state.alerts.get(fp) else { return };
        metrics::counter!("modelperf_monitor_transitions_total", "state" => state.as_str()).increment(1);
        self.journal.push(Transition { id: transition_id(state, since), alert: alert(fp, e, state, since, ends_at) });
    }

    /// How long the condition must be clear before the alert resolves.
    fn hold(&self, rule: &Rule, e: &Entry) -> TimeDelta {
        let base = rule.keep_firing_for.unwrap_or_else(|| 2 * window_len(&e.window));
        let doubled = base.saturating_mul(1u32 << e.flap_level.min(self.config.max_flap_level).min(16));
        delta(doubled.min(self.config.flap_window.max(base)))
    }

    fn fire(&mut self, fp: &str, since: DateTime<Utc>, at: DateTime<Utc>, out: &mut Vec<Transition>) {
        let flap_window = delta(self.config.flap_window);
        let max_level = self.config.max_flap_level;
        let Some(e) = self.state.alerts.get_mut(fp) else { return };
        e.flap_level = match e.last_resolved {
            Some(resolved) if at - resolved < flap_window => (e.flap_level + 1).min(max_level),
            _ => 0,
        };
        e.phase = Phase::Firing { since, clear_since: None };
        let alert = alert(fp, e, AlertState::Firing, since, None);
        metrics::counter!("modelperf_monitor_transitions_total", "state" => "firing").increment(1);
        let t = Transition { id: transition_id(AlertState::Firing, since), alert };
        self.journal.push(t.clone());
        out.push(t);
    }

    /// Resolves a firing alert (`ends_at` = when the condition ended; `at` = metrics time of
    /// the decision); a pending one just goes back to inactive.
    fn end(&mut self, fp: &str, ends_at: DateTime<Utc>, at: DateTime<Utc>, out: &mut Vec<Transition>) {
        let Some(e) = self.state.alerts.get_mut(fp) else { return };
        match e.phase {
            Phase::Inactive => {}
            Phase::Pending { since } => {
                e.phase = Phase::Inactive;
                self.record(fp, AlertState::Inactive, since, Some(ends_at.max(since)));
            }
            Phase::Firing { since, .. } => {
                e.phase = Phase::Inactive;
                e.last_resolved = Some(at);
                let ends_at = ends_at.max(since + TimeDelta::milliseconds(1));
                let alert = alert(fp, e, AlertState::Resolved, since, Some(ends_at));
                metrics::counter!("modelperf_monitor_transitions_total", "state" => "resolved").increment(1);
                let t = Transition { id: transition_id(AlertState::Resolved, since), alert };
                self.journal.push(t.clone());
                out.push(t);
            }
        }
    }

    /// Decides what time alone decides: anomaly alerts whose `for` or hold has passed, absent
    /// series, alerts of removed rules; forgets alerts that no longer matter.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Transition> {
        let floor = now - delta(self.config.clock_lag);
        for clock in self.state.clocks.values_mut() {
            *clock = (*clock).max(floor);
        }
        let absent = delta(self.config.absent_after);
        let flap_window = delta(self.config.flap_window);
        let mut out = Vec::new();
        let fps: Vec<String> = self.state.alerts.keys().cloned().collect();
        for fp in fps {
            let e = &self.state.alerts[&fp];
            let clock = self.state.clocks.get(&e.window).copied().unwrap_or(floor).max(floor);
            let Some(rule) = self.rules.get(&e.rule).cloned() else {
                self.end(&fp, clock, clock, &mut out);
                self.state.alerts.remove(&fp);
                continue;
            };
            let is_anomaly = matches!(rule.condition, Condition::Anomaly { .. });
            match e.phase {
                Phase::Pending { since } if is_anomaly && clock - since >= delta(rule.for_) => {
                    self.fire(&fp, since, clock, &mut out);
                }
                Phase::Firing { clear_since: Some(cleared), .. }
                    if is_anomaly && clock - cleared >= self.hold(&rule, e) =>
                {
                    self.end(&fp, cleared, clock, &mut out);
                }
                Phase::Pending { .. } | Phase::Firing { .. } if !is_anomaly && clock - e.last_seen >= absent => {
                    // The series stopped: nothing says the condition still holds.
                    let ends_at = match e.phase {
                        Phase::Firing { clear_since: Some(cleared), .. } => cleared,
                        _ => e.last_seen,
                    };
                    self.end(&fp, ends_at, clock, &mut out);
                }
                _ => {}
            }
            let e = &self.state.alerts[&fp];
            let forgettable = e.phase == Phase::Inactive
                && e.last_resolved.is_none_or(|r| clock - r >= flap_window)
                && (is_anomaly || clock - e.last_seen >= absent);
            if forgettable {
                self.state.alerts.remove(&fp);
            }
        }
        out
    }
}

fn alert(fp: &str, e: &Entry, state: AlertState, since: DateTime<Utc>, ends_at: Option<DateTime<Utc>>) -> Alert {
    Alert {
        fingerprint: fp.to_owned(),
        labels: e.labels.clone(),
        annotations: e.annotations.clone(),
        state,
        starts_at: since,
        ends_at,
        severity: e.severity,
        source: format!("rule:{}", e.rule),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RULES: &str = r#"
[[rules]]
name = "Slow"
type = "threshold"
metric = "latency_p95_ms"
value = 1000
for = "3m"
[[rules]]
name = "SlowNow"
type = "threshold"
metric = "latency_p95_ms"
value = 1000
for = "0s"
[[rules]]
name = "Spike"
type = "anomaly"
"#;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn engine(rules: &str) -> Engine {
        Engine::new(Arc::new(Rules::parse(rules).unwrap()), EngineConfig::default(), EngineState::default())
    }

    /// Window `i` (1 minute) of the series `model`, breaching or not.
    fn window(model: &str, i: i64, breach: bool) -> WindowMetrics {
        let start = t0() + TimeDelta::minutes(i);
        WindowMetrics {
            window: "1m".into(),
            start,
            end: start + TimeDelta::minutes(1),
            dims: BTreeMap::from([("kind".into(), "task_completed".into()), ("model".into(), model.into())]),
            count: 10,
            weighted_count: 10.0,
            latency_p95_ms: Some(if breach { 5000.0 } else { 100.0 }),
            ..Default::default()
        }
    }

    fn of_rule<'a>(ts: &'a [Transition], rule: &str) -> Vec<&'a Transition> {
        ts.iter().filter(|t| t.alert.labels["alertname"] == rule).collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_after_the_hold() {
        let mut e = engine(RULES);
        let mut seen = Vec::new();
        for i in 0..3 {
            seen.extend(e.observe_metrics(&window("m", i, true)));
        }
        let slow = of_rule(&seen, "Slow");
        assert_eq!(slow.len(), 1, "fires once breaches cover 3m");
        assert_eq!(slow[0].alert.state, AlertState::Firing);
        assert_eq!(slow[0].alert.starts_at, t0());
        assert_eq!(slow[0].id, format!("firing-{}", t0().timestamp_millis()));
        assert_eq!(slow[0].alert.labels["model"], "m");
        assert_eq!(of_rule(&seen, "SlowNow").len(), 1, "for = 0 fires on the first window");
        // One clear window holds; the second resolves, ending at the first clear window.
        let held = e.observe_metrics(&window("m", 3, false));
        assert!(held.is_empty());
        let resolved = e.observe_metrics(&window("m", 4, false));
        assert_eq!(resolved.len(), 2);
        assert!(resolved.iter().all(|t| t.alert.state == AlertState::Resolved));
        assert_eq!(resolved[0].alert.ends_at, Some(t0() + TimeDelta::minutes(3)));
        assert_eq!(resolved[0].alert.fingerprint, slow[0].alert.fingerprint);
    }

    #[test]
    fn a_clear_window_while_pending_is_silent() {
        let mut e = engine(RULES);
        assert!(of_rule(&e.observe_metrics(&window("m", 0, true)), "Slow").is_empty());
        assert!(of_rule(&e.observe_metrics(&window("m", 1, true)), "Slow").is_empty());
        assert!(of_rule(&e.observe_metrics(&window("m", 2, false)), "Slow").is_empty());
        assert!(of_rule(&e.observe_metrics(&window("m", 3, true)), "Slow").is_empty(), "pending starts over");
    }

    #[test]
    fn the_journal_records_pending_and_inactive_between_the_notified_transitions() {
        let mut e = engine(RULES);
        let states = |j: Vec<Transition>| -> Vec<(String, AlertState)> {
            j.into_iter().map(|t| (t.alert.labels["alertname"].clone(), t.alert.state)).collect()
        };
        let name = |s: &str| s.to_owned();
        // Pending, then cleared before its `for`: recorded, never returned as notified.
        assert!(of_rule(&e.observe_metrics(&window("m", 0, true)), "Slow").is_empty());
        let j = e.take_journal();
        assert_eq!(states(j.clone()), [(name("Slow"), AlertState::Pending), (name("SlowNow"), AlertState::Firing)]);
        assert_eq!(j[0].id, format!("pending-{}", t0().timestamp_millis()));
        assert!(e.take_journal().is_empty(), "taken");
        e.observe_metrics(&window("m", 1, false));
        let j = e.take_journal();
        assert_eq!(j[0].alert.state, AlertState::Inactive);
        assert_eq!((j[0].alert.starts_at, j[0].alert.ends_at), (t0(), Some(t0() + TimeDelta::minutes(1))));
        assert_eq!(j[0].id, format!("inactive-{}", t0().timestamp_millis()));
        // Pending again, then firing: the journal has both, in order, with the notified one equal
        // to what observe returned.
        let mut notified = Vec::new();
        for i in 2..5 {
            notified.extend(of_rule(&e.observe_metrics(&window("m", i, true)), "Slow").into_iter().cloned());
        }
        let slow: Vec<Transition> =
            e.take_journal().into_iter().filter(|t| t.alert.labels["alertname"] == "Slow").collect();
        assert_eq!(slow.iter().map(|t| t.alert.state).collect::<Vec<_>>(), [AlertState::Pending, AlertState::Firing]);
        assert_eq!(slow[1], notified[0]);
        // `for = 0` fires in the observation that made it pending: no pending record.
        let mut e = engine(RULES);
        e.observe_metrics(&window("n", 0, true));
        let now: Vec<Transition> =
            e.take_journal().into_iter().filter(|t| t.alert.labels["alertname"] == "SlowNow").collect();
        assert_eq!(now.iter().map(|t| t.alert.state).collect::<Vec<_>>(), [AlertState::Firing]);
    }

    #[test]
    fn fingerprints_come_from_labels_and_series_are_apart() {
        let mut e = engine(RULES);
        let a = e.observe_metrics(&window("a", 0, true));
        let b = e.observe_metrics(&window("b", 0, true));
        assert_ne!(a[0].alert.fingerprint, b[0].alert.fingerprint);
        assert_eq!(a[0].alert.fingerprint, fingerprint(&a[0].alert.labels));
        assert_eq!(e.firing().len(), 2);
    }

    #[test]
    fn old_windows_are_ignored_and_revisions_re_evaluated() {
        let mut e = engine(RULES);
        e.observe_metrics(&window("m", 5, true));
        assert!(e.observe_metrics(&window("m", 2, false)).is_empty(), "older than the latest");
        let mut revised = window("m", 5, false);
        revised.revision = 1;
        assert!(e.observe_metrics(&revised).is_empty(), "held, not resolved, by one clear revision");
        assert_eq!(e.firing().len(), 1);
    }

    #[test]
    fn absent_series_resolve_and_removed_rules_resolve() {
        let mut e = engine(RULES);
        e.observe_metrics(&window("m", 0, true));
        let t = e.tick(t0() + TimeDelta::minutes(5));
        assert!(t.is_empty(), "not absent yet");
        let t = e.tick(t0() + TimeDelta::minutes(17));
        assert_eq!(t.len(), 1, "SlowNow resolves; Slow was pending and is dropped");
        assert_eq!(t[0].alert.ends_at, Some(t0() + TimeDelta::minutes(1)));
        let mut e = engine(RULES);
        e.observe_metrics(&window("m", 0, true));
        let mut e = Engine::new(
            Arc::new(Rules::parse("[[rules]]\nname = \"Other\"\ntype = \"anomaly\"\n").unwrap()),
            EngineConfig::default(),
            e.state().clone(),
        );
        let t = e.tick(t0() + TimeDelta::minutes(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].alert.state, AlertState::Resolved);
        assert!(e.state().alerts.is_empty());
    }

    fn anomaly(state: AnomalyState, at: DateTime<Utc>, severity: Severity) -> Anomaly {
        Anomaly {
            id: format!("a-{at}"),
            fingerprint: "af".into(),
            kind: modelperf_schema::messages::AnomalyType::LatencySpike,
            severity,
            state,
            series: BTreeMap::from([("model".into(), "m".into())]),
            window: "1m".into(),
            observed: 2.0,
            baseline: 1.0,
            score: 6.0,
            detected_at: t0(),
            resolved_at: (state == AnomalyState::Resolved).then_some(at),
            description: "latency doubled".into(),
        }
    }

    #[test]
    fn anomalies_fire_at_once_and_resolve_after_the_hold() {
        let mut e = engine(RULES);
        let t = e.observe_anomaly(&anomaly(AnomalyState::Open, t0(), Severity::Warning));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].alert.labels["anomaly_type"], "latency_spike");
        assert_eq!(t[0].alert.annotations["summary"], "Spike: latency doubled");
        let resolved_at = t0() + TimeDelta::minutes(10);
        assert!(e.observe_anomaly(&anomaly(AnomalyState::Resolved, resolved_at, Severity::Warning)).is_empty());
        let mut m = window("x", 10, false);
        m.end = resolved_at + TimeDelta::minutes(1);
        e.observe_metrics(&m);
        assert!(e.tick(resolved_at - TimeDelta::hours(1)).is_empty(), "one window of clock: held");
        m.start = m.end;
        m.end += TimeDelta::minutes(1);
        e.observe_metrics(&m);
        let t = e.tick(resolved_at - TimeDelta::hours(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].alert.ends_at, Some(resolved_at));
        // A severity change is a new alert, and the old one ends.
        let mut e = engine(RULES);
        e.observe_anomaly(&anomaly(AnomalyState::Open, t0(), Severity::Warning));
        let t = e.observe_anomaly(&anomaly(AnomalyState::Open, t0(), Severity::Critical));
        assert_eq!(t.iter().map(|t| t.alert.state).collect::<Vec<_>>(), [AlertState::Resolved, AlertState::Firing]);
        assert_eq!(t[1].alert.labels["severity"], "critical");
    }

    /// Runs `pattern` (breach per window) through a fresh engine with the rule `for` minutes,
    /// then `tail` clear windows; returns the notified states of the one alert.
    fn run(pattern: &[bool], for_min: u32, tail: usize, checkpoint_at: Option<usize>) -> Vec<(AlertState, String)> {
        let rules = format!(
            "[[rules]]\nname = \"R\"\ntype = \"threshold\"\nmetric = \"latency_p95_ms\"\nvalue = 1000\nfor = \"{for_min}m\"\n"
        );
        let mut e = engine(&rules);
        let mut out = Vec::new();
        let all: Vec<bool> = pattern.iter().copied().chain(std::iter::repeat_n(false, tail)).collect();
        for (i, breach) in all.iter().enumerate() {
            if checkpoint_at == Some(i) {
                let bytes = rmp_serde::to_vec_named(e.state()).unwrap();
                let state: EngineState = rmp_serde::from_slice(&bytes).unwrap();
                e = Engine::new(e.rules.clone(), e.config, state);
            }
            let w = window("m", i as i64, *breach);
            out.extend(e.observe_metrics(&w).into_iter().map(|t| (t.alert.state, t.id)));
            out.extend(e.tick(w.end).into_iter().map(|t| (t.alert.state, t.id)));
        }
        out
    }

    #[test]
    fn a_condition_toggling_every_window_for_20_windows_notifies_twice() {
        let toggling: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        let n = run(&toggling, 0, 5, None);
        assert_eq!(n.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [AlertState::Firing, AlertState::Resolved]);
    }

    #[test]
    fn slower_flapping_is_damped_by_doubling_the_hold() {
        // Two breaching windows, two clear, ten times.
        let pattern: Vec<bool> = (0..40).map(|i| (i / 2) % 2 == 0).collect();
        let n = run(&pattern, 0, 40, None);
        assert!(n.len() <= 4, "{n:?}");
        assert_eq!(n.last().unwrap().0, AlertState::Resolved);
    }

    proptest! {
        #[test]
        fn toggling_notifies_at_most_twice(windows in 1usize..60, for_min in 0u32..4, phase in any::<bool>()) {
            let pattern: Vec<bool> = (0..windows).map(|i| (i % 2 == 0) == phase).collect();
            let n = run(&pattern, for_min, 0, None);
            prop_assert!(n.len() <= 2, "{:?}", n);
        }

        #[test]
        fn notifications_alternate_and_end_resolved(
            pattern in proptest::collection::vec(any::<bool>(), 1..80),
            for_min in 0u32..4,
        ) {
            // A tail longer than the longest hold (the flap window) resolves whatever fired.
            let n = run(&pattern, for_min, 61, None);
            for (i, (state, _)) in n.iter().enumerate() {
                let want = if i % 2 == 0 { AlertState::Firing } else { AlertState::Resolved };
                prop_assert_eq!(*state, want, "{:?}", n);
            }
            prop_assert!(n.len().is_multiple_of(2), "{:?}", n);
            // Fires only after `for` of continuous breach.
            let longest = pattern.split(|b| !b).map(<[bool]>::len).max().unwrap_or(0);
            if longest < (for_min as usize).max(1) {
                prop_assert!(n.is_empty(), "{:?}", n);
            }
            // Transition ids are unique.
            let ids: std::collections::BTreeSet<_> = n.iter().map(|(_, id)| id.clone()).collect();
            prop_assert_eq!(ids.len(), n.len());
        }

        #[test]
        fn a_checkpoint_round_trip_changes_nothing(
            pattern in proptest::collection::vec(any::<bool>(), 1..60),
            at in 0usize..60,
        ) {
            prop_assert_eq!(run(&pattern, 1, 10, None), run(&pattern, 1, 10, Some(at)));
        }
    }
}
