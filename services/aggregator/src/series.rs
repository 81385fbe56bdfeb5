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
    /// Indices into `group_by` in the order of their tags (the order of [`SeriesTable::dims`]);
    /// of two dimensions with one tag, the last (the one the map keeps).
    by_tag: Vec<usize>,
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
        let group_by = group_by[..group_by.len().min(MAX_DIMS)].to_vec();
        let mut by_tag: Vec<usize> = (0..group_by.len()).collect();
        // Stable: equal tags stay in group-by order, and the last of each run is kept.
        by_tag.sort_by_key(|&i| group_by[i].tag());
        let mut kept: Vec<usize> = Vec::with_capacity(by_tag.len());
        for i in by_tag {
            match kept.last_mut() {
                Some(last) if group_by[*last].tag() == group_by[i].tag() => *last = i,
                _ => kept.push(i),
            }
        }
        Self { group_by, by_tag: kept, ..Self::default() }
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

    /// Orders two series as their [`SeriesTable::dims`] maps compare, without building them:
    /// the present (tag, value) pairs in tag order, lexicographically.
    pub fn cmp_dims(&self, a: SeriesId, b: SeriesId) -> std::cmp::Ordering {
        let pairs = |id: SeriesId| {
            let values = self.values.get(id as usize).and_then(Option::as_deref).unwrap_or_default();
            self.by_tag
                .iter()
                .filter_map(move |&i| values.get(i).and_then(|v| v.as_deref()).map(|v| (self.group_by[i].tag(), v)))
        };
        pairs(a).cmp(pairs(b))
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

    proptest::proptest! {
        /// Sorting by `cmp_dims` is sorting by the `dims` maps, for any group-by order (the
        /// tags' order differs from the group-by's) and any missing values.
        #[test]
        fn cmp_dims_orders_as_the_dims_maps(
            series in proptest::collection::vec(
                (proptest::option::of("[ab]{0,2}"), proptest::option::of("[ab]{0,2}"), "[ab]{0,2}"),
                1..12,
            ),
        ) {
            use crate::window::Dim;
            let group_by = [Dim::TaskType, Dim::Tenant, Dim::Kind, Dim::Model];
            let mut t = SeriesTable::new(&group_by);
            let ids: Vec<SeriesId> = series
                .iter()
                .map(|(tenant, model, task_type)| {
                    let mut e = ev(task_type, tenant.as_deref());
                    e.model = model.as_ref().map(|m| modelperf_schema::ModelRef { name: m.clone(), ..Default::default() });
                    t.id_of(&e)
                })
                .collect();
            for &a in &ids {
                for &b in &ids {
                    proptest::prop_assert_eq!(t.cmp_dims(a, b), t.dims(a).cmp(&t.dims(b)));
                }
            }
        }
    }
}
