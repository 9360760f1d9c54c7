//! A small, strict reader and writer for the safetensors format.
//!
//! Layout: `u64` little-endian header length `n`, then `n` bytes of JSON
//! `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//! "__metadata__": {"key": "value"}}`, then the raw little-endian tensor bytes.
//!
//! We parse it ourselves rather than through the `safetensors` crate so that every
//! way a file can be wrong becomes one precise [`FormatError`] (and a fuzz test can
//! reach all of them), and so that f16/bf16/f64 tensors convert to f32 on the way in.
//! Nothing here panics or allocates more than the file's own size.

use std::collections::BTreeMap;

/// What can be wrong with the bytes of a safetensors file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("file is {0} bytes, too short to be a safetensors file (needs an 8-byte header length)")]
    TooShort(usize),
    #[error(
        "header length {header} exceeds the file's remaining {available} bytes (truncated or not a safetensors file)"
    )]
    HeaderTooLong { header: u64, available: usize },
    #[error("header is not valid JSON ({0}); is this a safetensors file?")]
    BadHeader(String),
    #[error("tensor {name}: {problem}")]
    BadTensor { name: String, problem: String },
    #[error("tensor {name} has dtype {dtype}; cellscope reads F32, and converts F16, BF16 and F64 to F32")]
    UnsupportedDtype { name: String, dtype: String },
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

fn bad(name: &str, problem: impl Into<String>) -> FormatError {
    FormatError::BadTensor { name: name.to_string(), problem: problem.into() }
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

/// Parses safetensors bytes. Every offset and size is checked before use.
pub fn parse(bytes: &[u8]) -> Result<TensorFile, FormatError> {
    if bytes.len() < 8 {
        return Err(FormatError::TooShort(bytes.len()));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let rest = &bytes[8..];
    if header_len > rest.len() as u64 {
        return Err(FormatError::HeaderTooLong { header: header_len, available: rest.len() });
    }
    let (header, data) = rest.split_at(header_len as usize);
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| FormatError::BadHeader(e.to_string()))?;
    let entries = header.as_object().ok_or_else(|| FormatError::BadHeader("the header is not a JSON object".into()))?;

    let mut file = TensorFile::default();
    for (name, entry) in entries {
        if name == "__metadata__" {
            let meta =
                entry.as_object().ok_or_else(|| FormatError::BadHeader("__metadata__ is not an object".into()))?;
            for (k, v) in meta {
                let v = v
                    .as_str()
                    .ok_or_else(|| FormatError::BadHeader(format!("metadata value of {k} is not a string")))?;
                file.metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(name, "lacks a dtype string"))?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad(name, "lacks a shape array"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(name, "shape holds something other than non-negative integers"))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad(name, "lacks data_offsets [begin, end]"))?;
        let width = match dtype {
            "F32" => 4,
            "F16" | "BF16" => 2,
            "F64" => 8,
            other => return Err(FormatError::UnsupportedDtype { name: name.clone(), dtype: other.to_string() }),
        };
        let count =
            shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(name, "shape overflows"))?;
        let (begin, end) = offsets;
        if begin > end || end > data.len() as u64 {
            return Err(bad(
                name,
                format!("data_offsets [{begin}, {end}] fall outside the {} data bytes (truncated file?)", data.len()),
            ));
        }
        let raw = &data[begin as usize..end as usize];
        if Some(raw.len()) != count.checked_mul(width) {
            return Err(bad(
                name,
                format!("holds {} bytes but shape {:?} of {dtype} needs {}", raw.len(), shape, count * width),
            ));
        }
        let values: Vec<f32> = match dtype {
            "F32" => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            "F16" => raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            "BF16" => {
                raw.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
            }
            _ => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        };
        file.tensors.insert(name.clone(), Tensor { shape, data: values, stored_dtype: dtype.to_string() });
    }
    Ok(file)
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
    }
}
