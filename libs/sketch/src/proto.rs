//! [`Sketch::to_bytes`] and [`Sketch::from_bytes`]: the protobuf `DDSketch` message of DataDog's
//! sketches libraries, written and read by hand.
//!
//! ```proto
//! message DDSketch { IndexMapping mapping = 1; Store positiveValues = 2; Store negativeValues = 3; double zeroCount = 4; }
//! message IndexMapping { double gamma = 1; double indexOffset = 2; Interpolation interpolation = 3; }
//! enum Interpolation { NONE = 0; LINEAR = 1; QUADRATIC = 2; CUBIC = 3; }
//! message Store { map<sint32, double> binCounts = 1; repeated double contiguousBinCounts = 2 [packed = true]; sint32 contiguousBinIndexOffset = 3; }
//! ```

use std::collections::BTreeMap;

use crate::mapping::Mapping;
use crate::store::Store;
use crate::wire::{self, Reader, WireType};
use crate::{Sketch, SketchError};

// Field numbers.
const SKETCH_MAPPING: u32 = 1;
const SKETCH_POSITIVE: u32 = 2;
const SKETCH_NEGATIVE: u32 = 3;
const SKETCH_ZERO_COUNT: u32 = 4;
const MAPPING_GAMMA: u32 = 1;
const MAPPING_INDEX_OFFSET: u32 = 2;
const MAPPING_INTERPOLATION: u32 = 3;
const STORE_BIN_COUNTS: u32 = 1;
const STORE_CONTIGUOUS: u32 = 2;
const STORE_CONTIGUOUS_OFFSET: u32 = 3;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;

impl Sketch {
    /// The sketch as a protobuf `DDSketch` message (DataDog's binary encoding).
    ///
    /// Canonical proto3, fields in number order, default values omitted: the mapping (`gamma`;
    /// `indexOffset` only when not 0; `interpolation` NONE, i.e. omitted), the positive values as
    /// `contiguousBinCounts` from the lowest to the highest non-empty bin with
    /// `contiguousBinIndexOffset` (the form every DataDog library reads; sketches-py reads no
    /// other), an empty `negativeValues` store, and `zeroCount` when not 0. The same bins always
    /// give the same bytes. At most about 16.4 KiB (2048 bins).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mapping = self.mapping();
        let store = self.store();
        let mut mapping_len = 9;
        if mapping.offset() != 0 {
            mapping_len += 9;
        }
        let span = store.span();
        let low = store.key_range().map_or(0, |(low, _)| low);
        let mut store_len = 0;
        if span > 0 {
            let packed = 8 * span;
            store_len += 1 + wire::varint_len(packed as u64) + packed;
        }
        if low != 0 && span > 0 {
            store_len += 1 + wire::varint_len(u64::from(wire::zigzag_encode(low)));
        }
        let mut buf = Vec::with_capacity(2 + mapping_len + 4 + store_len + 2 + 9);

        wire::put_len_header(&mut buf, SKETCH_MAPPING, mapping_len);
        wire::put_double(&mut buf, MAPPING_GAMMA, mapping.gamma());
        if mapping.offset() != 0 {
            wire::put_double(&mut buf, MAPPING_INDEX_OFFSET, f64::from(mapping.offset()));
        }

        wire::put_len_header(&mut buf, SKETCH_POSITIVE, store_len);
        if span > 0 {
            wire::put_len_header(&mut buf, STORE_CONTIGUOUS, 8 * span);
            for weight in store.contiguous() {
                buf.extend_from_slice(&weight.to_le_bytes());
            }
            if low != 0 {
                wire::put_sint32(&mut buf, STORE_CONTIGUOUS_OFFSET, low);
            }
        }

        // Always present, even empty: some readers dereference it without checking.
        wire::put_len_header(&mut buf, SKETCH_NEGATIVE, 0);

