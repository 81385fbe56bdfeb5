//! The analyzer's state: every series of every analysed window length, and the frames that
//! drive it.
//!
//! Time is the windows', never the wall clock's: the finaliser publishes the metrics of a window
//! for every series, then those of the next, so the first message of a later window closes the
//! frame before it. A closed frame evaluates every known series — one without metrics in it had
//! no events, which is what a throughput drop looks like — and windows no series reported at all
//! are evaluated as empty frames. A message for a frame already closed is a revision (or came
//! late): it updates the baselines and is not evaluated. A simulated day replays in seconds.
//!
//! What survives a restart: the open anomalies (and the frame each length is in) go into the
//! checkpoint; the baselines are rebuilt by replaying `PERF_METRICS` from the first message of
//! the oldest frame a baseline still holds, which the checkpoint records as its replay position.
//! Replayed messages run the same code with their announcements discarded, and once the replay
//! is read the open anomalies are set to the checkpoint's — it, not the replay, says what was
//! announced.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, TimeZone, Utc};
use modelperf_schema::messages::{Anomaly, Insight, WindowMetrics};
use modelperf_schema::names::WindowSpec;
use serde::{Deserialize, Serialize};

use crate::config::AnalyzerConfig;
use crate::detect::{Observation, Open, Series, slot_of};
use crate::regression::{self, Periods};
use crate::trend::{self, History};
use modelperf_sketch::Sketch;

/// Empty frames evaluated at most for one gap (a longer silence is as informative as this one).
const MAX_GAP_FRAMES: i64 = 1_000;

/// What a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The frame each window length is in.
    pub frames: BTreeMap<String, i64>,
    /// Every open anomaly, with its series key.
    pub open: Vec<(String, Open)>,
}

/// A series' window in the frame being filled: its dimensions, observation and latency sketch
/// (kept when regressions are tested).
type Pending = (BTreeMap<String, String>, Observation, Option<Sketch>);

/// One analysed window length.
#[derive(Debug)]
struct Length {
    spec: WindowSpec,
    /// The frame being filled.
    current: Option<i64>,
    /// Its observations so far, with their latency sketches when regressions are tested.
    pending: HashMap<String, Pending>,
    series: HashMap<String, Series>,
    /// The trailing windows each series' trends are tested on.
    histories: HashMap<String, History>,
    /// The blocks each series' regressions are tested on.
    regressions: HashMap<String, Periods>,
    /// Recent frames and the stream sequence of their first message, oldest first.
    frames: VecDeque<(i64, u64)>,
}

/// The analyzer's state.
#[derive(Debug)]
pub struct Analysis {
    config: AnalyzerConfig,
    lengths: BTreeMap<String, Length>,
    /// Restored from a checkpoint, applied once the replay is read.
    restore: Option<Saved>,
    /// Insights of the frames closed since the last [`Analysis::take_insights`].
    insights: Vec<Insight>,
}

impl Analysis {
    /// Empty state for the configured window lengths.
    pub fn new(config: AnalyzerConfig) -> Self {
        let lengths = config
            .windows
            .iter()
            .map(|w| {
                let length = Length {
                    spec: w.clone(),
                    current: None,
                    pending: HashMap::new(),
                    series: HashMap::new(),
                    histories: HashMap::new(),
                    regressions: HashMap::new(),
                    frames: VecDeque::new(),
                };
                (w.name().to_owned(), length)
            })
            .collect();
        Self { config, lengths, restore: None, insights: Vec::new() }
    }

    /// State to restore once the replay is read.
    pub fn restoring(mut self, saved: Saved) -> Self {
        self.restore = Some(saved);
        self
    }

    /// Applies the checkpoint's open anomalies, if a restore is pending.
    pub fn finish_restore(&mut self) {
        let Some(saved) = self.restore.take() else { return };
        for length in self.lengths.values_mut() {
            for series in length.series.values_mut() {
                series.checks.iter_mut().for_each(|c| c.open = None);
            }
        }
        for (key, open) in saved.open {
            let Some(length) = self.lengths.get_mut(&open.anomaly.window) else { continue };
            let series = length
                .series
                .entry(key)
                .or_insert_with(|| Series::new(&open.anomaly.window, open.anomaly.series.clone(), open.since));
            let slot = slot_of(open.anomaly.kind);
            series.checks[slot].open = Some(open);
        }
        for (name, frame) in saved.frames {
            if let Some(length) = self.lengths.get_mut(&name)
                && length.current.is_none_or(|c| c < frame)
            {
                length.current = Some(frame);
            }
        }
    }

