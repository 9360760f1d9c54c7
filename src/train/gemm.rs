//! The per-timestep recurrent products of training, `C = β·C + A·B` with a small A
//! (one shard's B streams) and a B that stays fixed for a whole batch (W_hh in one
//! orientation or the other).
//!
//! A general GEMM (matrixmultiply) repacks B on every call; here that is done once
//! per batch by [`PackedB::new`], and every step then runs a 6 × 64 register-tile
//! kernel straight over the packed panels: `n/16` panels of 16 columns, each stored
//! as k rows of 16 consecutive floats, so a k-loop reads four panels (64 columns)
//! sequentially while 24 accumulators (6 rows × 4 vectors) stay in registers.
//!
//! The kernel needs AVX-512 and n a multiple of 64 (H = 128, 256, 512 and their
//! 4H); anything else falls back to [`crate::model::kernel::gemm`], so tiny test
//! models and other CPUs get the same results up to rounding.

use crate::model::kernel::{gemm, Trans};

/// Columns per packed panel: one AVX-512 vector of f32.
const PANEL: usize = 16;
/// Columns per kernel tile (four panels).
const TILE_N: usize = 4 * PANEL;
/// Rows of A per kernel tile: 6 × 4 accumulators + 4 B vectors + 1 broadcast fit
/// in the 32 vector registers.
const TILE_M: usize = 6;

/// A k × n matrix B prepared for repeated [`gemm_packed`] calls.
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    layout: Layout,
}

enum Layout {
    /// `n/16` panels, panel p holding `B[kk][16p .. 16p+16]` at `(p·k + kk)·16`.
    Panels(Vec<f32>),
    /// B as given (row-major k × n, or n × k when `transposed`), for the fallback.
    Plain { b: Vec<f32>, transposed: bool },
}

impl PackedB {
    /// Packs B (k × n). `b` is row-major k × n, or, when `transposed`, row-major
    /// n × k holding Bᵀ (so `PackedB::new(w, h, 4 * h, true)` packs W_hhᵀ from
    /// PyTorch's 4H × H W_hh).
    pub fn new(b: &[f32], k: usize, n: usize, transposed: bool) -> Self {
        assert!(b.len() >= k * n, "PackedB: b holds {} floats, expected {k} × {n}", b.len());
        let b = &b[..k * n];
        if !use_kernel(n) {
            return Self { k, n, layout: Layout::Plain { b: b.to_vec(), transposed } };
        }
        let (row_stride, col_stride) = if transposed { (1, k) } else { (n, 1) };
        let mut data = Vec::with_capacity(k * n);
        for p in 0..n / PANEL {
            for kk in 0..k {
                data.extend((0..PANEL).map(|l| b[kk * row_stride + (p * PANEL + l) * col_stride]));
            }
        }
        Self { k, n, layout: Layout::Panels(data) }
    }
}

/// Whether [`gemm_packed`] will run the AVX-512 kernel for this n on this CPU.
fn use_kernel(n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        n.is_multiple_of(TILE_N) && is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = n;
        false
    }
}

