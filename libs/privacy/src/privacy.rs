//! [`Privacy`]: keyed pseudonyms and the treatment of a whole event.

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use modelperf_schema::{AttrValue, Data, Event, PrivacyLevel};
use sha2::Sha256;

use crate::config::{DEV_KEY, DEV_KEY_ID, PrivacyConfig, PrivacyError};
use crate::scrub::scrub;

/// The attribute in which the collector keeps a producer's differing `Nats-Msg-Id`. It is a
/// message id, not personal data, and passes unchanged at every level (even when listed in
/// `pseudonymize_attrs`).
pub const RAW_MSG_ID: &str = "raw_msg_id";

/// The message whose pseudonym, when no `key_id` is configured, names the key (see
/// [`Privacy::new`]).
const KEY_ID_LABEL: &str = "modelperf-privacy key id";

/// The privacy treatment of events, built once from a [`PrivacyConfig`] and shared by every
/// worker (it is `Send + Sync` and never changes).
#[derive(Clone)]
pub struct Privacy {
    level: PrivacyLevel,
    /// HMAC-SHA256 already keyed: cloning it skips hashing the key pads for every value.
    mac: Hmac<Sha256>,
    key_id: String,
    dev_key: bool,
    pseudonymize_attrs: Vec<String>,
}

impl std::fmt::Debug for Privacy {
    // Hand-written: the keyed HMAC state is derived from the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("level", &self.level)
            .field("key_id", &self.key_id)
            .field("dev_key", &self.dev_key)
            .field("pseudonymize_attrs", &self.pseudonymize_attrs)
            .finish_non_exhaustive()
    }
}

impl Privacy {
    /// Builds the treatment.
    ///
    /// The key is `cfg.key`; a key that is missing, empty or only whitespace counts as missing.
    /// - With `require_key` (production) a missing key is [`PrivacyError::MissingKey`], unless
    ///   the level is `off`, which needs no key.
    /// - Without it (development) a missing key falls back to the published [`DEV_KEY`] with
    ///   `key_id` [`DEV_KEY_ID`]; [`Privacy::uses_dev_key`] then says so, and the caller should
    ///   log a warning.
    ///
    /// `key_id` is `cfg.key_id` when set and non-empty; otherwise `k-` followed by the first 8
    /// hex digits of the pseudonym of `"modelperf-privacy key id"` under the key, so a key change
    /// always changes the id without revealing more about the key than any pseudonym does.
    pub fn new(cfg: &PrivacyConfig, require_key: bool) -> Result<Privacy, PrivacyError> {
        let key = cfg.key.as_deref().filter(|k| !k.trim().is_empty());
        let needs_key = cfg.level != PrivacyLevel::Off;
        if key.is_none() && require_key && needs_key {
            return Err(PrivacyError::MissingKey);
        }
        let dev_key = key.is_none();
        let mac = keyed(key.unwrap_or(DEV_KEY));
        let mut privacy = Privacy {
            level: cfg.level,
            mac,
            key_id: String::new(),
            // At `off` nothing is pseudonymised, so the development key is never in use.
            dev_key: dev_key && needs_key,
            pseudonymize_attrs: cfg.pseudonymize_attrs.clone(),
        };
        privacy.key_id = match cfg.key_id.as_deref().filter(|id| !id.trim().is_empty()) {
            _ if dev_key => DEV_KEY_ID.to_owned(),
            Some(id) => id.to_owned(),
            None => {
                let mut id = privacy.pseudonym(KEY_ID_LABEL);
                id.truncate(8);
                format!("k-{id}")
            }
        };
        Ok(privacy)
    }

    /// The level applied by [`Privacy::apply`].
    pub fn level(&self) -> PrivacyLevel {
        self.level
    }

    /// True when pseudonyms are made with the published [`DEV_KEY`] (no key configured, level
    /// not `off`): they protect nothing, and the caller should log a warning.
    pub fn uses_dev_key(&self) -> bool {
        self.dev_key
    }