    /// Takes one metrics message stored at `seq`; returns the anomalies that opened or resolved.
    pub fn ingest(&mut self, m: &WindowMetrics, seq: u64) -> Vec<Anomaly> {
        let config = &self.config;
        let Some(length) = self.lengths.get_mut(&m.window) else { return Vec::new() };
        let secs = length.spec.secs() as i64;
        let index = m.start.timestamp().div_euclid(secs);
        let key = series_key(&m.dims);
        let obs = Observation::of(m);
        let mut changes = Vec::new();
        match length.current {
            Some(current) if index < current => {
                // A revision or a late window: the baselines learn it, nothing is evaluated.
                if let Some(series) = length.series.get_mut(&key) {
                    series.revise(index, &obs);
                }
                if let Some(history) = length.histories.get_mut(&key) {
                    history.record(index, &obs, config);
                }
                return changes;
            }
            Some(current) if index > current => {
                length.close(current, config, &mut changes, &mut self.insights);
                let gap_from = (current + 1).max(index - MAX_GAP_FRAMES);
                for empty in gap_from..index {
                    length.close(empty, config, &mut changes, &mut self.insights);
                }
                length.open_frame(index, seq, config);
            }
            Some(_) => {}
            None => length.open_frame(index, seq, config),
        }
        // A sketch that does not decode leaves the window out of the latency regressions only.
        let sketch = (config.regression_every > 0 && !m.latency_sketch.is_empty())
            .then(|| Sketch::from_bytes(&m.latency_sketch).ok())
            .flatten();
        length.pending.insert(key, (m.dims.clone(), obs, sketch));
        changes
    }

    /// The insights (trends and regressions) of the frames closed since the last call.
    pub fn take_insights(&mut self) -> Vec<Insight> {
        std::mem::take(&mut self.insights)
    }

    /// The checkpoint: open anomalies and frames.
    pub fn saved(&self) -> Saved {
        if let Some(restore) = &self.restore {
            return restore.clone();
        }
        let mut saved = Saved::default();
        for (name, length) in &self.lengths {
            if let Some(current) = length.current {
                saved.frames.insert(name.clone(), current);
            }
            let mut open: Vec<(String, Open)> = length
                .series
                .iter()
                .flat_map(|(key, s)| s.checks.iter().filter_map(|c| c.open.clone().map(|o| (key.clone(), o))))
                .collect();
            open.sort_by(|a, b| (&a.0, a.1.anomaly.kind as u8).cmp(&(&b.0, b.1.anomaly.kind as u8)));
            saved.open.extend(open);
        }
        saved
    }

    /// The stream sequence from which a replay rebuilds every baseline: the first message of the
    /// oldest frame a baseline can still hold.
    pub fn replay_from(&self) -> Option<u64> {
        self.lengths.values().filter_map(|l| l.frames.front().map(|f| f.1)).min()
    }

    /// Series held, per window length.
    pub fn series(&self) -> usize {
        self.lengths.values().map(|l| l.series.len()).sum()
    }

    /// Open anomalies.
    pub fn open_anomalies(&self) -> Vec<&Anomaly> {
        self.lengths
            .values()
            .flat_map(|l| l.series.values())
            .flat_map(|s| s.checks.iter().filter_map(|c| c.open.as_ref().map(|o| &o.anomaly)))
            .collect()
    }
}

impl Length {
    fn open_frame(&mut self, index: i64, seq: u64, config: &AnalyzerConfig) {
        self.current = Some(index);
        self.frames.push_back((index, seq));
        // A replay must rebuild the baselines, the trends' trailing windows and the regressions'
        // periods.
        let mut held = config.baseline_windows;
        if config.trend_every > 0 {
            held = held.max(config.trend_windows);
        }
        if config.regression_every > 0 {
            // Both periods, and the block the oldest window shares with earlier ones.
            let periods = config.regression_current + config.regression_baseline + config.regression_block;
            held = held.max(usize::try_from(periods).unwrap_or(usize::MAX));
        }
        while self.frames.len() > held + 1 {
            self.frames.pop_front();
        }
    }

