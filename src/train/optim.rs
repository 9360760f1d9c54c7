//! Optimisers (Adam, RMSProp) and gradient-norm clipping, over every tensor of
//! [`Weights`] at once.
//!
//! ```text
//! clip:    g ← g · min(1, max_norm / ‖g‖₂)            (‖·‖ over all tensors together)
//! Adam:    m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,
//!          w ← w − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
//! RMSProp: v ← αv + (1−α)g²,   w ← w − lr · g / (√v + ε)   (char-rnn: α = 0.95)
//! ```

use crate::model::Weights;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Adam,
    Rmsprop,
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adam" => Ok(Self::Adam),
            "rmsprop" => Ok(Self::Rmsprop),
            _ => Err(format!("unknown optimiser {s:?} (use adam or rmsprop)")),
        }
    }
}

impl Weights {
    /// All-zero weights of the same shapes.
    pub fn zeros_like(&self) -> Weights {
        let mut z = self.clone();
        z.for_each_tensor_mut(|t| t.fill(0.0));
        z
    }

    /// Calls `f` on every tensor's values, in `named_tensors` order.
    pub(crate) fn for_each_tensor_mut(&mut self, mut f: impl FnMut(&mut [f32])) {
        if let Some(e) = &mut self.embedding {
            f(e.as_slice_mut().expect("standard layout"));
        }
        for l in &mut self.layers {
            f(l.weight_ih.as_slice_mut().expect("standard layout"));
            f(l.weight_hh.as_slice_mut().expect("standard layout"));
            f(l.bias_ih.as_slice_mut().expect("standard layout"));
            f(l.bias_hh.as_slice_mut().expect("standard layout"));
        }
        f(self.decoder_weight.as_slice_mut().expect("standard layout"));
        f(self.decoder_bias.as_slice_mut().expect("standard layout"));
    }

    /// Every tensor's values as one list of slices, in `named_tensors` order.
    pub fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        if let Some(e) = &mut self.embedding {
            out.push(e.as_slice_mut().expect("standard layout"));
        }
        for l in &mut self.layers {
            out.push(l.weight_ih.as_slice_mut().expect("standard layout"));
            out.push(l.weight_hh.as_slice_mut().expect("standard layout"));
            out.push(l.bias_ih.as_slice_mut().expect("standard layout"));
            out.push(l.bias_hh.as_slice_mut().expect("standard layout"));
        }
        out.push(self.decoder_weight.as_slice_mut().expect("standard layout"));
        out.push(self.decoder_bias.as_slice_mut().expect("standard layout"));
        out
    }

    /// self += other, tensor by tensor.
    pub(crate) fn add_assign(&mut self, other: &mut Weights) {
        for (a, b) in self.tensors_mut().into_iter().zip(other.tensors_mut()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping (like PyTorch's `clip_grad_norm_`).
pub(crate) fn clip_grad_norm(grads: &mut Weights, max_norm: f32) -> f32 {
    let mut sq = 0f64;
    grads.for_each_tensor_mut(|t| sq += t.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>());
    let norm = sq.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        grads.for_each_tensor_mut(|t| t.iter_mut().for_each(|x| *x *= s));
    }
    norm
}

/// Optimiser state: first and second moments, and the step count for Adam's
/// bias correction. Saved in checkpoints so a resumed run continues exactly.
#[derive(Debug, Clone)]
pub(crate) struct OptimState {
    pub kind: Optimizer,
    pub m: Weights,
    pub v: Weights,
    pub t: u64,
}

impl OptimState {
    pub fn new(kind: Optimizer, like: &Weights) -> Self {
        Self { kind, m: like.zeros_like(), v: like.zeros_like(), t: 0 }
    }

    /// One update of `w` with gradient `g` at learning rate `lr`.
    pub fn step(&mut self, w: &mut Weights, g: &mut Weights, lr: f32) {
        self.t += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(self.t.min(i32::MAX as u64) as i32);
        let c2 = 1.0 - b2.powi(self.t.min(i32::MAX as u64) as i32);
        let kind = self.kind;
        let ws = w.tensors_mut();
        let gs = g.tensors_mut();
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for (((w, g), m), v) in ws.into_iter().zip(gs).zip(ms).zip(vs) {
            match kind {
                Optimizer::Adam => {
                    for j in 0..w.len() {
                        m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                        v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                        w[j] -= lr * (m[j] / c1) / ((v[j] / c2).sqrt() + eps);
                    }
                }
                Optimizer::Rmsprop => {
                    let alpha = 0.95;
                    for j in 0..w.len() {
                        v[j] = alpha * v[j] + (1.0 - alpha) * g[j] * g[j];
                        w[j] -= lr * g[j] / (v[j].sqrt() + eps);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_caps_the_global_norm() {
        let mut g = Weights::random(5, None, 3, 1, 1);
        g.for_each_tensor_mut(|t| t.fill(1.0));
        let count = g.param_count() as f32;
        let before = clip_grad_norm(&mut g, 1.0);
        assert!((before - count.sqrt()).abs() < 1e-3);
        let after = clip_grad_norm(&mut g, 1e9);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }

    #[test]
    fn adam_moves_against_the_gradient_by_about_lr() {
        let mut w = Weights::random(4, None, 2, 1, 2);
        let before = w.clone();
        let mut g = w.zeros_like();
        g.for_each_tensor_mut(|t| t.fill(0.5));
        let mut opt = OptimState::new(Optimizer::Adam, &w);
        opt.step(&mut w, &mut g, 0.01);
        let d = &before.decoder_bias - &w.decoder_bias;
        assert!(d.iter().all(|&x| (x - 0.01).abs() < 1e-5), "{d:?}");
    }
}
