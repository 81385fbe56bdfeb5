//! Scheduled reports: cron expressions (UTC) in `[reports]`, run by the replica holding the
//! lease `analyzer.reports` (the others stand by), each tick once.
//!
//! A tick at `T` of a schedule with span `S` reports the period `[T − S, T)`, `delay` after `T`
//! (the last windows of the period are final by then). The last tick done per schedule is
//! checkpointed in `modelperf_state` as `analyzer.reports` after its report is stored and
//! announced, so a restart makes up the ticks it missed — each once, those no older than
//! `catch_up` — and repeats none: a crash after the announcement and before the checkpoint
//! finds the announcement as the latest on `perf.reports.<period>` and only checkpoints.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use croner::Cron;
use modelperf_bus::{Checkpoint, CheckpointStore, Leases};
use modelperf_schema::names::WindowSpec;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::source::{self, Format};

/// The lease of the report role.
pub const LEASE: &str = "analyzer.reports";
/// Its checkpoint in `modelperf_state`.
pub const CHECKPOINT: &str = "analyzer.reports";
/// Ticks made up at most per schedule and pass (a guard against a cron firing every second
/// after a long outage).
const MAX_CATCH_UP_TICKS: usize = 100;

/// One schedule of `[reports.schedules.<name>]`; the name is the report's period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A cron expression in UTC (five fields, or six with seconds first); empty disables it.
    pub cron: String,
    /// The period a tick reports: `[tick − span, tick)`.
    #[serde(with = "humantime_serde")]
    pub span: Duration,
}

/// `[reports]`: scheduled reports (`MODELPERF_REPORTS__<KEY>` for scalars).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Whether this replica runs scheduled reports at all [true].
    pub enabled: bool,
    /// The window length the reports read from `PERF_METRICS` [`1h`].
    pub window: WindowSpec,
    /// How long after a tick its report is made, so the period's last windows are final [5m].
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Missed ticks older than this are not made up after an outage [8d].
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
    /// The formats stored besides JSON [md, html, json].
    #[serde(deserialize_with = "modelperf_bus::config::comma_list")]
    pub formats: Vec<String>,
    /// At most this many points per latency line [168].
    pub max_points: usize,
    /// The schedules by name (= period): `daily` (`0 0 * * *`, 1 day) and `weekly`
    /// (`0 0 * * MON`, 7 days) unless configured otherwise.
    pub schedules: BTreeMap<String, ScheduleConfig>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Self {
            enabled: true,
            window: WindowSpec::from_str("1h").unwrap_or_else(|e| unreachable!("built-in window: {e}")),
            delay: Duration::from_secs(300),
            catch_up: 8 * day,
            formats: vec!["md".into(), "html".into(), "json".into()],
            max_points: 168,
            schedules: BTreeMap::from([
                ("daily".to_owned(), ScheduleConfig { cron: "0 0 * * *".into(), span: day }),
                ("weekly".to_owned(), ScheduleConfig { cron: "0 0 * * MON".into(), span: 7 * day }),
            ]),
        }
    }
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name, the report's period.
    pub name: String,
    /// The parsed expression.
    pub cron: Cron,
    /// The period a tick reports.
    pub span: chrono::Duration,
}

impl ReportsConfig {
    /// The schedules, parsed; the error names the key.
    pub fn schedules(&self) -> Result<Vec<Schedule>, (String, String)> {
        let mut out = Vec::new();
        for (name, s) in &self.schedules {
            let key = format!("[reports.schedules.{name}]");
            if s.cron.trim().is_empty() {
                continue;
            }
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err((key, "a schedule's name is a subject token: [A-Za-z0-9_-], at most 64".into()));
            }
            let cron = Cron::from_str(&s.cron).map_err(|e| (format!("{key} cron"), format!("{:?}: {e}", s.cron)))?;
            let span = chrono::Duration::from_std(s.span)
                .ok()
                .filter(|d| *d > chrono::Duration::zero())
                .ok_or_else(|| (format!("{key} span"), "a positive duration".into()))?;
            out.push(Schedule { name: name.clone(), cron, span });
        }
        Ok(out)
    }

    /// The formats to store.
    pub fn formats(&self) -> Result<Vec<Format>, (String, String)> {
        self.formats
            .iter()
            .map(|f| {
                Format::parse(f)
                    .ok_or_else(|| ("MODELPERF_REPORTS__FORMATS".to_owned(), format!("{f:?}: use md, html, json")))
            })
            .collect()
    }

    /// Checks what the types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.schedules()?;
        self.formats()?;
        if self.max_points < 2 {
            return Err(("MODELPERF_REPORTS__MAX_POINTS".into(), "at least 2".into()));
        }
        Ok(())
    }
}