    /// Evaluates frame `index` for every series and empties it.
    fn close(&mut self, index: i64, config: &AnalyzerConfig, changes: &mut Vec<Anomaly>, insights: &mut Vec<Insight>) {
        let secs = self.spec.secs() as i64;
        let end = Utc.timestamp_opt((index + 1) * secs, 0).single().unwrap_or(DateTime::<Utc>::MAX_UTC);
        let name = self.spec.name().to_owned();
        for (key, (dims, _, _)) in &self.pending {
            self.series.entry(key.clone()).or_insert_with(|| Series::new(&name, dims.clone(), index));
        }
        let absent = Observation::default();
        for (key, series) in self.series.iter_mut() {
            let obs = self.pending.get(key).map_or(&absent, |(_, o, _)| o);
            changes.extend(series.evaluate(index, end, obs, config));
        }
        if config.trend_every > 0 {
            for (key, (_, obs, _)) in &self.pending {
                self.histories.entry(key.clone()).or_default().record(index, obs, config);
            }
            let first = index + 1 - config.trend_windows as i64;
            self.histories.values_mut().for_each(|h| h.prune(first));
            if (index + 1).rem_euclid(config.trend_every) == 0 {
                let series = self.histories.iter().filter_map(|(key, h)| self.series.get(key).map(|s| (&s.dims, h)));
                let mut found = trend::run(&name, secs, index, series, config);
                found.sort_by(|a, b| a.id.cmp(&b.id));
                insights.extend(found);
            }
        }
        if config.regression_every > 0 {
            for (key, (_, obs, sketch)) in &self.pending {
                self.regressions.entry(key.clone()).or_default().record(index, obs, sketch.as_ref(), config);
            }
            let first = index + 1 - config.regression_current - config.regression_baseline;
            self.regressions.values_mut().for_each(|p| p.prune(first, config));
            if (index + 1).rem_euclid(config.regression_every) == 0 {
                let series = self.regressions.iter().filter_map(|(key, p)| self.series.get(key).map(|s| (&s.dims, p)));
                insights.extend(regression::run(&name, secs, index, series, config));
            }
        }
        self.pending.clear();
        self.series.retain(|_, s| s.any_open() || (index - s.last_seen < config.forget_after && !s.is_empty()));
        let series = &self.series;
        self.histories.retain(|key, h| !h.is_empty() && series.contains_key(key));
        self.regressions.retain(|key, p| !p.is_empty() && series.contains_key(key));
    }
}

/// The key of a series: its dimensions, `k=v` joined by `\u{1f}`.
pub fn series_key(dims: &BTreeMap<String, String>) -> String {
    let mut key = String::new();
    for (k, v) in dims {
        if !key.is_empty() {
            key.push('\u{1f}');
        }
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn window(w: i64, model: &str, p95: f64) -> WindowMetrics {
        let start = Utc.timestamp_opt(1_800_000_000 + w * 60, 0).single().unwrap();
        WindowMetrics {
            window: "1m".into(),
            start,
            end: start + chrono::Duration::minutes(1),
            dims: BTreeMap::from([("model".to_owned(), model.to_owned())]),
            count: 100,
            weighted_count: 100.0,
            success: 97,
            failure: 3,
            latency_p95_ms: Some(p95),
            ..WindowMetrics::default()
        }
    }

    fn stream() -> Vec<WindowMetrics> {
        (0..121)
            .flat_map(|w| {
                let wobble = 1.0 + 0.05 * ((w * 7919) % 13) as f64 / 13.0;
                let spike = if (60..110).contains(&w) { 1.6 } else { 1.0 };
                [window(w, "steady", 1000.0 * wobble), window(w, "spiky", 1000.0 * wobble * spike)]
            })
            .collect()
    }

    /// A successor restored from a checkpoint and a replay announces exactly what the original
    /// would have announced after that point.
    #[test]
    fn a_restored_analysis_continues_as_the_original() {
        let messages = stream();
        for cut in [100usize, 130, 160, 200] {
            let mut original = Analysis::new(AnalyzerConfig::default());
            let mut before = Vec::new();
            for (i, m) in messages[..cut].iter().enumerate() {
                before.extend(original.ingest(m, i as u64 + 1));
            }
            let (saved, from) = (original.saved(), original.replay_from().unwrap());
            let mut successor = Analysis::new(AnalyzerConfig::default()).restoring(saved);
            for (i, m) in messages[..cut].iter().enumerate().skip(from as usize - 1) {
                let _ = successor.ingest(m, i as u64 + 1);
            }
            successor.finish_restore();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (i, m) in messages.iter().enumerate().skip(cut) {
                a.extend(original.ingest(m, i as u64 + 1));
                b.extend(successor.ingest(m, i as u64 + 1));
            }
            assert_eq!(a, b, "cut at {cut}");
            let all: Vec<_> = before.iter().chain(&a).map(|x| (x.state, x.detected_at, x.resolved_at)).collect();
            assert_eq!(all.len(), 2, "cut at {cut}: {all:?}");
        }
    }
}
