//! Turning traces into the API's wire formats: JSON (DESIGN §5), `.npy`, and the
//! compact int8 "view" format the page uses.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::model::{Kind, Model, Trace};

/// One guess for the next character.
#[derive(Debug, Serialize)]
pub struct Guess {
    pub char: String,
    pub p: f32,
}

/// The model's top-k guesses after one position, and the probability it gave the
/// character that actually follows (`None` at the end or if that one is unknown).
#[derive(Debug, Serialize)]
pub struct Prediction {
    pub top: Vec<Guess>,
    pub next: Option<String>,
    pub p_next: Option<f32>,
}

/// The top-k next-character guesses after every position.
pub fn predictions(model: &Model, trace: &Trace, top_k: usize) -> Vec<Prediction> {
    let k = top_k.min(model.vocab.len());
    let mut best = Vec::with_capacity(k + 1);
    (0..trace.len())
        .map(|t| {
            let row = trace.probs.row(t);
            most_likely(row.as_slice().expect("probabilities are kept in standard layout"), k, &mut best);
            let top = best.iter().map(|&i| Guess { char: model.vocab.chars()[i].to_string(), p: row[i] }).collect();
            let next = trace.chars.get(t + 1);
            let p_next = next.and_then(|&c| model.vocab.id(c)).map(|id| row[id as usize]);
            Prediction { top, next: next.map(|c| c.to_string()), p_next }
        })
        .collect()
}

/// `best` = the indices of the `k` largest of `p`, largest first, ties by index:
/// one pass that keeps a sorted shortlist (a 2,000-character view asks this of
/// 2,000 rows; sorting each row took a fifth of a cached view's time).
fn most_likely(p: &[f32], k: usize, best: &mut Vec<usize>) {
    best.clear();
    if k == 0 {
        return;
    }
    // Indices come in ascending order, so a value ranks before the shortlist's
    // last only if it is larger: on a tie the earlier index stays ahead.
    let mut worst = f32::NEG_INFINITY;
    for (i, &v) in p.iter().enumerate() {
        if best.len() == k {
            if v.total_cmp(&worst).is_le() {
                continue;
            }
            best.pop();
        }
        let at = best.partition_point(|&j| p[j].total_cmp(&v).is_ge());
        best.insert(at, i);
        worst = p[best[best.len() - 1]];
    }
}

/// One recorded matrix as rows (one per character) of the chosen cells,
/// serialised straight from the trace: no intermediate JSON tree, so an answer
/// costs its own size in memory and nothing more.
struct Rows<'a> {
    matrix: &'a ndarray::Array2<f32>,
    cells: Option<&'a [usize]>,
}

struct Row<'a> {
    row: ndarray::ArrayView1<'a, f32>,
    cells: Option<&'a [usize]>,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.cells {
            Some(cs) => {
                let mut seq = s.serialize_seq(Some(cs.len()))?;
                for &c in cs {
                    seq.serialize_element(&self.row[c])?;
                }
                seq.end()
            }
            None => {
                let mut seq = s.serialize_seq(Some(self.row.len()))?;
                for v in self.row.iter() {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
        }
    }
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.matrix.nrows()))?;
        for row in self.matrix.rows() {
            seq.serialize_element(&Row { row, cells: self.cells })?;
        }
        seq.end()
    }
}

/// One layer of a trace answer: `{"layer": k, "h": [[...]], "c": [[...]], ...}`.
pub struct LayerAnswer<'a> {
    layer: usize,
    trace: &'a Trace,
    kinds: &'a [Kind],
    cells: Option<&'a [usize]>,
}

impl Serialize for LayerAnswer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1 + self.kinds.len()))?;
        map.serialize_entry("layer", &self.layer)?;
        for &kind in self.kinds {
            map.serialize_entry(
                kind.letter(),
                &Rows { matrix: self.trace.layers[self.layer].get(kind), cells: self.cells },
            )?;
        }
        map.end()
    }
}

