//! The event id rules of the contract.

use uuid::Uuid;

use crate::event::{AttrValue, Event};

/// Namespace of derived event ids (UUIDv5).
pub const ID_NAMESPACE: Uuid = uuid::uuid!("bb0ec092-ea25-503c-b5ad-d657d4cc2520");

/// The attribute that keeps a producer's `Nats-Msg-Id` when it differs from the body's id.
pub const RAW_MSG_ID_ATTR: &str = "raw_msg_id";

/// The id of an event that has none: UUIDv5 of the `Nats-Msg-Id` header, else of
/// `<stream>:<seq>` (the raw message's place in `PERF_RAW`).
pub fn derive_id(msg_id_header: Option<&str>, stream: &str, seq: u64) -> String {
    let name = match msg_id_header {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => format!("{stream}:{seq}"),
    };
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Applies the id rules to a raw event: the body's id wins; a different header is kept as
/// `attrs.raw_msg_id`; without a body id one is derived.
pub fn assign_id(event: &mut Event, msg_id_header: Option<&str>, stream: &str, seq: u64) {
    match (&event.id, msg_id_header) {
        (Some(body), Some(header)) if !header.is_empty() && header != body => {
            event.attrs.insert(RAW_MSG_ID_ATTR.to_owned(), AttrValue::Text(header.to_owned()));
        }
        (Some(_), _) => {}
        (None, header) => event.id = Some(derive_id(header, stream, seq)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derive_id(Some("producer-1"), "PERF_RAW", 7);
        assert_eq!(a, derive_id(Some("producer-1"), "PERF_RAW", 99));
        assert_ne!(a, derive_id(None, "PERF_RAW", 7));
        assert_eq!(derive_id(None, "PERF_RAW", 7), derive_id(Some(""), "PERF_RAW", 7));
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }
}
