//! The protobuf wire format, as much of it as a `DDSketch` needs: varints, zigzag `sint32`,
//! little-endian `double`s, length-delimited fields, and skipping whatever else a message holds.
//!
//! The reader never panics and never allocates: every read checks the remaining length, and
//! errors say what was expected at which byte offset (counted from the start of the message the
//! reader was given).

use crate::SketchError;

/// How a field's value is laid out on the wire (the low three bits of its tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    Fixed64,
    Len,
    StartGroup,
    EndGroup,
    Fixed32,
}

impl WireType {
    fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            _ => return None,
        })
    }

    fn bits(self) -> u64 {
        match self {
            WireType::Varint => 0,
            WireType::Fixed64 => 1,
            WireType::Len => 2,
            WireType::StartGroup => 3,
            WireType::EndGroup => 4,
            WireType::Fixed32 => 5,
        }
    }
}

/// Largest field number protobuf allows.
const MAX_FIELD: u64 = (1 << 29) - 1;

/// Reads one message's fields from a byte slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn error(&self, what: &str) -> SketchError {
        SketchError::malformed(format!("{what} at byte {}", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SketchError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len()).ok_or_else(|| self.error(what))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// A base-128 varint of at most ten bytes whose value fits 64 bits.
    pub(crate) fn varint(&mut self) -> Result<u64, SketchError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1, "truncated varint")?.first().ok_or_else(|| self.error("truncated varint"))?;
            // The tenth byte carries only the top bit of a u64.
            if shift == 63 && byte > 1 {
                return Err(self.error("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than ten bytes"))
    }

    /// Eight bytes, little-endian.
    pub(crate) fn fixed64(&mut self) -> Result<u64, SketchError> {
        let bytes = self.take(8, "truncated 64-bit value")?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    /// A `double` field's value.
    pub(crate) fn double(&mut self) -> Result<f64, SketchError> {
        self.fixed64().map(f64::from_bits)
    }

    /// A `sint32` field's value. Like protobuf's own parsers, a varint wider than 32 bits is
    /// truncated to its low 32 bits.
    pub(crate) fn sint32(&mut self) -> Result<i32, SketchError> {
        self.varint().map(|v| zigzag_decode(v as u32))
    }

    /// The payload of a length-delimited field.
    pub(crate) fn len_delimited(&mut self) -> Result<&'a [u8], SketchError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.error("length does not fit memory"))?;
        self.take(len, "length-delimited field runs past the end")
    }

    /// The next field's number and wire type.
    pub(crate) fn tag(&mut self) -> Result<(u32, WireType), SketchError> {
        let start = self.pos;
        let tag = self.varint()?;
        let field = tag >> 3;
        let wire_type = WireType::from_bits(tag & 7);
        match wire_type {
            Some(wire_type) if (1..=MAX_FIELD).contains(&field) => Ok((field as u32, wire_type)),
            _ => Err(SketchError::malformed(format!("invalid tag {tag} at byte {start}"))),
        }
    }

    /// Skips the value of a field this decoder does not know, groups included.
    pub(crate) fn skip(&mut self, field: u32, wire_type: WireType) -> Result<(), SketchError> {
        // Groups nest; track the open ones on a stack instead of recursing, so hostile nesting
        // cannot exhaust the call stack (the stack is bounded by the input length).
        let mut open: Vec<u32> = Vec::new();
        let (mut field, mut wire_type) = (field, wire_type);
        loop {
            match wire_type {
                WireType::Varint => {
                    self.varint()?;
                }
                WireType::Fixed64 => {
                    self.take(8, "truncated 64-bit value")?;
                }
                WireType::Fixed32 => {
                    self.take(4, "truncated 32-bit value")?;
                }
                WireType::Len => {
                    self.len_delimited()?;
                }
                WireType::StartGroup => open.push(field),
                WireType::EndGroup => match open.pop() {
                    Some(start) if start == field => {}
                    _ => return Err(self.error("unbalanced end of group")),
                },
            }
            if open.is_empty() {
                return Ok(());
            }
            (field, wire_type) = self.tag()?;
        }
    }
}