/// `POST /api/trace`'s JSON answer (DESIGN §5): `{length, chars, unknown, layers:
/// [{layer, h?, c?, ...}], cells?, predictions?}`, each kind a T × n array (n =
/// cells requested, default all).
#[derive(Serialize)]
pub struct TraceAnswer<'a> {
    pub length: usize,
    pub chars: Vec<String>,
    pub unknown: &'a [usize],
    pub layers: Vec<LayerAnswer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cells: Option<&'a [usize]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
}

/// The requested part of a trace as a [`TraceAnswer`] (serialise it with serde).
pub fn trace_json<'a>(
    model: &Model,
    trace: &'a Trace,
    layers: Option<&[usize]>,
    kinds: &'a [Kind],
    cells: Option<&'a [usize]>,
    top_k: usize,
) -> TraceAnswer<'a> {
    let all: Vec<usize> = (0..trace.layers.len()).collect();
    let layers = layers.unwrap_or(&all);
    TraceAnswer {
        length: trace.len(),
        chars: trace.chars.iter().map(|c| c.to_string()).collect(),
        unknown: &trace.unknown,
        layers: layers.iter().map(|&layer| LayerAnswer { layer, trace, kinds, cells }).collect(),
        cells,
        predictions: (top_k > 0).then(|| predictions(model, trace, top_k)),
    }
}

/// Bytes a JSON trace answer takes, estimated before any work so an oversized
/// request is refused up front: a float is at most ~12 bytes with its comma
/// (`-0.123456789,`), a character ~8 (`"\u1234",`), a guess ~32
/// (`{"char":"x","p":0.12345678},`) and each position's prediction wrapper ~56.
pub fn trace_json_size(t_len: usize, values_per_char: usize, top_k: usize) -> u128 {
    let predictions = if top_k > 0 { 56 + top_k as u128 * 32 } else { 0 };
    t_len as u128 * (values_per_char as u128 * 12 + 8 + predictions)
}

/// A `.npy` (format 1.0) file holding a little-endian f32 array of `shape`.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = npy_header(shape, data.len());
    extend_f32_le(&mut out, data);
    out
}

/// The `.npy` (format 1.0) header of a little-endian f32 array of `shape`, in a
/// vector with room for `values` floats after it.
fn npy_header(shape: &[usize], values: usize) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Appends `data` as little-endian f32: one copy of the memory where the machine
/// is little-endian.
fn extend_f32_le(out: &mut Vec<u8>, data: &[f32]) {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: f32 has no padding and every byte of it is initialised; the
        // slice covers exactly the 4·len bytes of `data`.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) };
        out.extend_from_slice(bytes);
    }
    #[cfg(not(target_endian = "little"))]
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The requested part of a trace as one (layers, kinds, T, cells) f32 array,
/// written straight into the answer: whole matrices as one copy each, chosen
/// cells row by row.
pub fn trace_npy(trace: &Trace, layers: &[usize], kinds: &[Kind], cells: Option<&[usize]>) -> Vec<u8> {
    let t_len = trace.len();
    let hidden = trace.layers.first().map_or(0, |l| l.h().ncols());
    let width = cells.map_or(hidden, <[usize]>::len);
    let mut out = npy_header(&[layers.len(), kinds.len(), t_len, width], layers.len() * kinds.len() * t_len * width);
    for &k in layers {
        for &kind in kinds {
            let m = trace.layers[k].get(kind);
            match cells {
                None => extend_f32_le(&mut out, m.as_slice().expect("traces are kept in standard layout")),
                Some(cells) => {
                    for row in m.rows() {
                        for &c in cells {
                            out.extend_from_slice(&row[c].to_le_bytes());
                        }
                    }
                }
            }
        }
    }
    out
}

/// How the page turns a stored byte back into the displayed value u ∈ [−1, 1]
/// (its colour) and the value shown on hover.
#[derive(Debug, Serialize)]
pub struct ViewDecode {
    /// What the colour shows: the kind's letter, or `tanh(c)`.
    pub shows: &'static str,
    /// The value shown on hover, from the stored byte q.
    pub value: &'static str,
}