/// The ticks of `schedule` to run at `now`: every tick after `last` that is at least `delay`
/// old, oldest first, leaving out those older than `catch_up`. Without a `last` (the first run
/// ever) only the latest due tick.
pub fn due(
    cron: &Cron,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    delay: chrono::Duration,
    catch_up: chrono::Duration,
) -> Vec<DateTime<Utc>> {
    // croner keeps the sub-second part of the time it starts from; ticks are whole seconds.
    let ready = (now - delay).trunc_subsecs(0);
    let oldest = (now - catch_up).trunc_subsecs(0);
    let Some(last) = last else {
        return cron.find_previous_occurrence(&ready, true).ok().filter(|t| *t >= oldest).into_iter().collect();
    };
    let mut out = Vec::new();
    let mut from = last.max(oldest - chrono::Duration::seconds(1));
    while out.len() < MAX_CATCH_UP_TICKS {
        let Ok(t) = cron.find_next_occurrence(&from, false) else { break };
        if t > ready {
            break;
        }
        if t > last && t >= oldest {
            out.push(t);
        }
        from = t;
    }
    out
}

/// When the next tick of any schedule becomes due after `now`.
fn next_due(schedules: &[Schedule], now: DateTime<Utc>, delay: chrono::Duration) -> Option<DateTime<Utc>> {
    schedules.iter().filter_map(|s| s.cron.find_next_occurrence(&(now - delay), false).ok()).map(|t| t + delay).min()
}

/// What the checkpoint holds: the last tick done per schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Schedule name → its last tick reported.
    pub last: BTreeMap<String, DateTime<Utc>>,
}

/// The report role: whenever this instance holds the lease, runs the due ticks and sleeps until
/// the next. Standbys wait on the lease.
pub async fn role(js: async_nats::jetstream::Context, leases: Leases, config: ReportsConfig, stop: CancellationToken) {
    let (Ok(schedules), Ok(formats)) = (config.schedules(), config.formats()) else {
        // `Config::load` validated both; a hand-built config that did not is refused here.
        tracing::error!("invalid [reports] configuration; scheduled reports are off");
        // A role that ends stops the process: wait for the stop instead.
        stop.cancelled().await;
        return;
    };
    if !config.enabled || schedules.is_empty() {
        tracing::info!("scheduled reports are off");
        stop.cancelled().await;
        return;
    }
    while !stop.is_cancelled() {
        let lease = match leases.acquire(LEASE, &stop).await {
            Ok(Some(lease)) => lease,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "reports lease acquisition failed, will retry");
                tokio::time::sleep(leases.ttl() / 3).await;
                continue;
            }
        };
        if let Err(e) = run(&js, &config, &schedules, &formats, &stop, &lease.lost()).await {
            tracing::warn!(error = %e, "scheduled reports stopped; restarting from the checkpoint");
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        lease.release().await;
    }
}

