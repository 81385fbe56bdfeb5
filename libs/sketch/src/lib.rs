//! `modelperf-sketch` owns the latency sketch of the metrics contract: a mergeable, weighted
//! DDSketch of non-negative values (milliseconds) with 1 % relative accuracy, and its wire form,
//! the protobuf `DDSketch` message of DataDog's sketches libraries (sketches-go, -java, -py,
//! -js). The aggregator adds each event's latency with weight `1/sample_rate`, merges partial
//! windows and `1m` windows into longer ones, and publishes [`Sketch::to_bytes`] as the metrics
//! message's `latency_sketch`; readers in any language decode it and merge or query it.
//!
//! ```
//! use modelperf_sketch::Sketch;
//!
//! let mut window = Sketch::new();
//! window.add(120.0);
//! window.add_weighted(480.0, 4.0); // kept with sample rate 1/4
//! let mut hour = Sketch::from_bytes(&window.to_bytes())?;
//! hour.merge(&window)?;
//! let p50 = hour.quantile(0.5).unwrap();
//! assert!((p50 - 480.0).abs() <= 0.01 * 480.0);
//! # Ok::<(), modelperf_sketch::SketchError>(())
//! ```
//!
//! Layout:
//! - [`sketch`]: the sketch, [`Sketch`] — adding, merging, quantiles, `min`/`max`/`sum`/`mean`;
//! - `proto`: [`Sketch::to_bytes`] and [`Sketch::from_bytes`], the `DDSketch` message;
//! - `mapping`: value ↔ bin key, [`RELATIVE_ACCURACY`];
//! - `store`: the bins, dense, collapsing the lowest beyond [`MAX_BINS`];
//! - `wire`: the protobuf wire format (varint, zigzag, fixed64), hand-written, no code generation;
//! - [`error`]: what can go wrong, [`SketchError`].
//!
//! # The sketch
//!
//! Gamma is `(1 + a) / (1 - a)` with `a` = [`RELATIVE_ACCURACY`] = 0.01 (1.0202…). A value `v`
//! falls in the bin with key `ceil(ln(v) / ln(gamma)) + indexOffset` (indexOffset 0), i.e. bin
//! `k` holds `(gamma^(k-1), gamma^k]`, and stands for `gamma^k * 2 / (1 + gamma)`, within 1 % of
//! each of its values. Values at or below `f64::MIN_POSITIVE * gamma` (zero, really) count in the
//! zero bin and stand for 0. Bins hold `f64` weights. When the keys span more than [`MAX_BINS`]
//! (a ratio of ~6e17 between the largest and the smallest value), the lowest keys fold into the
//! lowest kept bin, so the encoding stays under ~16.4 KiB whatever the input; quantiles that fall
//! in a folded bin lose their accuracy (they are overestimated), the high ones never do.
//!
//! Merging adds bins and needs equal mappings (same gamma within 1e-12, same offset); every
//! sketch from [`Sketch::new`] has the same mapping. The result does not depend on the order of
//! additions and merges, up to the rounding of adding floating-point weights.
//!
//! Quantiles are *lower* quantiles of the weighted values (see [`Sketch::quantile`]). `min`,
//! `max` and `sum` are tracked exactly in memory (the window's own `latency_max_ms` and
//! `latency_mean_ms` come from them); the protobuf message has no field for them, so after
//! [`Sketch::from_bytes`] they are estimated from the bins.
//!
//! # The encoding
//!
//! ```proto
//! message DDSketch {
//!   IndexMapping mapping = 1;  // gamma = 1 (double), indexOffset = 2 (double),
//!                              // interpolation = 3 (enum: NONE = 0, LINEAR, QUADRATIC, CUBIC)
//!   Store positiveValues = 2;  // binCounts = 1 (map<sint32, double>),
//!   Store negativeValues = 3;  // contiguousBinCounts = 2 (packed repeated double),
//!                              // contiguousBinIndexOffset = 3 (sint32)
//!   double zeroCount = 4;
//! }
//! ```
//!
//! [`Sketch::to_bytes`] writes canonical proto3: `mapping {gamma}` (indexOffset 0 and
//! interpolation NONE = 0 are defaults, hence omitted), `positiveValues` as
//! `contiguousBinCounts` from the lowest to the highest non-empty bin plus
//! `contiguousBinIndexOffset` (omitted when 0), an empty `negativeValues`, and `zeroCount` (omitted
//! when 0). [`Sketch::from_bytes`] reads what any DataDog library writes: both bin forms, any field
//! order, unknown fields; it rejects interpolated mappings and negative values, and returns an
//! error for malformed input, never panics. The frozen fixtures in `schemas/fixtures/sketch/`
//! (this crate's `latency-v1.bin`, sketches-py's `python-v1.bin`) are decoded by a test forever.
//!
//! The protobuf fixes gamma and the offset, not whether keys round up or down, and DataDog's
//! libraries differ: sketches-py and sketches-js use `ceil`, like this crate, and decode these
//! bytes exactly; sketches-go and sketches-java use `floor` and, reading these bytes as they are,
//! see every bin one step too high (quantiles about 2 % high). A Go or Java reader should add 1 to
//! `mapping.indexOffset` of the decoded message before building its sketch (and subtract 1 before
//! sending a sketch here).
//!
//! `tests/interop.py` checks the Python side (not part of `make test`): with
//! `pip install ddsketch protobuf`, `python3 libs/sketch/tests/interop.py` decodes
//! `latency-v1.bin` with sketches-py and compares its quantiles with `latency-v1.json`, then
//! encodes the same values with sketches-py and has this crate decode them (`--bless` writes
//! `python-v1.bin` when it is missing).
//!
//! The schema crate carries the sketch as bytes (`serde_bytes`), so it does not depend on this
//! crate: build with [`Sketch::to_bytes`], read with [`Sketch::from_bytes`]. InfluxDB gets the
//! same bytes in base64.

pub mod error;
mod mapping;
mod proto;
pub mod sketch;
mod store;
mod wire;

pub use error::SketchError;
pub use mapping::RELATIVE_ACCURACY;
pub use sketch::Sketch;
pub use store::MAX_BINS;
