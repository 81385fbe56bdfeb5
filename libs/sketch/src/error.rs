//! What can go wrong decoding or merging sketches.

/// A sketch that cannot be decoded or merged.
///
/// Every variant is permanent — the caller's *terminate* class: the same bytes never decode and
/// the same two mappings never match on a retry, so a message carrying such a sketch belongs in a
/// dead-letter queue, not in a redelivery loop. Tests match on the variant, not on the text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SketchError {
    /// The bytes are not a protobuf `DDSketch` message, or its content is not a valid sketch
    /// (truncated input, a bad varint, a known field with the wrong wire type, no mapping, a bin
    /// count that is negative or not finite, a bin outside the range of representable values).
    #[error("malformed sketch: {reason}")]
    Malformed {
        /// What is wrong, and where (byte offsets count from the start of the enclosing message).
        reason: String,
    },
    /// A valid DDSketch this crate does not handle: an interpolated index mapping (`LINEAR`,
    /// `QUADRATIC`, `CUBIC`), an index offset that is not an integer of magnitude at most 2^24, a
    /// gamma outside 1.000001..=1000 (relative accuracy ~5e-7 to ~0.998), or negative values.
    #[error("unsupported sketch: {reason}")]
    Unsupported {
        /// What is not supported.
        reason: String,
    },
    /// The two sketches of a merge map values to bins differently, so their bins cannot be added.
    #[error(
        "sketches have different index mappings: gamma {left_gamma} offset {left_offset} vs gamma {right_gamma} offset {right_offset}"
    )]
    MappingMismatch {
        /// Gamma of the sketch merged into.
        left_gamma: f64,
        /// Index offset of the sketch merged into.
        left_offset: i32,
        /// Gamma of the sketch merged from.
        right_gamma: f64,
        /// Index offset of the sketch merged from.
        right_offset: i32,
    },
    /// The merged total weight or sum of values would not be a finite number.
    #[error("merged sketch would overflow: total weight or sum is not finite")]
    Overflow,
}

impl SketchError {
    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        SketchError::Malformed { reason: reason.into() }
    }

    pub(crate) fn unsupported(reason: impl Into<String>) -> Self {
        SketchError::Unsupported { reason: reason.into() }
    }
}
