//! Routing, pure: transitions and the firing set in, deliveries for `perf.outbox.<receiver>` out.
//!
//! - **Alertmanager** (when configured) gets every transition of an evaluation in one post, and
//!   every firing alert again once per resend interval (a firing alert is posted without
//!   `endsAt`, so Alertmanager keeps it active for its `resolve_timeout` after each post). A
//!   resolution is held until its alert's first firing post is `alertmanager_min_firing` old:
//!   Alertmanager notifies a group only after its `group_wait`, and an alert already resolved by
//!   then is never notified at all — which would swallow every alert that fires and resolves in
//!   one catch-up (after an InfluxDB outage, say). The held post keeps the real `endsAt`.
//! - **Routes** send an alert to every receiver whose route matches its labels. Slack receives
//!   one message per group (equal values of the route's `group_by` labels) per evaluation;
//!   PagerDuty and webhooks one request per alert transition. A firing alert is notified again
//!   every `repeat_interval` of its route.
//!
//! Every delivery has a deterministic message id, so one re-made after a crash is dropped by the
//! outbox stream's duplicate window, and every alert in it its idempotency key
//! `<fingerprint>:<transition>`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use modelperf_schema::messages::{Alert, AlertState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ALERTMANAGER, Route};
use crate::engine::Transition;

/// One alert in a delivery, with the transition it tells of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The alert.
    pub alert: Alert,
    /// `firing-<ms>`, `resolved-<ms>`, `repeat<k>-<ms>` or `resend-<slot>`.
    pub transition: String,
}

impl Item {
    /// The idempotency key: `<fingerprint>:<transition>`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.alert.fingerprint, self.transition)
    }
}

/// A message of `perf.outbox.<receiver>`: what to tell one receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The receiver (`alertmanager` or a name of `[monitor.receivers]`).
    pub receiver: String,
    /// The `Nats-Msg-Id`.
    pub msg_id: String,
    /// When it was enqueued.
    #[serde(with = "modelperf_schema::codec::ts")]
    pub created_at: DateTime<Utc>,
    /// A resend past this time is dropped (a newer one follows); transitions never expire.
    #[serde(default, with = "modelperf_schema::codec::ts::option")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The alerts.
    pub items: Vec<Item>,
}

impl Delivery {
    /// Its subject.
    pub fn subject(&self) -> String {
        format!("perf.outbox.{}", self.receiver)
    }
}

/// What the router remembers between evaluations (checkpointed with the lifecycle).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterState {
    /// The last resend slot (`now / resend_interval`) posted to Alertmanager.
    pub resend_slot: Option<i64>,
    /// Firing alerts notified to a receiver, by `<receiver>/<fingerprint>`.
    pub notified: BTreeMap<String, Notified>,
    /// Alertmanager: the first firing post of each alert, by fingerprint (its `starts_at` in
    /// milliseconds, and when it was posted).
    #[serde(default)]
    pub am_fired: BTreeMap<String, (i64, DateTime<Utc>)>,
    /// Alertmanager: resolutions held until they are due, in the order they were decided.
    #[serde(default)]
    pub am_held: Vec<(DateTime<Utc>, Item)>,
}

impl RouterState {
    /// Takes the held resolutions due at `now` (all of fingerprint `only`'s, when given).
    fn take_held(&mut self, now: DateTime<Utc>, only: Option<&str>) -> Vec<Item> {
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.am_held)
            .into_iter()
            .partition(|(at, item)| only.map_or(*at <= now, |fp| item.alert.fingerprint == fp));
        self.am_held = kept;
        due.into_iter()
            .map(|(_, item)| {
                self.am_fired.remove(&item.alert.fingerprint);
                item
            })
            .collect()
    }
}

/// When a firing alert was last told to a receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notified {
    /// `starts_at` of the alert, in milliseconds.
    pub starts_ms: i64,
    /// Last sent (wall clock).
    pub sent_at: DateTime<Utc>,
    /// Repeats sent.
    pub repeats: u32,
    /// The route's repeat interval.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