        if self.zero_count() != 0.0 {
            wire::put_double(&mut buf, SKETCH_ZERO_COUNT, self.zero_count());
        }
        buf
    }

    /// Decodes a protobuf `DDSketch` message, from this crate or from any DataDog library.
    ///
    /// Accepts the bins as `binCounts` (map), as `contiguousBinCounts` (packed or not), or both
    /// (a bin in both counts their sum; a key repeated in the map keeps its last value, as in
    /// protobuf), fields in any order, repeated messages merged as protobuf does, and unknown
    /// fields (skipped). Bins with zero weight are dropped; a span wider than
    /// [`MAX_BINS`](crate::MAX_BINS) collapses its lowest bins. `min`, `max` and `sum` are
    /// estimated from the bins; [`ignored`](Sketch::ignored) is 0.
    ///
    /// Errors, never panics: [`SketchError::Malformed`] for bytes that are not a valid sketch
    /// (including a missing mapping, and weights that are negative, NaN or infinite),
    /// [`SketchError::Unsupported`] for interpolated mappings, non-integer index offsets and
    /// negative values.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch, SketchError> {
        let mut mapping: Option<MappingFields> = None;
        let mut positive = StoreFields::default();
        let mut negative = StoreFields::default();
        let mut zero_count = 0.0;
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            let (field, wire_type) = r.tag()?;
            match (field, wire_type) {
                (SKETCH_MAPPING, WireType::Len) => {
                    mapping.get_or_insert_with(MappingFields::default).read(r.len_delimited()?)?
                }
                (SKETCH_POSITIVE, WireType::Len) => positive.read(r.len_delimited()?)?,
                (SKETCH_NEGATIVE, WireType::Len) => negative.read(r.len_delimited()?)?,
                (SKETCH_ZERO_COUNT, WireType::Fixed64) => zero_count = r.double()?,
                (SKETCH_MAPPING..=SKETCH_ZERO_COUNT, _) => return Err(wrong_wire_type("DDSketch", field, wire_type)),
                _ => r.skip(field, wire_type)?,
            }
        }

        let mapping = mapping.ok_or_else(|| SketchError::malformed("no index mapping (field 1)"))?.into_mapping()?;
        if !(zero_count.is_finite() && zero_count >= 0.0) {
            return Err(SketchError::malformed(format!("zeroCount {zero_count} is not a finite non-negative number")));
        }
        let negative = negative.into_store()?;
        if !negative.is_empty() {
            return Err(SketchError::unsupported("negative values (latency sketches hold none)"));
        }
        let positive = positive.into_store()?;
        if let Some((low, high)) = positive.key_range()
            && !(mapping.is_valid_key(low) && mapping.is_valid_key(high))
        {
            return Err(SketchError::malformed(format!(
                "bins {low}..={high} reach beyond the representable values of gamma {} offset {}",
                mapping.gamma(),
                mapping.offset()
            )));
        }
        let sketch = Sketch::from_bins(mapping, positive, zero_count);
        if !sketch.count().is_finite() || !sketch.sum().is_finite() {
            return Err(SketchError::malformed("total weight or estimated sum is not finite"));
        }
        Ok(sketch)
    }
}

fn wrong_wire_type(message: &str, field: u32, wire_type: WireType) -> SketchError {
    SketchError::malformed(format!("{message} field {field} has wire type {wire_type:?}"))
}

/// `IndexMapping` as read, before validation.
#[derive(Debug, Default)]
struct MappingFields {
    gamma: f64,
    index_offset: f64,
    interpolation: i32,
}

