//! A small, strict reader and writer for the safetensors format.
//!
//! Layout: `u64` little-endian header length `n`, then `n` bytes of JSON
//! `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//! "__metadata__": {"key": "value"}}`, then the data section: the raw little-endian
//! tensor bytes, `begin..end` counted from its start.
//!
//! We parse it ourselves rather than through the `safetensors` crate so that every
//! way a file can be wrong becomes one precise [`FormatError`] naming the tensor (a
//! fuzz test reaches all of them), so that the header is checked before the data is
//! read from disk, and so that f16/bf16/f64 tensors convert to f32 on the way in.
//!
//! What the reader requires is what the format's specification requires:
//! - the header length is at most `MAX_HEADER_BYTES` and fits in the file;
//! - the header is a JSON object without repeated keys; `__metadata__`, if present,
//!   maps strings to strings;
//! - every tensor has a dtype we read, a shape whose byte size is computed without
//!   overflow, and `data_offsets` that hold exactly that many bytes;
//! - the tensors' byte ranges tile the data section: no overlap, no hole, nothing
//!   after the last tensor.
//!
//! Reading is three steps, `header_len`, `Header::parse` and
//! `Header::read_tensors`, so that a loader reading a file from disk checks the
//! header before it reads (or allocates for) the data; [`parse`] runs the same steps
//! over bytes already in memory. Every offset and size is checked before use: nothing
//! here panics or allocates more than the file's own size justifies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Bytes of the little-endian `u64` header length that opens every file.
pub(crate) const PREFIX_BYTES: usize = 8;

/// Largest header accepted, in bytes (the reference implementation's limit). A header
/// is read whole before it is parsed, so this bounds what a file can make a reader
/// allocate before its layout has been checked.
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// What can be wrong with the bytes of a safetensors file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("file is {0} bytes, too short to be a safetensors file (needs an 8-byte header length)")]
    TooShort(u64),
    #[error("header length {0} is over the {MAX_HEADER_BYTES}-byte limit (not a safetensors file?)")]
    HeaderTooLarge(u64),
    #[error(
        "header length {header} exceeds the file's remaining {available} bytes (truncated or not a safetensors file)"
    )]
    HeaderTooLong { header: u64, available: u64 },
    #[error("header is not valid JSON ({0}); is this a safetensors file?")]
    NotJson(String),
    #[error("header is JSON but not a safetensors header: {0}")]
    BadHeader(String),
    #[error("header names {0} twice")]
    Duplicate(String),
    #[error("tensor {name}: {problem}")]
    BadTensor { name: String, problem: String },
    #[error("tensor {name} has dtype {dtype}; cellscope reads F32, and converts F16, BF16 and F64 to F32")]
    UnsupportedDtype { name: String, dtype: String },
    #[error(
        "tensors {first} (data bytes {first_range}) and {second} ({second_range}) overlap; each data byte belongs to \
         one tensor"
    )]
    Overlap { first: String, first_range: String, second: String, second_range: String },
    #[error(
        "data bytes [{begin}, {end}) {place} belong to no tensor; the tensors must cover the data section exactly"
    )]
    Gap { begin: usize, end: usize, place: String },
}

/// One tensor, converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The dtype it had in the file (`F32`, `F16`, `BF16`, `F64`).
    pub stored_dtype: String,
}

/// The parsed contents of a safetensors file.
#[derive(Debug, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// The element types we read; each converts to f32.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F32,
    F16,
    BF16,
    F64,
}

impl Dtype {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            "F64" => Some(Self::F64),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F64 => "F64",
        }
    }

    /// Bytes per element.
    fn width(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
        }
    }

    /// Converts little-endian elements; `raw.len()` is a multiple of the width.
    fn to_f32(self, raw: &[u8]) -> Vec<f32> {
        let chunks = raw.chunks_exact(self.width());
        match self {
            Self::F32 => chunks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Self::F16 => chunks.map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            // bf16 is the top half of an f32.
            Self::BF16 => chunks.map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect(),
            Self::F64 => {
                chunks.map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect()
            }
        }
    }
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let value = match exp {
        0 => {
            // Subnormal half: frac * 2^-24, exact in f32.
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(value)
}

fn bad(name: &str, problem: impl Into<String>) -> FormatError {
    FormatError::BadTensor { name: name.to_string(), problem: problem.into() }
}

fn outside(name: &str, begin: u64, end: u64, data_len: usize) -> FormatError {
    bad(name, format!("data_offsets [{begin}, {end}] fall outside the {data_len} data bytes (truncated file?)"))
}

/// Reads the header length from the start of a file of `file_len` bytes and checks it
/// against [`MAX_HEADER_BYTES`] and the file's size, before anything is allocated for
/// the header. `start` holds the file's first [`PREFIX_BYTES`] bytes (fewer if the
/// file is shorter).
pub(crate) fn header_len(start: &[u8], file_len: u64) -> Result<usize, FormatError> {
    let prefix: [u8; PREFIX_BYTES] = match start.get(..PREFIX_BYTES) {
        Some(p) if file_len >= PREFIX_BYTES as u64 => p.try_into().expect("a slice of PREFIX_BYTES"),
        _ => return Err(FormatError::TooShort(file_len)),
    };
    let header = u64::from_le_bytes(prefix);
    if header > MAX_HEADER_BYTES {
        return Err(FormatError::HeaderTooLarge(header));
    }
    let available = file_len - PREFIX_BYTES as u64;
    if header > available {
        return Err(FormatError::HeaderTooLong { header, available });
    }
    Ok(header as usize)
}

/// One tensor's entry in the header, checked against the data section's size.
#[derive(Debug)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the data section.
    begin: usize,
    end: usize,
}