/// Routes transitions to receivers.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    /// Receiver name → provider (`slack`, `pagerduty`, `webhook`).
    providers: BTreeMap<String, &'static str>,
    alertmanager: bool,
    resend: Duration,
    /// How long after an alert's first firing post its resolution may be posted.
    am_min_firing: Duration,
}

fn short_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

impl Router {
    /// A router; `providers` names each receiver's provider.
    pub fn new(
        routes: Vec<Route>,
        providers: BTreeMap<String, &'static str>,
        alertmanager: bool,
        resend: Duration,
    ) -> Self {
        Self {
            routes,
            providers,
            alertmanager,
            resend: resend.max(Duration::from_millis(1)),
            am_min_firing: Duration::ZERO,
        }
    }

    /// Holds each resolution to Alertmanager until its alert's first firing post is `d` old.
    pub fn with_alertmanager_min_firing(mut self, d: Duration) -> Self {
        self.am_min_firing = d;
        self
    }

    /// One post to Alertmanager, its id from the alerts' keys.
    fn alertmanager_delivery(items: Vec<Item>, now: DateTime<Utc>) -> Delivery {
        let mut keys: Vec<String> = items.iter().map(Item::key).collect();
        keys.sort();
        Delivery {
            receiver: ALERTMANAGER.into(),
            msg_id: format!("{ALERTMANAGER}:{}", short_hash(keys.iter().map(String::as_str))),
            created_at: now,
            expires_at: None,
            items,
        }
    }

    /// The transitions Alertmanager gets now; resolutions not yet due are held in `state`.
    fn to_alertmanager(&self, state: &mut RouterState, items: &[Item], now: DateTime<Utc>) -> Vec<Item> {
        let hold = TimeDelta::from_std(self.am_min_firing).unwrap_or(TimeDelta::MAX);
        let mut out = Vec::new();
        for item in items {
            let fp = item.alert.fingerprint.as_str();
            let starts_ms = item.alert.starts_at.timestamp_millis();
            match item.alert.state {
                AlertState::Firing => {
                    // A new episode goes after the held resolution of the last one.
                    out.extend(state.take_held(now, Some(fp)));
                    let first = state.am_fired.entry(fp.to_owned()).or_insert((starts_ms, now));
                    if first.0 != starts_ms {
                        *first = (starts_ms, now);
                    }
                    out.push(item.clone());
                }
                AlertState::Resolved => {
                    let due = state
                        .am_fired
                        .get(fp)
                        .filter(|(starts, _)| *starts == starts_ms)
                        .map(|(_, at)| at.checked_add_signed(hold).unwrap_or(DateTime::<Utc>::MAX_UTC));
                    match due {
                        Some(due) if due > now => state.am_held.push((due, item.clone())),
                        _ => {
                            state.am_fired.remove(fp);
                            out.push(item.clone());
                        }
                    }
                }
                AlertState::Pending | AlertState::Inactive => {}
            }
        }
        out
    }

    /// The deliveries of one evaluation's transitions.
    pub fn route(&self, state: &mut RouterState, transitions: &[Transition], now: DateTime<Utc>) -> Vec<Delivery> {
        let mut out = Vec::new();
        // Pending and inactive are only recorded, never notified.
        let items: Vec<Item> = transitions
            .iter()
            .filter(|t| t.alert.state.is_notified())
            .map(|t| Item { alert: t.alert.clone(), transition: t.id.clone() })
            .collect();
        if items.is_empty() {
            return out;
        }
        if self.alertmanager {
            let now_items = self.to_alertmanager(state, &items, now);
            if !now_items.is_empty() {
                out.push(Self::alertmanager_delivery(now_items, now));
            }
        }
        // receiver → group key → items; each receiver hears of an alert once however many
        // routes match it.
        let mut groups: BTreeMap<&str, BTreeMap<String, Vec<Item>>> = BTreeMap::new();
        for item in &items {
            let mut told = Vec::new();
            for route in &self.routes {
                if told.contains(&route.receiver.as_str()) || !route.matchers.matches(&item.alert.labels) {
                    continue;
                }
                told.push(route.receiver.as_str());
                let key = format!("{}/{}", route.receiver, item.alert.fingerprint);
                match item.alert.state {
                    AlertState::Firing => {
                        state.notified.insert(
                            key,
                            Notified {
                                starts_ms: item.alert.starts_at.timestamp_millis(),
                                sent_at: now,
                                repeats: 0,
                                every: route.repeat_interval,
                            },
                        );
                    }
                    AlertState::Resolved => {
                        state.notified.remove(&key);
                    }
                    AlertState::Pending | AlertState::Inactive => {} // filtered out above
                }
                let group: Vec<&str> =
                    route.group_by.iter().map(|l| item.alert.labels.get(l).map(String::as_str).unwrap_or("")).collect();
                groups
                    .entry(route.receiver.as_str())
                    .or_default()
                    .entry(group.join("\u{1f}"))
                    .or_default()
                    .push(item.clone());
            }
        }
        for (receiver, by_group) in groups {
            out.extend(self.deliveries(receiver, by_group, now));
        }
        out
    }