pub fn view_decode(kind: Kind) -> ViewDecode {
    use crate::display::{scale, Scale};
    let value = match scale(kind) {
        Scale::Signed | Scale::Squashed => "q/127",
        Scale::Gate => "(q/127 + 1)/2",
    };
    ViewDecode { shows: crate::display::shows(kind), value }
}

/// The JSON header of a view (see [`view_bytes`]).
#[derive(Serialize)]
pub struct ViewHeader<'a> {
    pub length: usize,
    pub layer: usize,
    pub layers: usize,
    pub hidden: usize,
    pub kinds: Vec<&'static str>,
    /// Per kind letter, in `kinds` order.
    pub decode: std::collections::BTreeMap<&'static str, ViewDecode>,
    pub chars: Vec<String>,
    pub unknown: &'a [usize],
    pub predictions: Vec<Prediction>,
    /// How the trace behind it was computed: `f32` (exact) or `int8` (`model::quant`).
    pub precision: &'static str,
}

/// One layer of a trace in the page's compact format: a little-endian u32 header
/// length, a JSON header, then for each kind T × H signed bytes
/// q = round(127 · unit_value), row = character.
pub fn view_bytes(
    model: &Model,
    trace: &Trace,
    layer: usize,
    kinds: &[Kind],
    top_k: usize,
    precision: crate::model::Precision,
) -> Vec<u8> {
    let hidden = model.hidden_size();
    let header = ViewHeader {
        length: trace.len(),
        layer,
        layers: model.layers(),
        hidden,
        kinds: kinds.iter().map(|k| k.letter()).collect(),
        decode: kinds.iter().map(|&k| (k.letter(), view_decode(k))).collect(),
        chars: trace.chars.iter().map(|c| c.to_string()).collect(),
        unknown: &trace.unknown,
        predictions: predictions(model, trace, top_k),
        precision: precision.name(),
    };
    let header = serde_json::to_vec(&header).expect("json");
    let mut out = Vec::with_capacity(4 + header.len() + kinds.len() * trace.len() * hidden);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for &kind in kinds {
        let m = trace.layers[layer].get(kind);
        quantize_into(kind, m.as_slice().expect("traces are kept in standard layout"), &mut out);
    }
    out
}

/// Appends `quantize(display::unit_value(kind, v))` of every value: 8 M of them for a
/// 2,000-character view at H = 512. Where the CPU has AVX2 this is [`x86::quantize`]
/// (32 values per pass; tanh as the AVX2 trace computes it), else the scalar
/// loop with `kernel::tanh` (error < 3e-7, far below the 1/254 a byte resolves).
fn quantize_into(kind: Kind, values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + values.len(), 0);
    let dst = &mut out[start..];
    #[cfg(target_arch = "x86_64")]
    {
        let wide = crate::model::kernel::simd() != crate::model::kernel::Simd::Portable;
        if wide && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { x86::quantize(kind, values, dst) };
        }
    }
    quantize_scalar(kind, values, dst)
}

/// The scalar [`quantize_into`], into `dst` (as long as `values`).
fn quantize_scalar(kind: Kind, values: &[f32], dst: &mut [u8]) {
    use crate::display::{scale, Scale};
    match scale(kind) {
        Scale::Signed => dst.iter_mut().zip(values).for_each(|(q, &v)| *q = quantize(v)),
        Scale::Squashed => dst.iter_mut().zip(values).for_each(|(q, &v)| *q = quantize(crate::model::kernel::tanh(v))),
        Scale::Gate => dst.iter_mut().zip(values).for_each(|(q, &v)| *q = quantize(2.0 * v - 1.0)),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{quantize_scalar, Kind};
    use crate::display::{scale, Scale};
    use crate::model::kernel::x86::{pack_bytes, round_unit, tanh8};
    use std::arch::x86_64::*;

    /// [`super::quantize_into`] into `dst` (as long as `values`), 32 values at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize(kind: Kind, values: &[f32], dst: &mut [u8]) {
        let scale = scale(kind);
        let whole = values.len() / 32 * 32;
        for (v, d) in values[..whole].chunks_exact(32).zip(dst[..whole].chunks_exact_mut(32)) {
            let q: [__m256i; 4] = std::array::from_fn(|j| {
                // SAFETY: `v` holds 32 floats.
                let v = unsafe { _mm256_loadu_ps(v.as_ptr().add(8 * j)) };
                // NaN in, 0 out, whatever the vector tanh makes of it.
                let number = _mm256_cmp_ps::<_CMP_ORD_Q>(v, v);
                round_unit(_mm256_and_ps(
                    number,
                    match scale {
                        Scale::Signed => v,
                        Scale::Squashed => tanh8(v),
                        Scale::Gate => _mm256_fmsub_ps(v, _mm256_set1_ps(2.0), _mm256_set1_ps(1.0)),
                    },
                ))
            });
            // SAFETY: `d` holds 32 bytes.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), pack_bytes(q)) };
        }
        quantize_scalar(kind, &values[whole..], &mut dst[whole..]);
    }
}