impl Entry {
    fn parse(name: String, value: &Value, data_len: usize) -> Result<Self, FormatError> {
        let fields = value.as_object().ok_or_else(|| bad(&name, "is not an object {dtype, shape, data_offsets}"))?;
        let dtype_name =
            fields.get("dtype").and_then(Value::as_str).ok_or_else(|| bad(&name, "lacks a dtype string"))?;
        let dtype = Dtype::parse(dtype_name)
            .ok_or_else(|| FormatError::UnsupportedDtype { name: name.clone(), dtype: dtype_name.to_string() })?;
        let shape: Vec<usize> = fields
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(&name, "lacks a shape array"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(&name, "shape holds something other than non-negative integers"))?;
        let (begin, end) = fields
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad(&name, "lacks data_offsets [begin, end] of non-negative integers"))?;
        if begin > end {
            return Err(bad(&name, format!("data_offsets [{begin}, {end}] run backwards")));
        }
        if end > data_len as u64 {
            return Err(outside(&name, begin, end, data_len));
        }
        let (begin, end) = (begin as usize, end as usize);
        let needed = shape.iter().try_fold(dtype.width(), |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
            bad(&name, format!("shape {shape:?} of {} has more bytes than memory can hold", dtype.name()))
        })?;
        if end - begin != needed {
            let problem = format!("holds {} bytes but shape {shape:?} of {} needs {needed}", end - begin, dtype.name());
            return Err(bad(&name, problem));
        }
        Ok(Self { name, dtype, shape, begin, end })
    }
}

/// A checked header: the metadata, and every tensor's dtype, shape and place in a
/// data section of [`Header::data_len`] bytes.
#[derive(Debug)]
pub(crate) struct Header {
    /// Sorted by position in the data section.
    entries: Vec<Entry>,
    metadata: BTreeMap<String, String>,
    data_len: usize,
}

impl Header {
    /// Parses and checks the header JSON of a file whose data section (everything
    /// after the header) is `data_len` bytes.
    pub fn parse(json: &[u8], data_len: usize) -> Result<Self, FormatError> {
        let TopLevel(pairs) = serde_json::from_slice(json).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => FormatError::BadHeader(e.to_string()),
            _ => FormatError::NotJson(e.to_string()),
        })?;
        let mut names = BTreeSet::new();
        let mut metadata = BTreeMap::new();
        let mut entries = Vec::new();
        for (name, value) in pairs {
            if !names.insert(name.clone()) {
                return Err(FormatError::Duplicate(name));
            }
            if name == "__metadata__" {
                metadata = parse_metadata(&value)?;
            } else {
                entries.push(Entry::parse(name, &value, data_len)?);
            }
        }
        check_tiling(&mut entries, data_len)?;
        Ok(Self { entries, metadata, data_len })
    }

    /// Size of the data section the header describes.
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// Converts every tensor of the data section `data` to f32.
    pub(crate) fn read_tensors(self, data: &[u8]) -> Result<TensorFile, FormatError> {
        let mut tensors = BTreeMap::new();
        for e in self.entries {
            let raw =
                data.get(e.begin..e.end).ok_or_else(|| outside(&e.name, e.begin as u64, e.end as u64, data.len()))?;
            let tensor = Tensor { data: e.dtype.to_f32(raw), shape: e.shape, stored_dtype: e.dtype.name().to_string() };
            tensors.insert(e.name, tensor);
        }
        Ok(TensorFile { tensors, metadata: self.metadata })
    }
}