    fn deliveries(&self, receiver: &str, groups: BTreeMap<String, Vec<Item>>, now: DateTime<Utc>) -> Vec<Delivery> {
        let grouped = self.providers.get(receiver).copied() == Some("slack");
        let mut out = Vec::new();
        for (group, items) in groups {
            if grouped {
                let mut keys: Vec<String> = items.iter().map(Item::key).collect();
                keys.sort();
                let hash = short_hash(std::iter::once(group.as_str()).chain(keys.iter().map(String::as_str)));
                out.push(Delivery {
                    receiver: receiver.to_owned(),
                    msg_id: format!("{receiver}:{hash}"),
                    created_at: now,
                    expires_at: None,
                    items,
                });
            } else {
                for item in items {
                    out.push(Delivery {
                        receiver: receiver.to_owned(),
                        msg_id: format!("{receiver}:{}", item.key()),
                        created_at: now,
                        expires_at: None,
                        items: vec![item],
                    });
                }
            }
        }
        out
    }

    /// What time alone sends: Alertmanager's held resolutions once due, its resend of every
    /// firing alert once per resend interval, and the repeats of routes.
    pub fn tick(&self, state: &mut RouterState, firing: &[Alert], now: DateTime<Utc>) -> Vec<Delivery> {
        let mut out = Vec::new();
        if self.alertmanager {
            let due = state.take_held(now, None);
            if !due.is_empty() {
                out.push(Self::alertmanager_delivery(due, now));
            }
        }
        let resend_ms = i64::try_from(self.resend.as_millis()).unwrap_or(i64::MAX).max(1);
        let slot = now.timestamp_millis().div_euclid(resend_ms);
        if self.alertmanager && state.resend_slot != Some(slot) {
            state.resend_slot = Some(slot);
            if !firing.is_empty() {
                let transition = format!("resend-{slot}");
                out.push(Delivery {
                    receiver: ALERTMANAGER.into(),
                    msg_id: format!("{ALERTMANAGER}:{transition}"),
                    created_at: now,
                    // Stale once the next resend is due: that one carries the newer set.
                    expires_at: Some(now + TimeDelta::from_std(2 * self.resend).unwrap_or(TimeDelta::MAX)),
                    items: firing.iter().map(|a| Item { alert: a.clone(), transition: transition.clone() }).collect(),
                });
            }
        }
        let by_fp: BTreeMap<&str, &Alert> = firing.iter().map(|a| (a.fingerprint.as_str(), a)).collect();
        let mut gone = Vec::new();
        for (key, n) in state.notified.iter_mut() {
            let Some((receiver, fp)) = key.split_once('/') else { continue };
            let Some(alert) = by_fp.get(fp).filter(|a| a.starts_at.timestamp_millis() == n.starts_ms) else {
                gone.push(key.clone());
                continue;
            };
            if now - n.sent_at < TimeDelta::from_std(n.every).unwrap_or(TimeDelta::MAX) {
                continue;
            }
            n.repeats += 1;
            n.sent_at = now;
            let item = Item { alert: (*alert).clone(), transition: format!("repeat{}-{}", n.repeats, n.starts_ms) };
            out.push(Delivery {
                receiver: receiver.to_owned(),
                msg_id: format!("{receiver}:{}", item.key()),
                created_at: now,
                expires_at: None,
                items: vec![item],
            });
        }
        for key in gone {
            state.notified.remove(&key);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{MonitorConfig, ReceiverConfig, RouteConfig};
    use modelperf_schema::messages::Severity;

    fn alert(name: &str, model: &str, severity: &str, state: AlertState) -> Transition {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), name.to_owned()),
            ("model".to_owned(), model.to_owned()),
            ("severity".to_owned(), severity.to_owned()),
        ]);
        let starts_at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let alert = Alert {
            fingerprint: crate::engine::fingerprint(&labels),
            labels,
            annotations: BTreeMap::new(),
            state,
            starts_at,
            ends_at: (state == AlertState::Resolved).then_some(starts_at + TimeDelta::minutes(5)),
            severity: Severity::Warning,
            source: format!("rule:{name}"),
        };
        Transition { id: crate::engine::transition_id(state, starts_at), alert }
    }

    fn router(am: bool) -> Router {
        let mut c = MonitorConfig::default();
        c.receivers.insert("chat".into(), ReceiverConfig::Slack { url: "http://x/".into() });
        c.receivers.insert(
            "pager".into(),
            ReceiverConfig::Pagerduty { routing_key: "k".into(), url: "http://x/".into(), client_url: None },
        );
        let route = |receiver: &str, m: &[(&str, &str)]| RouteConfig {
            receiver: receiver.into(),
            matchers: m.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            group_by: vec!["alertname".into()],
            repeat_interval: Duration::from_secs(3600),
        };
        c.routes = vec![route("chat", &[]), route("pager", &[("severity", "critical")]), route("chat", &[])];
        let providers = c.receivers.iter().map(|(k, v)| (k.clone(), v.provider())).collect();
        Router::new(c.routes().unwrap(), providers, am, Duration::from_secs(60))
    }

    #[test]
    fn transitions_go_to_matching_receivers_grouped_for_slack() {
        let r = router(true);
        let mut s = RouterState::default();
        let now = Utc::now();
        let ts = [
            alert("A", "m1", "warning", AlertState::Firing),
            alert("A", "m2", "critical", AlertState::Firing),
            alert("B", "m1", "critical", AlertState::Firing),
        ];
        let d = r.route(&mut s, &ts, now);
        let by: Vec<(&str, usize)> = d.iter().map(|d| (d.receiver.as_str(), d.items.len())).collect();
        assert_eq!(by, [("alertmanager", 3), ("chat", 2), ("chat", 1), ("pager", 1), ("pager", 1)]);
        let pager = &d[3];
        assert_eq!(pager.msg_id, format!("pager:{}", pager.items[0].key()));
        assert!(pager.items[0].key().ends_with(":firing-1700000000000"));
        // The same evaluation made again gives the same ids.
        let again = r.route(&mut RouterState::default(), &ts, now + TimeDelta::seconds(5));
        assert_eq!(
            d.iter().map(|d| &d.msg_id).collect::<Vec<_>>(),
            again.iter().map(|d| &d.msg_id).collect::<Vec<_>>()
        );
        assert_eq!(s.notified.len(), 5, "chat ×3, pager ×2");
        let resolved = r.route(&mut s, &[alert("A", "m1", "warning", AlertState::Resolved)], now);
        assert_eq!(resolved.len(), 2);
        assert_eq!(s.notified.len(), 4);
    }

    #[test]
    fn alertmanager_gets_a_resolution_only_once_its_firing_is_old_enough() {
        let r = router(true).with_alertmanager_min_firing(Duration::from_secs(35));
        let mut s = RouterState::default();
        let t0 = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        let am = |d: &[Delivery]| -> Vec<String> {
            d.iter().filter(|d| d.receiver == ALERTMANAGER).flat_map(|d| d.items.iter().map(Item::key)).collect()
        };
        // Fired and resolved in one catch-up: the firing goes now, the resolution waits.
        let both = [alert("A", "m1", "warning", AlertState::Firing), alert("A", "m1", "warning", AlertState::Resolved)];
        let d = r.route(&mut s, &both, t0);
        assert_eq!(am(&d), [both[0].alert.fingerprint.clone() + ":firing-1700000000000"]);
        assert_eq!(d.iter().filter(|d| d.receiver == "chat").map(|d| d.items.len()).sum::<usize>(), 2, "routes unheld");
        assert!(am(&r.tick(&mut s, &[], t0 + TimeDelta::seconds(34))).is_empty(), "not due yet");
        let later = r.tick(&mut s, &[], t0 + TimeDelta::seconds(35));
        assert_eq!(am(&later), [both[1].alert.fingerprint.clone() + ":resolved-1700000000000"]);
        assert_eq!(later[0].items[0].alert.ends_at, both[1].alert.ends_at, "the real end time");
        assert!(s.am_held.is_empty() && s.am_fired.is_empty());
        // Made again from the same state, the held post has the same id (deduplicated).
        let mut s2 = RouterState::default();
        r.route(&mut s2, &both, t0);
        assert_eq!(r.tick(&mut s2, &[], t0 + TimeDelta::seconds(40))[0].msg_id, later[0].msg_id);

        // Resolved long after firing: not held.
        let f = alert("B", "m1", "warning", AlertState::Firing);
        r.route(&mut s, std::slice::from_ref(&f), t0);
        let d = r.route(&mut s, &[alert("B", "m1", "warning", AlertState::Resolved)], t0 + TimeDelta::minutes(2));
        assert_eq!(am(&d).len(), 1);
        assert!(s.am_held.is_empty());

        // A new episode releases the held resolution of the last one first, in the same post.
        let c = alert("C", "m1", "warning", AlertState::Firing);
        r.route(&mut s, &[c.clone(), alert("C", "m1", "warning", AlertState::Resolved)], t0);
        let mut again = c.clone();
        again.alert.starts_at += TimeDelta::minutes(1);
        let d = r.route(&mut s, std::slice::from_ref(&again), t0 + TimeDelta::seconds(5));
        let keys = am(&d);
        assert_eq!(keys.len(), 2);
        assert!(keys[0].contains(":resolved-") && keys[1].contains(":firing-"), "{keys:?}");

        // Without a hold (the default), both go in one post as decided.
        let d = router(true).route(&mut RouterState::default(), &both, t0);
        assert_eq!(am(&d).len(), 2);
    }

    #[test]
    fn resends_once_per_slot_and_repeats_per_route() {
        let r = router(true);
        let mut s = RouterState::default();
        let t0 = DateTime::from_timestamp(1_700_000_040, 0).unwrap();
        let firing = alert("A", "m2", "critical", AlertState::Firing);
        r.route(&mut s, std::slice::from_ref(&firing), t0);
        let alerts = vec![firing.alert.clone()];
        let first = r.tick(&mut s, &alerts, t0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].msg_id, format!("alertmanager:resend-{}", 1_700_000_040 / 60));
        assert!(r.tick(&mut s, &alerts, t0 + TimeDelta::seconds(10)).is_empty(), "same slot");
        assert_eq!(r.tick(&mut s, &alerts, t0 + TimeDelta::seconds(60)).len(), 1, "next slot");
        let later = t0 + TimeDelta::hours(1);
        let repeats = r.tick(&mut s, &alerts, later);
        let names: Vec<_> = repeats.iter().map(|d| d.receiver.as_str()).collect();
        assert_eq!(names, ["alertmanager", "chat", "pager"]);
        assert!(repeats[1].items[0].transition.starts_with("repeat1-"));
        assert!(r.tick(&mut s, &[], later + TimeDelta::hours(2)).is_empty(), "nothing firing");
        assert!(s.notified.is_empty());
    }
}
