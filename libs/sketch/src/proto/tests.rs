use super::*;
use crate::RELATIVE_ACCURACY;
use proptest::prelude::*;

const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

fn message(fields: &[Vec<u8>]) -> Vec<u8> {
    fields.concat()
}

fn len_field(field: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::put_len_header(&mut buf, field, payload.len());
    buf.extend_from_slice(payload);
    buf
}

fn double_field(field: u32, value: f64) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::put_double(&mut buf, field, value);
    buf
}

fn varint_field(field: u32, value: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::put_tag(&mut buf, field, WireType::Varint);
    wire::put_varint(&mut buf, value);
    buf
}

fn sint32_field(field: u32, value: i32) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::put_sint32(&mut buf, field, value);
    buf
}

fn packed(counts: &[f64]) -> Vec<u8> {
    len_field(STORE_CONTIGUOUS, &counts.iter().flat_map(|c| c.to_le_bytes()).collect::<Vec<_>>())
}

fn entry(key: i32, count: f64) -> Vec<u8> {
    len_field(STORE_BIN_COUNTS, &message(&[sint32_field(ENTRY_KEY, key), double_field(ENTRY_VALUE, count)]))
}

fn default_mapping() -> Vec<u8> {
    len_field(SKETCH_MAPPING, &double_field(MAPPING_GAMMA, GAMMA))
}

fn sketch_with(values: &[f64]) -> Sketch {
    let mut s = Sketch::new();
    for &v in values {
        s.add(v);
    }
    s
}

fn bins(s: &Sketch) -> Vec<(i32, f64)> {
    s.store().iter().collect()
}

#[test]
fn golden_bytes() {
    // 1 ms twice (bin 0), 100 ms once (bin 231), one zero.
    let s = sketch_with(&[1.0, 1.0, 100.0, 0.0]);
    let gamma = Mapping::default().gamma().to_le_bytes();
    let mut expected = vec![0x0a, 0x09, 0x09];
    expected.extend_from_slice(&gamma);
    // positiveValues: 232 doubles = 1856 bytes = varint 0xc0 0x0e; then the store's length.
    let store_len = 1 + 2 + 1856;
    expected.extend_from_slice(&[0x12, (store_len & 0x7f) as u8 | 0x80, (store_len >> 7) as u8]);
    expected.extend_from_slice(&[0x12, 0xc0, 0x0e]);
    expected.extend_from_slice(&2f64.to_le_bytes());
    expected.extend(std::iter::repeat_n(0u8, 8 * 230));
    expected.extend_from_slice(&1f64.to_le_bytes());
    // contiguousBinIndexOffset 0 is omitted; empty negativeValues; zeroCount 1.
    expected.extend_from_slice(&[0x1a, 0x00, 0x21]);
    expected.extend_from_slice(&1f64.to_le_bytes());
    assert_eq!(s.to_bytes(), expected);

    let empty = Sketch::new().to_bytes();
    let mut expected = vec![0x0a, 0x09, 0x09];
    expected.extend_from_slice(&gamma);
    expected.extend_from_slice(&[0x12, 0x00, 0x1a, 0x00]);
    assert_eq!(empty, expected);
    assert_eq!(Sketch::from_bytes(&empty).unwrap(), Sketch::new());
}

#[test]
fn offsets_are_zigzag_sint32() {
    let s = sketch_with(&[0.5]); // ln(0.5)/ln(gamma) = -34.66: bin -34
    assert_eq!(bins(&s), vec![(-34, 1.0)]);
    let bytes = s.to_bytes();
    // ... 0x12 len [0x12 0x08 <1.0>] [0x18 zigzag(-34)=67] 0x1a 0x00
    assert_eq!(&bytes[bytes.len() - 4..], &[0x18, 67, 0x1a, 0x00]);
    assert_eq!(bins(&Sketch::from_bytes(&bytes).unwrap()), vec![(-34, 1.0)]);
}

