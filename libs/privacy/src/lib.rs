//! `modelperf-privacy` owns how personal data is treated before an event leaves the collector:
//! keyed pseudonyms for personal ids (`user_id`, `session_id` and configured attributes) and the
//! scrubbing of free text (attribute strings, `violations[].message`, `agent_status.reason`).
//!
//! The collector builds one [`Privacy`] from a [`PrivacyConfig`] at start-up and calls
//! [`Privacy::apply`] on every clean event; [`scrub()`] is also usable on its own.
//!
//! Levels (see [`PrivacyLevel`]):
//! - `off`: nothing changes; the event records `privacy = {level: off}` without a `key_id`;
//! - `pseudonymize` (default): ids become pseudonyms, free text is scrubbed;
//! - `strict`: ids become pseudonyms and free text is dropped (see [`Privacy::apply`]).
//!
//! A pseudonym is the lowercase hex of HMAC-SHA256(key, value), all 32 bytes (64 characters):
//! stable for one key, unlinkable across keys. `key_id` names the key on every event, so a
//! consumer can tell pseudonyms of different keys apart after a rotation.
//!
//! Layout:
//! - [`config`]: [`PrivacyConfig`], [`PrivacyError`], the development key;
//! - [`privacy`]: [`Privacy`]: pseudonyms and [`Privacy::apply`];
//! - [`scrub`](mod@scrub): [`scrub()`] and the rules for what counts as personal data in free text
//!   (the detectors themselves live in a private `detect` module).

mod detect;

pub mod config;
pub mod privacy;
pub mod scrub;

pub use config::{DEV_KEY, DEV_KEY_ID, PrivacyConfig, PrivacyError};
pub use modelperf_schema::PrivacyLevel;
pub use privacy::{Privacy, RAW_MSG_ID};
pub use scrub::scrub;
