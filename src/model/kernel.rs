//! The hot loops: matrix × vector, the fused LSTM cell update, fast `exp`, and a
//! GEMM wrapper over `matrixmultiply`.
//!
//! The recurrent loop cannot be batched over time, so per character it does one
//! `gates += W_hh · h` (a 4H × H matrix-vector product) and 4H non-linearities.
//! Two things make that fast:
//! * the dot products keep 4 rows × 32 lanes of independent accumulators, so the
//!   compiler emits wide SIMD (AVX-512 or AVX2 + FMA, picked at run time) that is
//!   limited by loads, not by add latency;
//! * `exp` is a branch-free polynomial (relative error < 2e-7), so sigmoid and tanh
//!   vectorise too instead of calling libm 4H times per step.

/// `exp(x)` for f32 without branches: 2^k · p(r) with x = k·ln2 + r, |r| ≤ ln2/2,
/// p the degree-6 Taylor polynomial (relative error ≈ 1.2e-7 on the reduced range).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    p * scale
}

/// σ(x) = 1 / (1 + e^(−x)).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// tanh(x) = 2σ(2x) − 1 (absolute error < 3e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 / (1.0 + exp_fast(-2.0 * x)) - 1.0
}

const LANES: usize = 32;
const ROWS: usize = 4;

/// y += W x for row-major W (rows × cols), written so LLVM vectorises it.
#[inline(always)]
fn matvec_acc_generic(w: &[f32], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    let rows = y.len();
    debug_assert_eq!(w.len(), rows * cols);
    let main = cols - cols % LANES;
    let mut r = 0;
    while r + ROWS <= rows {
        let mut acc = [[0f32; LANES]; ROWS];
        let mut c = 0;
        while c < main {
            let xs = &x[c..c + LANES];
            for (q, a) in acc.iter_mut().enumerate() {
                let ws = &w[(r + q) * cols + c..(r + q) * cols + c + LANES];
                for l in 0..LANES {
                    a[l] += ws[l] * xs[l];
                }
            }
            c += LANES;
        }
        for (q, a) in acc.iter().enumerate() {
            let mut s: f32 = a.iter().sum();
            for c in main..cols {
                s += w[(r + q) * cols + c] * x[c];
            }
            y[r + q] += s;
        }
        r += ROWS;
    }
    while r < rows {
        let row = &w[r * cols..(r + 1) * cols];
        y[r] += row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        r += 1;
    }
}

/// Buffers one LSTM step reads and writes. All are H long except `pre` (4H).
pub struct StepIo<'a> {
    pub h_prev: &'a [f32],
    pub c_prev: &'a [f32],
    /// Gate pre-activations from the input (W_ih x + b_ih + b_hh), 4H, gate order i, f, g, o.
    pub x_proj: &'a [f32],
    /// Scratch for the 4H pre-activations.
    pub pre: &'a mut [f32],
    pub i: &'a mut [f32],
    pub f: &'a mut [f32],
    pub g: &'a mut [f32],
    pub o: &'a mut [f32],
    pub c: &'a mut [f32],
    pub h: &'a mut [f32],
}

/// One LSTM step:
/// ```text
/// [i f g o] = [σ σ tanh σ](x_proj + W_hh h_prev)
/// c = f ⊙ c_prev + i ⊙ g
/// h = o ⊙ tanh(c)
/// ```
#[inline(always)]
fn lstm_step_generic(weight_hh: &[f32], io: StepIo<'_>) {
    let n = io.h.len();
    io.pre.copy_from_slice(io.x_proj);
    matvec_acc_generic(weight_hh, io.h_prev, io.pre);
    let (pi, rest) = io.pre.split_at(n);
    let (pf, rest) = rest.split_at(n);
    let (pg, po) = rest.split_at(n);
    for j in 0..n {
        let i = sigmoid(pi[j]);
        let f = sigmoid(pf[j]);
        let g = tanh(pg[j]);
        let o = sigmoid(po[j]);
        let c = f * io.c_prev[j] + i * g;
        io.i[j] = i;
        io.f[j] = f;
        io.g[j] = g;
        io.o[j] = o;
        io.c[j] = c;
        io.h[j] = o * tanh(c);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn lstm_step_avx512(weight_hh: &[f32], io: StepIo<'_>) {
    lstm_step_generic(weight_hh, io)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lstm_step_avx2(weight_hh: &[f32], io: StepIo<'_>) {
    lstm_step_generic(weight_hh, io)
}

/// The widest instruction set this CPU offers, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Portable,
}

/// Which kernel [`lstm_step`] uses on this machine.
pub fn simd() -> Simd {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("CELLSCOPE_PORTABLE").is_some() {
                return Simd::Portable;
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    })
}

/// One LSTM step with the fastest kernel this CPU supports.
pub fn lstm_step(weight_hh: &[f32], io: StepIo<'_>) {
    match simd() {
        // SAFETY: `simd()` only reports a level whose features the CPU has.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { lstm_step_avx512(weight_hh, io) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { lstm_step_avx2(weight_hh, io) },
        _ => lstm_step_generic(weight_hh, io),
    }
}

/// y += W x, dispatched like [`lstm_step`].
pub fn matvec_acc(w: &[f32], x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide(w: &[f32], x: &[f32], y: &mut [f32]) {
            matvec_acc_generic(w, x, y)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(w: &[f32], x: &[f32], y: &mut [f32]) {
            matvec_acc_generic(w, x, y)
        }
        match simd() {
            // SAFETY: as in `lstm_step`.
            Simd::Avx512 => return unsafe { wide(w, x, y) },
            Simd::Avx2 => return unsafe { avx2(w, x, y) },
            Simd::Portable => {}
        }
    }
    matvec_acc_generic(w, x, y)
}

/// Which operand of a GEMM is read transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

/// C = α·op(A)·op(B) + β·C for row-major slices. `op(A)` is m × k, `op(B)` k × n,
/// C m × n. A stored as given: if `ta == T`, `a` holds the k × m matrix.
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm: buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    // SAFETY: the strides address exactly the m·k, k·n and m·n elements checked above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_accurate_over_the_useful_range() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp_fast(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((tanh(0.3) - 0.3f32.tanh()).abs() < 3e-7);
        assert!(tanh(50.0) == 1.0 && tanh(-50.0) == -1.0);
    }

    #[test]
    fn matvec_matches_naive_for_odd_shapes() {
        for &(rows, cols) in &[(1, 1), (7, 3), (9, 33), (64, 16), (12, 100)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 17) as f32 - 8.0) / 7.0).collect();
            let x: Vec<f32> = (0..cols).map(|i| ((i * 11 % 5) as f32 - 2.0) / 3.0).collect();
            let mut y = vec![1.0f32; rows];
            matvec_acc(&w, &x, &mut y);
            for r in 0..rows {
                let expect: f32 = 1.0 + (0..cols).map(|c| w[r * cols + c] * x[c]).sum::<f32>();
                assert!((y[r] - expect).abs() < 1e-4, "row {r} of {rows}x{cols}");
            }
        }
    }

    #[test]
    fn gemm_handles_transposes() {
        // A = [[1,2],[3,4]], B = [[5,6],[7,8]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [0.0; 4];
        gemm(2, 2, 2, 1.0, &a, Trans::N, &b, Trans::N, 0.0, &mut c);
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        gemm(2, 2, 2, 1.0, &a, Trans::T, &b, Trans::N, 0.0, &mut c);
        assert_eq!(c, [26.0, 30.0, 38.0, 44.0]);
        gemm(2, 2, 2, 1.0, &a, Trans::N, &b, Trans::T, 0.0, &mut c);
        assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
    }
}