#[test]
fn decoded_statistics_are_estimates() {
    let original = sketch_with(&[0.0, 3.0, 40.0, 500.0]);
    let decoded = Sketch::from_bytes(&original.to_bytes()).unwrap();
    assert_eq!(decoded.count(), 4.0);
    assert_eq!(decoded.min(), Some(0.0));
    let close = |a: f64, b: f64| (a - b).abs() <= RELATIVE_ACCURACY * b;
    assert!(close(decoded.max().unwrap(), 500.0));
    assert!(close(decoded.sum(), 543.0));
    assert!(close(decoded.mean().unwrap(), 543.0 / 4.0));
    assert_eq!(decoded.ignored(), 0);
    for q in [0.0, 0.3, 0.5, 0.7, 1.0] {
        let (a, b) = (original.quantile(q).unwrap(), decoded.quantile(q).unwrap());
        assert!(close(b, a), "q={q}: {a} vs {b}");
    }
    // Without a zero, the minimum is the lowest bin's value.
    let decoded = Sketch::from_bytes(&sketch_with(&[3.0, 40.0]).to_bytes()).unwrap();
    assert!(close(decoded.min().unwrap(), 3.0));
}

#[test]
fn map_contiguous_and_mixed_forms_agree() {
    let contiguous = message(&[
        default_mapping(),
        len_field(SKETCH_POSITIVE, &message(&[packed(&[0.0, 2.0, 0.0, 1.0, 0.0]), sint32_field(3, 9)])),
        double_field(SKETCH_ZERO_COUNT, 1.5),
    ]);
    let sparse = message(&[
        // fields in reverse order, the map's entries unsorted, with a zero entry
        double_field(SKETCH_ZERO_COUNT, 1.5),
        len_field(SKETCH_POSITIVE, &message(&[entry(12, 1.0), entry(7, 0.0), entry(10, 2.0)])),
        default_mapping(),
    ]);
    let mixed = message(&[
        len_field(SKETCH_POSITIVE, &message(&[entry(10, 1.5), packed(&[0.5, 0.0, 1.0]), sint32_field(3, 10)])),
        default_mapping(),
        double_field(SKETCH_ZERO_COUNT, 1.5),
    ]);
    let expected = vec![(10, 2.0), (12, 1.0)];
    for bytes in [&contiguous, &sparse, &mixed] {
        let s = Sketch::from_bytes(bytes).unwrap();
        assert_eq!(bins(&s), expected);
        assert_eq!((s.zero_count(), s.count()), (1.5, 4.5));
    }
    let canonical = Sketch::from_bytes(&sparse).unwrap().to_bytes();
    assert_eq!(Sketch::from_bytes(&canonical).unwrap(), Sketch::from_bytes(&contiguous).unwrap());
}

#[test]
fn protobuf_merge_semantics() {
    // A repeated map key keeps its last value; repeated stores and packed chunks concatenate;
    // unpacked doubles are accepted; a repeated mapping merges field by field.
    let bytes = message(&[
        len_field(SKETCH_MAPPING, &double_field(MAPPING_GAMMA, 1.5)),
        len_field(SKETCH_POSITIVE, &message(&[entry(3, 7.0), entry(3, 1.0)])),
        len_field(
            SKETCH_POSITIVE,
            &message(&[packed(&[1.0]), double_field(STORE_CONTIGUOUS, 4.0), sint32_field(3, 5)]),
        ),
        len_field(SKETCH_MAPPING, &double_field(MAPPING_GAMMA, GAMMA)),
        double_field(SKETCH_ZERO_COUNT, 9.0),
        double_field(SKETCH_ZERO_COUNT, 0.0),
    ]);
    let s = Sketch::from_bytes(&bytes).unwrap();
    assert_eq!(bins(&s), vec![(3, 1.0), (5, 1.0), (6, 4.0)]);
    assert_eq!(s.zero_count(), 0.0);
    assert!(s.mapping().same_as(&Mapping::default()));
}