/// C = β·C + A·B, with A row-major m × k, C row-major m × n and B packed by
/// [`PackedB::new`] with the same k and n. When β = 0, C is only written, so it
/// need not be initialised.
pub(crate) fn gemm_packed(m: usize, k: usize, n: usize, a: &[f32], b: &PackedB, beta: f32, c: &mut [f32]) {
    assert!(b.k == k && b.n == n, "gemm_packed: B was packed as {} × {}, called with {k} × {n}", b.k, b.n);
    assert!(a.len() >= m * k && c.len() >= m * n, "gemm_packed: buffers too small");
    match &b.layout {
        Layout::Plain { b, transposed } => {
            let tb = if *transposed { Trans::T } else { Trans::N };
            gemm(m, k, n, 1.0, a, Trans::N, b, tb, beta, c);
        }
        #[cfg(target_arch = "x86_64")]
        Layout::Panels(data) => {
            for group in 0..n / TILE_N {
                let panels = &data[group * 4 * k * PANEL..(group + 1) * 4 * k * PANEL];
                let mut r0 = 0;
                while r0 < m {
                    let rows = (m - r0).min(TILE_M);
                    let a = &a[r0 * k..(r0 + rows) * k];
                    let c = &mut c[r0 * n + group * TILE_N..(r0 + rows - 1) * n + (group + 1) * TILE_N];
                    // SAFETY: `Panels` is only built when `use_kernel` saw AVX-512.
                    // `a` holds `rows` rows of k, `panels` four panels of k × 16,
                    // and `c` reaches 64 floats into row `rows − 1` at stride n:
                    // the exact extents `tile` reads and writes.
                    unsafe {
                        match rows {
                            6 => x86::tile::<6>(a, panels, k, c, n, beta),
                            5 => x86::tile::<5>(a, panels, k, c, n, beta),
                            4 => x86::tile::<4>(a, panels, k, c, n, beta),
                            3 => x86::tile::<3>(a, panels, k, c, n, beta),
                            2 => x86::tile::<2>(a, panels, k, c, n, beta),
                            _ => x86::tile::<1>(a, panels, k, c, n, beta),
                        }
                    }
                    r0 += rows;
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Layout::Panels(_) => unreachable!("panels are only packed on x86_64"),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// One R × 64 tile: `c[r·ldc + j] = β·c[r·ldc + j] + Σ_kk a[r·k + kk] · B[kk][j]`
    /// with B's 64 columns as four consecutive k × 16 panels.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a.len() ≥ R·k`, `panels.len() ≥ 4·k·16` and
    /// `c.len() ≥ (R−1)·ldc + 64` (checked in debug builds only: this is the
    /// innermost loop).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize>(
        a: &[f32],
        panels: &[f32],
        k: usize,
        c: &mut [f32],
        ldc: usize,
        beta: f32,
    ) {
        debug_assert!(a.len() >= R * k && panels.len() >= 4 * k * PANEL && c.len() >= (R - 1) * ldc + 4 * PANEL);
        let (a, bp, cp) = (a.as_ptr(), panels.as_ptr(), c.as_mut_ptr());
        let pk = k * PANEL;
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        // SAFETY: by the contract above every offset stays inside its slice:
        // a: r·k + kk < R·k; panels: 3·pk + kk·16 + 15 < 4·k·16; c: r·ldc + 63.
        unsafe {
            for kk in 0..k {
                let b = [0, 1, 2, 3].map(|p| _mm512_loadu_ps(bp.add(p * pk + kk * PANEL)));
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.add(r * k + kk));
                    for p in 0..4 {
                        acc[r][p] = _mm512_fmadd_ps(av, b[p], acc[r][p]);
                    }
                }
            }
            let bv = _mm512_set1_ps(beta);
            for r in 0..R {
                for p in 0..4 {
                    let out = cp.add(r * ldc + p * PANEL);
                    // β = 0 must not read C: it may be uninitialised (or NaN).
                    let sum =
                        if beta == 0.0 { acc[r][p] } else { _mm512_fmadd_ps(bv, _mm512_loadu_ps(out), acc[r][p]) };
                    _mm512_storeu_ps(out, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// C = β·C + A·B, B given as k × n (or n × k when `transposed`), in f64.
    fn naive(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], transposed: bool, beta: f32, c: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = beta as f64 * c[i * n + j] as f64;
                for kk in 0..k {
                    let bv = if transposed { b[j * k + kk] } else { b[kk * n + j] };
                    s += a[i * k + kk] as f64 * bv as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_product_for_kernel_and_fallback_shapes() {
        let mut rng = Rng::new(11);
        // n = 64, 128, 192, 1024 take the kernel on AVX-512 CPUs; 4, 16, 24, 96
        // always take the fallback. m covers full 6-row tiles and every remainder.
        let shapes = [
            (1, 1, 64),
            (5, 7, 64),
            (6, 16, 128),
            (13, 24, 192),
            (50, 256, 1024),
            (50, 1024, 256),
            (3, 8, 4),
            (7, 4, 16),
            (9, 24, 24),
            (4, 32, 96),
        ];
        for (m, k, n) in shapes {
            for transposed in [false, true] {
                for beta in [0.0, 1.0, 0.5] {
                    let a = random(&mut rng, m * k);
                    let b = random(&mut rng, k * n);
                    let c0 = random(&mut rng, m * n);
                    let want = naive(m, k, n, &a, &b, transposed, beta, &c0);
                    // With β = 0 the old C must be ignored, even NaN.
                    let mut c = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
                    gemm_packed(m, k, n, &a, &PackedB::new(&b, k, n, transposed), beta, &mut c);
                    let tol = 1e-5 * (k as f32).sqrt() + 1e-6;
                    for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (x - y).abs() <= tol,
                            "m={m} k={k} n={n} transposed={transposed} β={beta}: C[{idx}] = {x}, naive {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "packed as")]
    fn rejects_a_b_packed_for_another_shape() {
        let b = PackedB::new(&[0.0; 64 * 8], 8, 64, false);
        gemm_packed(1, 64, 8, &[0.0; 64], &b, 0.0, &mut [0.0; 8]);
    }
}