/// round(127 · u) as a byte, u clamped to [−1, 1] (NaN → 0).
#[inline]
pub fn quantize(u: f32) -> u8 {
    let u = if u.is_nan() { 0.0 } else { u.clamp(-1.0, 1.0) };
    ((u * 127.0).round() as i8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_likely_equals_a_full_sort_ties_and_all() {
        let mut rng = crate::rng::Rng::new(3);
        let mut best = Vec::new();
        for case in 0..200 {
            let v = 1 + case % 40;
            // Few distinct values, so that ties are common.
            let p: Vec<f32> = (0..v).map(|_| (rng.range(0.0, 4.0)).floor() / 4.0).collect();
            let mut sorted: Vec<usize> = (0..v).collect();
            sorted.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            for k in [0, 1, 2, 5, v / 2, v] {
                most_likely(&p, k.min(v), &mut best);
                assert_eq!(best, sorted[..k.min(v)], "k = {k} of {p:?}");
            }
        }
    }

    #[test]
    fn npy_header_is_aligned_and_shaped() {
        let bytes = npy_f32(&[2, 3], &[0.0; 6]);
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert_eq!(bytes.len(), 10 + hlen + 24);
        assert!(std::str::from_utf8(&npy_f32(&[4], &[0.0; 4])[10..]).unwrap().contains("(4,)"));
    }

    #[test]
    fn every_quantize_path_gives_the_scalar_bytes() {
        let mut rng = crate::rng::Rng::new(5);
        // Values around every rounding boundary (k + ½)/127, exact ties, the
        // clamps, NaN, and a length that leaves a scalar tail.
        let mut values: Vec<f32> = (-130..=130).map(|k| (k as f32 + 0.5) / 127.0).collect();
        values.extend((-130..=130).map(|k| k as f32 / 127.0));
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0, -1.0, 3.5, -7.25]);
        values.extend((0..2000).map(|_| rng.range(-4.0, 4.0)));
        values.extend((0..37).map(|_| rng.range(-1.5, 1.5)));
        for kind in Kind::ALL {
            let mut want = vec![0; values.len()];
            quantize_scalar(kind, &values, &mut want);
            let mut got = Vec::new();
            quantize_into(kind, &values, &mut got);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                // tanh's last bits may differ between the vector and scalar
                // versions, so a squashed value may land one step over.
                let off = (a as i8 as i32 - b as i8 as i32).abs();
                let allowed = if crate::display::scale(kind) == crate::display::Scale::Squashed { 1 } else { 0 };
                assert!(off <= allowed, "{kind:?} of {}: {} against {}", values[i], a as i8, b as i8);
            }
        }
    }

    #[test]
    fn quantize_rounds_and_clamps() {
        assert_eq!(quantize(1.0) as i8, 127);
        assert_eq!(quantize(-1.0) as i8, -127);
        assert_eq!(quantize(5.0) as i8, 127);
        assert_eq!(quantize(f32::NAN) as i8, 0);
        assert_eq!(quantize(0.5) as i8, 64);
    }
}
