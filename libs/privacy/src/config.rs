//! The privacy configuration, its errors and the development key.

use modelperf_schema::PrivacyLevel;
use serde::Deserialize;

/// The key used when no key is configured outside production. It is published here, so its
/// pseudonyms protect nothing: anyone can recompute them. Development and tests only; the
/// collector logs a warning when it is in use and refuses to start without a real key in
/// production.
pub const DEV_KEY: &str = "modelperf-development-privacy-key-not-secret";

/// The `key_id` recorded on events pseudonymised with [`DEV_KEY`].
pub const DEV_KEY_ID: &str = "dev";

/// How the collector treats personal data. Deserialises with defaults for every field (level
/// `pseudonymize`, no key, no key id, no extra attributes). `Debug` never prints the key.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct PrivacyConfig {
    /// `off`, `pseudonymize` (default) or `strict`.
    pub level: PrivacyLevel,
    /// The secret HMAC key of the pseudonyms. Required in production unless the level is `off`.
    pub key: Option<String>,
    /// The name of the key, recorded on every event (`privacy.key_id`) so pseudonyms of different
    /// keys can be told apart after a rotation. When absent it is derived from the key (see
    /// [`crate::Privacy::new`]).
    pub key_id: Option<String>,
    /// Attribute keys whose values are personal ids: their values become pseudonyms, like
    /// `user_id`, instead of being scrubbed.
    pub pseudonymize_attrs: Vec<String>,
}

impl std::fmt::Debug for PrivacyConfig {
    // Hand-written so the key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyConfig")
            .field("level", &self.level)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_id", &self.key_id)
            .field("pseudonymize_attrs", &self.pseudonymize_attrs)
            .finish()
    }
}

/// Why a [`crate::Privacy`] cannot be built. Every variant is a configuration error: fatal at
/// start-up (the service exits 64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// Production requires a non-empty key unless the level is `off`.
    #[error("a privacy key is required in production: the key is missing or empty")]
    MissingKey,
}