impl MappingFields {
    fn read(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            let (field, wire_type) = r.tag()?;
            match (field, wire_type) {
                (MAPPING_GAMMA, WireType::Fixed64) => self.gamma = r.double()?,
                (MAPPING_INDEX_OFFSET, WireType::Fixed64) => self.index_offset = r.double()?,
                // An enum is an int32: truncate like protobuf does.
                (MAPPING_INTERPOLATION, WireType::Varint) => self.interpolation = r.varint()? as i32,
                (MAPPING_GAMMA..=MAPPING_INTERPOLATION, _) => {
                    return Err(wrong_wire_type("IndexMapping", field, wire_type));
                }
                _ => r.skip(field, wire_type)?,
            }
        }
        Ok(())
    }

    fn into_mapping(self) -> Result<Mapping, SketchError> {
        match self.interpolation {
            0 => Mapping::from_proto(self.gamma, self.index_offset),
            1 => Err(SketchError::unsupported("LINEAR interpolation")),
            2 => Err(SketchError::unsupported("QUADRATIC interpolation")),
            3 => Err(SketchError::unsupported("CUBIC interpolation")),
            other => Err(SketchError::unsupported(format!("unknown interpolation {other}"))),
        }
    }
}

/// `Store` as read, before validation.
#[derive(Debug, Default)]
struct StoreFields {
    /// `binCounts`: the last value of a repeated key wins, as for any protobuf map.
    bin_counts: BTreeMap<i32, f64>,
    contiguous: Vec<f64>,
    contiguous_offset: i32,
}

impl StoreFields {
    fn read(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            let (field, wire_type) = r.tag()?;
            match (field, wire_type) {
                (STORE_BIN_COUNTS, WireType::Len) => {
                    let (key, count) = read_entry(r.len_delimited()?)?;
                    self.bin_counts.insert(key, count);
                }
                (STORE_CONTIGUOUS, WireType::Len) => {
                    let packed = r.len_delimited()?;
                    if packed.len() % 8 != 0 {
                        return Err(SketchError::malformed(format!(
                            "packed contiguousBinCounts of {} bytes is not a whole number of doubles",
                            packed.len()
                        )));
                    }
                    let mut doubles = Reader::new(packed);
                    while !doubles.is_empty() {
                        self.contiguous.push(doubles.double()?);
                    }
                }
                // Parsers must accept a packed repeated field written unpacked.
                (STORE_CONTIGUOUS, WireType::Fixed64) => self.contiguous.push(r.double()?),
                (STORE_CONTIGUOUS_OFFSET, WireType::Varint) => self.contiguous_offset = r.sint32()?,
                (STORE_BIN_COUNTS..=STORE_CONTIGUOUS_OFFSET, _) => {
                    return Err(wrong_wire_type("Store", field, wire_type));
                }
                _ => r.skip(field, wire_type)?,
            }
        }
        Ok(())
    }

    fn into_store(self) -> Result<Store, SketchError> {
        let mut entries = Vec::with_capacity(self.bin_counts.len() + self.contiguous.len());
        entries.extend(self.bin_counts);
        for (index, count) in self.contiguous.into_iter().enumerate() {
            let key = i64::from(self.contiguous_offset) + index as i64;
            if count == 0.0 {
                continue;
            }
            let key = i32::try_from(key).map_err(|_| {
                SketchError::malformed(format!(
                    "contiguous bin {index} from offset {} overflows sint32",
                    self.contiguous_offset
                ))
            })?;
            entries.push((key, count));
        }
        if let Some((key, count)) = entries.iter().find(|(_, c)| !(c.is_finite() && *c >= 0.0)) {
            return Err(SketchError::malformed(format!("bin {key} has weight {count}")));
        }
        entries.sort_by_key(|(key, _)| *key);
        Ok(Store::from_sorted(&entries))
    }
}

/// One `binCounts` map entry: `sint32 key = 1; double value = 2;`, either absent meaning 0.
fn read_entry(bytes: &[u8]) -> Result<(i32, f64), SketchError> {
    let (mut key, mut count) = (0, 0.0);
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let (field, wire_type) = r.tag()?;
        match (field, wire_type) {
            (ENTRY_KEY, WireType::Varint) => key = r.sint32()?,
            (ENTRY_VALUE, WireType::Fixed64) => count = r.double()?,
            (ENTRY_KEY | ENTRY_VALUE, _) => return Err(wrong_wire_type("binCounts entry", field, wire_type)),
            _ => r.skip(field, wire_type)?,
        }
    }
    Ok((key, count))
}

#[cfg(test)]
mod tests;