/// The header's top-level object as (key, value) pairs in file order. Going through a
/// `serde_json::Map` would keep only the last of two equal keys and hide the first.
struct TopLevel(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = TopLevel;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object from tensor names to {dtype, shape, data_offsets}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(TopLevel(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

fn parse_metadata(value: &Value) -> Result<BTreeMap<String, String>, FormatError> {
    let entries = value.as_object().ok_or_else(|| FormatError::BadHeader("__metadata__ is not an object".into()))?;
    entries
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(v) => Ok((k.clone(), v.to_string())),
            None => Err(FormatError::BadHeader(format!("metadata value of {k} is not a string"))),
        })
        .collect()
}

/// Checks that the tensors' byte ranges tile `0..data_len`: in order of position,
/// each begins where the one before ended, and the last ends where the data does.
/// Sorts `entries` by position.
fn check_tiling(entries: &mut [Entry], data_len: usize) -> Result<(), FormatError> {
    entries.sort_by_key(|e| (e.begin, e.end));
    let range = |e: &Entry| format!("[{}, {})", e.begin, e.end);
    let mut before: Option<&Entry> = None;
    for e in entries.iter() {
        let at = before.map_or(0, |b| b.end);
        if let Some(b) = before.filter(|b| e.begin < b.end) {
            return Err(FormatError::Overlap {
                first: b.name.clone(),
                first_range: range(b),
                second: e.name.clone(),
                second_range: range(e),
            });
        }
        if e.begin > at {
            let place = match before {
                None => format!("before the first tensor {}", e.name),
                Some(b) => format!("between {} and {}", b.name, e.name),
            };
            return Err(FormatError::Gap { begin: at, end: e.begin, place });
        }
        before = Some(e);
    }
    let end = before.map_or(0, |b| b.end);
    if end != data_len {
        let place =
            before.map_or("in a file without tensors".to_string(), |b| format!("after the last tensor {}", b.name));
        return Err(FormatError::Gap { begin: end, end: data_len, place });
    }
    Ok(())
}

/// Parses the bytes of a whole safetensors file.
pub fn parse(bytes: &[u8]) -> Result<TensorFile, FormatError> {
    let header_len = header_len(bytes, bytes.len() as u64)?;
    // header_len checked that the prefix and the header fit in `bytes`.
    let (json, data) = bytes[PREFIX_BYTES..].split_at(header_len);
    Header::parse(json, data.len())?.read_tensors(data)
}

/// Serialises f32 tensors and string metadata. Tensors are written in name order,
/// which is what `safetensors.torch.save_file` does too.
pub fn serialize(tensors: &BTreeMap<String, (Vec<usize>, &[f32])>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings"));
    }
    let mut offset = 0usize;
    for (name, (shape, data)) in tensors {
        let end = offset + data.len() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).expect("json");
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !(header.len() + 8).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, data) in tensors.values() {
        for v in data.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_values_shapes_and_metadata() {
        let a = [1.0f32, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0];
        let mut tensors = BTreeMap::new();
        tensors.insert("a".to_string(), (vec![2, 3], &a[..]));
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v \"quoted\"".to_string());
        let bytes = serialize(&tensors, &meta);
        let file = parse(&bytes).unwrap();
        assert_eq!(file.tensors["a"].shape, vec![2, 3]);
        assert_eq!(file.tensors["a"].data, a.to_vec());
        assert_eq!(file.metadata["k"], "v \"quoted\"");
    }

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn short_and_truncated_inputs_are_errors() {
        assert!(matches!(parse(b"abc"), Err(FormatError::TooShort(3))));
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(parse(&bytes), Err(FormatError::HeaderTooLong { .. })));
        let huge = (MAX_HEADER_BYTES + 1).to_le_bytes();
        assert_eq!(header_len(&huge, u64::MAX), Err(FormatError::HeaderTooLarge(MAX_HEADER_BYTES + 1)));
    }

    /// A file of tensors `a` (4 bytes at `a`) and `b` (4 bytes at `b`) in `data_len` data bytes.
    fn two_tensors(a: [u64; 2], b: [u64; 2], data_len: usize) -> Result<TensorFile, FormatError> {
        let entry = |o: [u64; 2]| serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": o});
        let header = serde_json::json!({"a": entry(a), "b": entry(b)}).to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        parse(&bytes)
    }

    #[test]
    fn tensors_must_tile_the_data_section() {
        assert!(two_tensors([0, 4], [4, 8], 8).is_ok());
        assert!(two_tensors([4, 8], [0, 4], 8).is_ok(), "order in the header does not matter");
        let err = |r: Result<TensorFile, FormatError>| r.unwrap_err().to_string();
        assert_eq!(
            err(two_tensors([0, 4], [0, 4], 8)),
            "tensors a (data bytes [0, 4)) and b ([0, 4)) overlap; each data byte belongs to one tensor"
        );
        assert!(
            err(two_tensors([0, 4], [8, 12], 12)).starts_with("data bytes [4, 8) between a and b belong to no tensor")
        );
        assert!(err(two_tensors([4, 8], [8, 12], 12)).starts_with("data bytes [0, 4) before the first tensor a"));
        assert!(err(two_tensors([0, 4], [4, 8], 10)).starts_with("data bytes [8, 10) after the last tensor b"));
        assert!(err(two_tensors([0, 4], [4, u64::MAX], 8)).contains("fall outside the 8 data bytes"));
    }
}