/// Maps signed to unsigned so that small magnitudes stay small (`sint32`).
pub(crate) fn zigzag_encode(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

fn zigzag_decode(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

/// Appends a base-128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// The number of bytes [`put_varint`] writes for `value`.
pub(crate) fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a field's tag.
pub(crate) fn put_tag(buf: &mut Vec<u8>, field: u32, wire_type: WireType) {
    put_varint(buf, (u64::from(field) << 3) | wire_type.bits());
}

/// Appends a `double` field.
pub(crate) fn put_double(buf: &mut Vec<u8>, field: u32, value: f64) {
    put_tag(buf, field, WireType::Fixed64);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// Appends a `sint32` field.
pub(crate) fn put_sint32(buf: &mut Vec<u8>, field: u32, value: i32) {
    put_tag(buf, field, WireType::Varint);
    put_varint(buf, u64::from(zigzag_encode(value)));
}

/// Appends the tag and length of a length-delimited field; the caller appends `len` bytes.
pub(crate) fn put_len_header(buf: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(buf, field, WireType::Len);
    put_varint(buf, len as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
        assert_eq!(zigzag_encode(0), 0);
        assert_eq!(zigzag_encode(-1), 1);
        assert_eq!(zigzag_encode(1), 2);
        assert_eq!(zigzag_encode(-2), 3);
        assert_eq!(zigzag_encode(i32::MAX), u32::MAX - 1);
        assert_eq!(zigzag_encode(i32::MIN), u32::MAX);
        let mut buf = Vec::new();
        put_double(&mut buf, 1, 1.0);
        assert_eq!(buf, [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
        let mut buf = Vec::new();
        put_sint32(&mut buf, 3, -2);
        assert_eq!(buf, [0x18, 0x03]);
    }

    #[test]
    fn malformed_varints() {
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[]).varint().is_err());
        let eleven = [0xff; 11];
        assert!(Reader::new(&eleven).varint().is_err());
        let mut overflow = [0xff; 10];
        overflow[9] = 0x02;
        assert!(Reader::new(&overflow).varint().is_err());
        let mut max = [0xff; 10];
        max[9] = 0x01;
        assert_eq!(Reader::new(&max).varint().unwrap(), u64::MAX);
    }

    #[test]
    fn tags_and_skipping() {
        // field 0, wire types 6 and 7 are invalid
        for tag in [0x00u8, 0x06, 0x0f] {
            assert!(Reader::new(&[tag]).tag().is_err(), "{tag:#x}");
        }
        // group 5 { varint field 1 = 1; group 6 { } } then varint field 2 = 7
        let bytes = [0x2b, 0x08, 0x01, 0x33, 0x34, 0x2c, 0x10, 0x07];
        let mut r = Reader::new(&bytes);
        let (field, wt) = r.tag().unwrap();
        assert_eq!((field, wt), (5, WireType::StartGroup));
        r.skip(field, wt).unwrap();
        assert_eq!(r.tag().unwrap(), (2, WireType::Varint));
        assert_eq!(r.varint().unwrap(), 7);
        assert!(r.is_empty());
        // mismatched and unterminated groups
        for bytes in [&[0x2b, 0x34][..], &[0x2b, 0x08, 0x01][..], &[0x2c][..]] {
            let mut r = Reader::new(bytes);
            let (field, wt) = r.tag().unwrap();
            assert!(r.skip(field, wt).is_err(), "{bytes:?}");
        }
        // a length running past the end
        assert!(Reader::new(&[0x05, 1, 2]).len_delimited().is_err());
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).len_delimited().is_err());
    }

    proptest! {
        #[test]
        fn varints_round_trip(value in any::<u64>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            prop_assert_eq!(buf.len(), varint_len(value));
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.varint().unwrap(), value);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn sint32_round_trips(value in any::<i32>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, u64::from(zigzag_encode(value)));
            prop_assert_eq!(Reader::new(&buf).sint32().unwrap(), value);
        }

        #[test]
        fn skipping_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            while !r.is_empty() {
                let Ok((field, wt)) = r.tag() else { break };
                if r.skip(field, wt).is_err() {
                    break;
                }
            }
        }
    }
}