async fn run(
    js: &async_nats::jetstream::Context,
    config: &ReportsConfig,
    schedules: &[Schedule],
    formats: &[Format],
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> anyhow::Result<()> {
    let (mut store, cp) = CheckpointStore::open(js, CHECKPOINT).await?;
    let mut saved: Saved = match cp.as_ref().filter(|c| !c.state.is_empty()) {
        Some(c) => rmp_serde::from_slice(&c.state)
            .map_err(|e| anyhow::anyhow!("checkpoint {CHECKPOINT} does not decode: {e}"))?,
        None => Saved::default(),
    };
    let delay = chrono::Duration::from_std(config.delay)?;
    let catch_up = chrono::Duration::from_std(config.catch_up)?;
    tracing::info!(schedules = schedules.len(), "scheduled reports active");
    loop {
        for s in schedules {
            for tick in due(&s.cron, saved.last.get(&s.name).copied(), Utc::now(), delay, catch_up) {
                if stop.is_cancelled() || lost.is_cancelled() {
                    return Ok(());
                }
                run_tick(js, config, s, tick, formats).await?;
                saved.last.insert(s.name.clone(), tick);
                let state = rmp_serde::to_vec_named(&saved)?;
                store.save(&Checkpoint { applied_seq: 0, replay_from: None, state }).await?;
            }
        }
        let wait = next_due(schedules, Utc::now(), delay)
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = lost.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn run_tick(
    js: &async_nats::jetstream::Context,
    config: &ReportsConfig,
    s: &Schedule,
    tick: DateTime<Utc>,
    formats: &[Format],
) -> anyhow::Result<()> {
    let start = tick - s.span;
    let object = source::object_name(&s.name, &start);
    // Announced before a crash that came before the checkpoint: done already.
    if source::last_announcement(js, &s.name).await?.is_some_and(|a| a.object == object) {
        tracing::info!(period = %s.name, %object, "report already announced");
        return Ok(());
    }
    let report = source::report(js, &s.name, start, tick, config.window.name(), config.max_points).await?;
    let (a, duplicate) = source::publish(js, &report, formats).await?;
    metrics::counter!("modelperf_analyzer_reports_total", "period" => s.name.clone()).increment(1);
    tracing::info!(period = %s.name, object = %a.object, models = report.models.len(), duplicate, "report stored and announced");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap()
    }

    #[test]
    fn a_tick_runs_once_after_its_delay() {
        let daily = Cron::from_str("0 0 * * *").unwrap();
        let (delay, catch_up) = (chrono::Duration::minutes(5), chrono::Duration::days(8));
        let every2s = Cron::from_str("*/2 * * * * *").unwrap();
        let now = t(3, 10, 0) + chrono::Duration::milliseconds(1_300);
        assert_eq!(due(&every2s, None, now, chrono::Duration::zero(), catch_up), vec![t(3, 10, 0)], "whole seconds");
        // First start: the latest due tick only.
        assert_eq!(due(&daily, None, t(3, 10, 0), delay, catch_up), vec![t(3, 0, 0)]);
        // Before the delay has passed the tick is not due yet; after it, once.
        assert!(due(&daily, Some(t(2, 0, 0)), t(3, 0, 3), delay, catch_up).is_empty());
        assert_eq!(due(&daily, Some(t(2, 0, 0)), t(3, 0, 6), delay, catch_up), vec![t(3, 0, 0)]);
        assert!(due(&daily, Some(t(3, 0, 0)), t(3, 23, 0), delay, catch_up).is_empty());
    }

    #[test]
    fn missed_ticks_are_made_up_once_each_within_catch_up() {
        let daily = Cron::from_str("0 0 * * *").unwrap();
        let delay = chrono::Duration::minutes(5);
        let got = due(&daily, Some(t(2, 0, 0)), t(5, 12, 0), delay, chrono::Duration::days(8));
        assert_eq!(got, vec![t(3, 0, 0), t(4, 0, 0), t(5, 0, 0)]);
        let got = due(&daily, Some(t(2, 0, 0)), t(20, 12, 0), delay, chrono::Duration::days(2));
        assert_eq!(got, vec![t(19, 0, 0), t(20, 0, 0)]);
        let weekly = Cron::from_str("0 0 * * MON").unwrap();
        assert_eq!(
            due(&Cron::from_str("@daily").unwrap(), Some(t(2, 0, 0)), t(3, 1, 0), delay, chrono::Duration::days(8)),
            vec![t(3, 0, 0)],
            "aliases work"
        );
        // 2026-03-02 and 2026-03-09 are Mondays.
        assert_eq!(due(&weekly, None, t(10, 0, 0), delay, chrono::Duration::days(8)), vec![t(9, 0, 0)]);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail returns its own error type
    fn schedules_come_from_the_file_and_scalars_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "analyzer.toml",
                "[reports.schedules.hourly]\ncron = \"5 * * * *\"\nspan = \"1h\"\n\n[reports.schedules.weekly]\ncron = \"\"\n",
            )?;
            jail.set_env("MODELPERF_REPORTS__DELAY", "1m");
            jail.set_env("MODELPERF_REPORTS__FORMATS", "json,html");
            let c = crate::Config::load(Some(std::path::Path::new("analyzer.toml"))).unwrap();
            let names: Vec<_> = c.reports.schedules().unwrap().into_iter().map(|s| (s.name, s.span)).collect();
            assert_eq!(
                names,
                vec![
                    ("daily".to_owned(), chrono::Duration::days(1)),
                    ("hourly".to_owned(), chrono::Duration::hours(1))
                ]
            );
            assert_eq!(c.reports.delay, Duration::from_secs(60));
            assert_eq!(c.reports.formats().unwrap(), vec![Format::Json, Format::Html]);
            jail.set_env("MODELPERF_REPORTS__FORMATS", "pdf");
            let err = crate::Config::load(Some(std::path::Path::new("analyzer.toml"))).unwrap_err().to_string();
            assert!(err.contains("MODELPERF_REPORTS__FORMATS"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_defaults_and_mistakes() {
        let c = ReportsConfig::default();
        let s = c.schedules().unwrap();
        assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["daily", "weekly"]);
        assert_eq!(c.formats().unwrap(), Format::ALL.to_vec());
        let mut bad = c.clone();
        bad.schedules.get_mut("daily").unwrap().cron = "61 * * * *".into();
        assert!(bad.validate().unwrap_err().0.contains("daily"));
        let mut bad = c.clone();
        bad.formats = vec!["pdf".into()];
        assert!(bad.validate().unwrap_err().1.contains("pdf"));
        let mut off = c;
        off.schedules.get_mut("weekly").unwrap().cron = String::new();
        assert_eq!(off.schedules().unwrap().len(), 1);
    }
}