    /// The name of the key recorded on events (`privacy.key_id`), also at level `off`, where
    /// events record none.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The pseudonym of `value`: lowercase hex of HMAC-SHA256(key, value), all 32 bytes (64
    /// characters). Stable for one key; at level `off` it still uses the configured key (or
    /// [`DEV_KEY`]).
    pub fn pseudonym(&self, value: &str) -> String {
        let mut out = String::with_capacity(64);
        push_hex(&self.mac_of(value), &mut out);
        out
    }

    /// Replaces `value` by its pseudonym, reusing its buffer.
    fn pseudonymize(&self, value: &mut String) {
        let mac = self.mac_of(value);
        value.clear();
        push_hex(&mac, value);
    }

    /// HMAC-SHA256(key, value).
    fn mac_of(&self, value: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn is_pseudonymized_attr(&self, key: &str) -> bool {
        self.pseudonymize_attrs.iter().any(|k| k == key)
    }

    /// Treats one event in place and records how in `event.privacy`.
    ///
    /// - `off`: nothing changes; `privacy = {level: off}` without a `key_id`.
    /// - `pseudonymize`: `user_id`, `session_id` and the attributes named in
    ///   `pseudonymize_attrs` become pseudonyms (a text value, or an integer through its decimal
    ///   form — the attribute then becomes text; floats and booleans are not ids and stay);
    ///   every other text attribute, each `violations[].message` and an `agent_status` `reason`
    ///   are [`scrub`]bed.
    /// - `strict`: pseudonyms as above; every other text attribute is removed, each
    ///   `violations[].message` becomes `""` (the field is required on the wire; `severity` and
    ///   `rule` stay, so violations can still be counted by rule), and `reason` is removed.
    ///
    /// At every level: `raw_msg_id` ([`RAW_MSG_ID`]) passes unchanged, numbers and booleans pass
    /// unchanged, `benchmark` is never touched, nor is any other field (`error_kind` and
    /// `rule` are short codes, not free text). The event is taken as raw input: applying twice
    /// pseudonymises the pseudonyms.
    pub fn apply(&self, event: &mut Event) {
        let off = self.level == PrivacyLevel::Off;
        event.privacy = Some(modelperf_schema::Privacy {
            level: self.level,
            key_id: if off { None } else { Some(self.key_id.clone()) },
        });
        if off {
            return;
        }
        let strict = self.level == PrivacyLevel::Strict;
        if let Some(id) = event.user_id.as_mut() {
            self.pseudonymize(id);
        }
        if let Some(id) = event.session_id.as_mut() {
            self.pseudonymize(id);
        }
        if strict {
            event.attrs.retain(|key, value| {
                !matches!(value, AttrValue::Text(_)) || key == RAW_MSG_ID || self.is_pseudonymized_attr(key)
            });
        }
        for (key, value) in event.attrs.iter_mut() {
            if key == RAW_MSG_ID {
                continue;
            }
            if self.is_pseudonymized_attr(key) {
                match value {
                    AttrValue::Text(text) => self.pseudonymize(text),
                    AttrValue::Int(n) => *value = AttrValue::Text(self.pseudonym(&n.to_string())),
                    AttrValue::Bool(_) | AttrValue::Float(_) => {}
                }
            } else if let AttrValue::Text(text) = value {
                scrub_in_place(text);
            }
        }
        match &mut event.data {
            Data::Validation(validation) => {
                for violation in &mut validation.violations {
                    if strict {
                        violation.message.clear();
                    } else {
                        scrub_in_place(&mut violation.message);
                    }
                }
            }
            Data::AgentStatus(status) => {
                if strict {
                    status.reason = None;
                } else if let Some(reason) = status.reason.as_mut() {
                    scrub_in_place(reason);
                }
            }
            _ => {}
        }
    }
}

/// Scrubs `text`, touching it only when something was found.
fn scrub_in_place(text: &mut String) {
    if let Cow::Owned(scrubbed) = scrub(text) {
        *text = scrubbed;
    }
}

/// Appends the lowercase hex of `bytes` to `out`.
fn push_hex(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// HMAC-SHA256 keyed with `key`.
fn keyed(key: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length (longer ones are hashed first), so this cannot fail.
    #[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length")
}
