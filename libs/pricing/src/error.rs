//! Why a price catalog could not be loaded.

use std::path::PathBuf;

/// A price catalog that cannot be loaded. Every error is fatal for the caller: a service refuses
/// to start with a broken catalog rather than price events wrongly (a bad catalog never becomes
/// good by retrying). Messages name the file, the entry and the field.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The file could not be read.
    #[error("cannot read price catalog {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A problem inside a catalog file; `source` says which.
    #[error("price catalog {}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: Box<PricingError>,
    },
    /// The text is not TOML, or a top-level key is missing, mistyped or unknown.
    #[error("{0}")]
    Syntax(String),
    /// The top-level `version` is unusable.
    #[error("top-level field `version`: {reason}")]
    Version {
        /// Why.
        reason: String,
    },
    /// One `[[price]]` entry is invalid.
    #[error("entry #{index} ({label}), field `{field}`: {reason}")]
    Entry {
        /// 1-based position of the entry among the `[[price]]` tables of the file.
        index: usize,
        /// `provider/model[@version]` as written in the entry, as far as it could be read.
        label: String,
        /// The offending field (for an unknown key, the key itself).
        field: String,
        /// Why.
        reason: String,
    },
}

impl PricingError {
    /// The error without the file it happened in.
    pub fn root(&self) -> &PricingError {
        match self {
            PricingError::InFile { source, .. } => source.root(),
            other => other,
        }
    }

    /// The 1-based entry an error is about, if it is about one.
    pub fn entry(&self) -> Option<usize> {
        match self.root() {
            PricingError::Entry { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The field an error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self.root() {
            PricingError::Entry { field, .. } => Some(field),
            PricingError::Version { .. } => Some("version"),
            _ => None,
        }
    }
}