#[test]
fn unknown_fields_are_skipped_everywhere() {
    let unknown = message(&[
        varint_field(15, 300),
        double_field(16, 1.0),
        len_field(17, b"hello"),
        vec![0xad, 0x01, 1, 2, 3, 4],             // field 21, fixed32
        vec![0xb3, 0x01, 0x08, 0x01, 0xb4, 0x01], // group 22 { field 1 = 1 }
    ]);
    let bytes = message(&[
        unknown.clone(),
        len_field(SKETCH_MAPPING, &message(&[unknown.clone(), double_field(MAPPING_GAMMA, GAMMA), varint_field(3, 0)])),
        len_field(
            SKETCH_POSITIVE,
            &message(&[
                unknown.clone(),
                len_field(
                    STORE_BIN_COUNTS,
                    &message(&[unknown.clone(), sint32_field(1, 4), double_field(2, 2.0), unknown.clone()]),
                ),
            ]),
        ),
        len_field(SKETCH_NEGATIVE, &unknown),
        unknown,
    ]);
    assert_eq!(bins(&Sketch::from_bytes(&bytes).unwrap()), vec![(4, 2.0)]);
}

#[test]
fn entries_default_to_key_zero_and_count_zero() {
    let bytes = message(&[
        default_mapping(),
        len_field(
            SKETCH_POSITIVE,
            &message(&[len_field(1, &[]), len_field(1, &double_field(2, 3.0)), len_field(1, &sint32_field(1, 8))]),
        ),
    ]);
    assert_eq!(bins(&Sketch::from_bytes(&bytes).unwrap()), vec![(0, 3.0)]);
}

#[test]
fn foreign_mappings_decode_but_do_not_merge() {
    let bytes = message(&[
        len_field(
            SKETCH_MAPPING,
            &message(&[double_field(MAPPING_GAMMA, 1.02), double_field(MAPPING_INDEX_OFFSET, -3.0)]),
        ),
        len_field(SKETCH_POSITIVE, &message(&[entry(100, 1.0)])),
    ]);
    let foreign = Sketch::from_bytes(&bytes).unwrap();
    let expected = 1.02f64.powi(103) * 2.0 / 2.02;
    assert!((foreign.quantile(0.5).unwrap() - expected).abs() < 1e-9 * expected);
    assert_eq!(Sketch::from_bytes(&foreign.to_bytes()).unwrap(), foreign);
    let mut ours = sketch_with(&[1.0]);
    assert!(matches!(ours.merge(&foreign), Err(SketchError::MappingMismatch { .. })));
}

