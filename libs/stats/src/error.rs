//! What can go wrong: [`StatsError`].

/// Why a statistic could not be computed.
///
/// Every variant is about the input, so retrying the same call never helps: a caller that gets
/// one from data it received treats the data as unusable for that statistic (the analyzer
/// reports "not enough data" or "cannot be separated"), and one from its own arguments has a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// An argument lies outside its domain: a confidence outside (0, 1), more successes than
    /// trials, a p-value outside [0, 1], a NaN or an infinity among the data, slices of
    /// different lengths.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The method needs more observations than it was given.
    #[error("too few observations: {what} needs at least {needed}, got {got}")]
    TooFewObservations {
        /// The statistic or the part of the input that is too small.
        what: &'static str,
        /// The smallest count the method accepts.
        needed: usize,
        /// The count it was given.
        got: usize,
    },
    /// The data leave the statistic undefined, typically a zero variance (every observation
    /// equal, a pooled proportion of 0 or 1, no discordant pairs).
    #[error("undefined: {0}")]
    Undefined(&'static str),
}
