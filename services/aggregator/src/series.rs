//! The series of one window length in one partition, each stored once and named by a small id,
//! so folding an event looks its series up with the event's own (borrowed) values — no string
//! is allocated per event — and open windows hold an id instead of a copy of the dimensions.
//! A series is forgotten when no open window holds it any more.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use modelperf_schema::Event;

use crate::window::Dim;

/// The id of a series in its table.
pub type SeriesId = u32;

/// A series' values, one per group-by dimension (`None`: the event has none).
type Values = Box<[Option<Box<str>>]>;

/// The most dimensions a group-by has (the contract's six).
const MAX_DIMS: usize = 6;

/// Interned series.
#[derive(Debug, Clone, Default)]
pub struct SeriesTable {
    group_by: Vec<Dim>,
    /// Hash of the values → ids with that hash.
    by_hash: HashMap<u64, Vec<SeriesId>>,
    /// Id → values (one per group-by dimension), `None` when free.
    values: Vec<Option<Values>>,
    /// Id → open windows holding it.
    refs: Vec<u32>,
    free: Vec<SeriesId>,
}

fn hash_of(values: &[Option<&str>]) -> u64 {
    let mut h = DefaultHasher::new();
    values.hash(&mut h);
    h.finish()
}

impl SeriesTable {
    /// A table for `group_by` (at most six dimensions).
    pub fn new(group_by: &[Dim]) -> Self {
        Self { group_by: group_by[..group_by.len().min(MAX_DIMS)].to_vec(), ..Self::default() }
    }

    /// The id of the event's series, registering it when new.
    pub fn id_of(&mut self, e: &Event) -> SeriesId {
        let mut buf: [Option<&str>; MAX_DIMS] = [None; MAX_DIMS];
        for (slot, d) in buf.iter_mut().zip(&self.group_by) {
            *slot = d.value(e);
        }
        let vals = &buf[..self.group_by.len()];
        let hash = hash_of(vals);
        if let Some(ids) = self.by_hash.get(&hash) {
            for id in ids {
                let same = self.values[*id as usize].as_deref().is_some_and(|have| {
                    have.len() == vals.len() && have.iter().zip(vals).all(|(a, b)| a.as_deref() == *b)
                });
                if same {
                    return *id;
                }
            }
        }
        let stored: Values = vals.iter().map(|v| v.map(Box::from)).collect();
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = Some(stored);
                self.refs[id as usize] = 0;
                id
            }
            None => {
                self.values.push(Some(stored));
                self.refs.push(0);
                (self.values.len() - 1) as SeriesId
            }
        };
        self.by_hash.entry(hash).or_default().push(id);
        id
    }

    /// The dimensions of a series (a missing one omitted), as partials and metrics name them.
    pub fn dims(&self, id: SeriesId) -> BTreeMap<String, String> {
        let Some(values) = self.values.get(id as usize).and_then(Option::as_deref) else { return BTreeMap::new() };
        self.group_by
            .iter()
            .zip(values)
            .filter_map(|(d, v)| v.as_deref().map(|v| (d.tag().to_owned(), v.to_owned())))
            .collect()
    }

    /// One more open window holds `id`.
    pub fn hold(&mut self, id: SeriesId) {
        if let Some(r) = self.refs.get_mut(id as usize) {
            *r += 1;
        }
    }

    /// One open window less holds `id`; the series is forgotten when none does.
    pub fn release(&mut self, id: SeriesId) {
        let Some(r) = self.refs.get_mut(id as usize) else { return };
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        if let Some(values) = self.values[id as usize].take() {
            let vals: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
            let hash = hash_of(&vals);
            if let Some(ids) = self.by_hash.get_mut(&hash) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_hash.remove(&hash);
                }
            }
            self.free.push(id);
        }
    }

    /// Series known now.
    pub fn len(&self) -> usize {
        self.values.len() - self.free.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::window::DEFAULT_GROUP_BY;
    use modelperf_schema::{Data, TaskStarted};

    fn ev(task_type: &str, tenant: Option<&str>) -> Event {
        let mut e = Event::new(
            modelperf_schema::parse_ts("2026-11-27T10:00:00Z").unwrap(),
            "t",
            Data::TaskStarted(TaskStarted { queue_ms: None }),
        );
        e.task_type = Some(task_type.into());
        e.tenant = tenant.map(Into::into);
        e
    }

    #[test]
    fn one_id_per_series_and_forgotten_when_released() {
        let mut t = SeriesTable::new(&DEFAULT_GROUP_BY);
        let a = t.id_of(&ev("code_edit", None));
        let b = t.id_of(&ev("code_edit", Some("acme")));
        assert_ne!(a, b, "a missing tenant is its own series");
        assert_eq!(t.id_of(&ev("code_edit", None)), a);
        assert_eq!(t.dims(b)["tenant"], "acme");
        assert!(!t.dims(a).contains_key("tenant"));
        t.hold(a);
        t.hold(a);
        t.release(a);
        assert_eq!(t.len(), 2);
        t.release(a);
        assert_eq!(t.len(), 1);
        let c = t.id_of(&ev("summarize", None));
        assert_eq!(c, a, "a freed id is reused");
        assert_eq!(t.dims(c)["task_type"], "summarize");
    }
}