#[test]
fn malformed_inputs_are_errors() {
    let malformed = [
        ("empty input: no mapping", vec![]),
        ("no mapping", message(&[len_field(SKETCH_POSITIVE, &[])])),
        ("empty mapping: gamma 0", len_field(SKETCH_MAPPING, &[])),
        ("gamma below 1", len_field(SKETCH_MAPPING, &double_field(MAPPING_GAMMA, 0.9))),
        ("gamma NaN", len_field(SKETCH_MAPPING, &double_field(MAPPING_GAMMA, f64::NAN))),
        ("truncated", default_mapping()[..5].to_vec()),
        ("mapping with a varint gamma", len_field(SKETCH_MAPPING, &varint_field(MAPPING_GAMMA, 1))),
        ("zeroCount as a varint", message(&[default_mapping(), varint_field(SKETCH_ZERO_COUNT, 1)])),
        ("store as a double", message(&[default_mapping(), double_field(SKETCH_POSITIVE, 1.0)])),
        ("offset as a double", message(&[default_mapping(), len_field(2, &double_field(3, 1.0))])),
        ("entry key as a double", message(&[default_mapping(), len_field(2, &len_field(1, &double_field(1, 1.0)))])),
        ("packed length 7", message(&[default_mapping(), len_field(2, &len_field(2, &[0; 7]))])),
        ("negative count", message(&[default_mapping(), len_field(2, &entry(1, -1.0))])),
        ("NaN count", message(&[default_mapping(), len_field(2, &packed(&[f64::NAN]))])),
        ("infinite count", message(&[default_mapping(), len_field(2, &entry(1, f64::INFINITY))])),
        ("negative zeroCount", message(&[default_mapping(), double_field(SKETCH_ZERO_COUNT, -1.0)])),
        ("bin beyond f64", message(&[default_mapping(), len_field(2, &entry(i32::MAX, 1.0))])),
        ("bin below f64", message(&[default_mapping(), len_field(2, &entry(i32::MIN, 1.0))])),
        (
            "contiguous past sint32",
            message(&[default_mapping(), len_field(2, &message(&[packed(&[1.0, 1.0]), sint32_field(3, i32::MAX)]))]),
        ),
        ("overflowing total", message(&[default_mapping(), len_field(2, &packed(&[f64::MAX, f64::MAX]))])),
        ("overflowing sum", message(&[default_mapping(), len_field(2, &entry(35_000, f64::MAX / 2.0))])),
        ("bad tag", message(&[default_mapping(), vec![0x07]])),
        ("stray end of group", message(&[default_mapping(), vec![0x2c]])),
    ];
    for (what, bytes) in malformed {
        let result = Sketch::from_bytes(&bytes);
        assert!(matches!(result, Err(SketchError::Malformed { .. })), "{what}: {result:?}");
    }
    let unsupported = [
        ("LINEAR", len_field(SKETCH_MAPPING, &message(&[double_field(1, GAMMA), varint_field(3, 1)]))),
        ("CUBIC", len_field(SKETCH_MAPPING, &message(&[double_field(1, GAMMA), varint_field(3, 3)]))),
        ("unknown interpolation", len_field(SKETCH_MAPPING, &message(&[double_field(1, GAMMA), varint_field(3, 9)]))),
        ("fractional offset", len_field(SKETCH_MAPPING, &message(&[double_field(1, GAMMA), double_field(2, 0.5)]))),
        ("negative values", message(&[default_mapping(), len_field(SKETCH_NEGATIVE, &entry(1, 1.0))])),
    ];
    for (what, bytes) in unsupported {
        let result = Sketch::from_bytes(&bytes);
        assert!(matches!(result, Err(SketchError::Unsupported { .. })), "{what}: {result:?}");
    }
    // Empty negative stores, and zero weights in them, are fine.
    let bytes = message(&[default_mapping(), len_field(SKETCH_NEGATIVE, &packed(&[0.0, 0.0]))]);
    assert!(Sketch::from_bytes(&bytes).unwrap().is_empty());
}

#[test]
fn wide_decoded_spans_collapse() {
    let bytes = message(&[default_mapping(), len_field(2, &message(&[entry(-30_000, 1.0), entry(30_000, 1.0)]))]);
    let s = Sketch::from_bytes(&bytes).unwrap();
    assert_eq!(bins(&s), vec![(30_000 - 2047, 1.0), (30_000, 1.0)]);
}

fn latencies() -> impl Strategy<Value = Vec<(f64, f64)>> {
    let value = prop_oneof![20 => (-3.0f64..7.0).prop_map(|e| 10f64.powf(e)), 1 => Just(0.0)];
    proptest::collection::vec((value, 0.001f64..1e3), 0..2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn bins_round_trip_exactly(values in latencies()) {
        let mut s = Sketch::new();
        for (v, w) in values {
            s.add_weighted(v, w);
        }
        let bytes = s.to_bytes();
        let decoded = Sketch::from_bytes(&bytes).unwrap();
        prop_assert_eq!(decoded.mapping(), s.mapping());
        prop_assert_eq!(decoded.store(), s.store());
        prop_assert_eq!(decoded.zero_count().to_bits(), s.zero_count().to_bits());
        prop_assert_eq!(&decoded.to_bytes(), &bytes);
        prop_assert!(bytes.len() <= 16 * 1024 + 64);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Sketch::from_bytes(&bytes);
    }

    #[test]
    fn corrupted_sketches_never_panic(
        values in proptest::collection::vec(0.001f64..1e7, 1..50),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = sketch_with(&values).to_bytes();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        if let Ok(s) = Sketch::from_bytes(&bytes) {
            // Whatever decodes is a usable sketch.
            for q in [0.0, 0.5, 1.0] {
                if let Some(v) = s.quantile(q) {
                    prop_assert!(v.is_finite() && v >= 0.0);
                }
            }
            prop_assert!(s.count().is_finite() && s.sum().is_finite());
        }
    }
}
