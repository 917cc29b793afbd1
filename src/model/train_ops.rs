//! Fused training ops with hand-written backward passes: GELU (tanh form), the causal softmax and
//! LayerNorm.
//!
//! Why: candle's differentiable versions are compositions of ten or more element-wise ops each (GELU's
//! backward alone calls `powf` and `tanhf` per element), and every op allocates a fresh buffer. On
//! the 4-layer toy they were three quarters of a training step. Each op here is one pass forward
//! and one pass backward over plain slices; the tests below check values and gradients against
//! candle's composed versions.

use super::attention::causal_softmax_rows;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};

/// The contiguous f32 data of a custom op's input.
fn f32s<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!(
            "{op}: expected a contiguous input, found strides {:?}",
            l.stride()
        ),
    }
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_K: f32 = 0.044715;

/// minGPT's `NewGELU`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(self.name(), s, l)?;
        let y = x
            .iter()
            .map(|&v| 0.5 * v * (1.0 + super::gpt::tanh_fast(GELU_C * v * (1.0 + GELU_K * v * v))))
            .collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// `grad * gelu'(x)`.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(self.name(), s1, l1)?;
        let g = f32s(self.name(), s2, l2)?;
        let d = x
            .iter()
            .zip(g)
            .map(|(&v, &g)| {
                let t = super::gpt::tanh_fast(GELU_C * v * (1.0 + GELU_K * v * v));
                let du = GELU_C * (1.0 + 3.0 * GELU_K * v * v);
                g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du)
            })
            .collect();
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// Softmax over the last dimension of `(heads, t, p + t)` scores with the prefix columns open and
/// the content columns causal (masked entries are exactly 0), differentiable.
pub fn causal_softmax_train(scores: &Tensor, p: usize) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { p })
}

struct CausalSoftmax {
    p: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, t, cols) = l.shape().dims3()?;
        if cols != self.p + t {
            bail!(
                "{}: expected {} key columns (p + t), found {cols}",
                self.name(),
                self.p + t
            );
        }
        let mut y = f32s(self.name(), s, l)?.to_vec();
        let (mut max, mut sum) = (vec![0f32; h * t], vec![0f32; h * t]);
        causal_softmax_rows(&mut y, t, self.p, &mut max, &mut sum);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `y * (g - sum(g * y))` per row of the last dimension.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32s(self.name(), s1, l1)?;
        let g = f32s(self.name(), s2, l2)?;
        let cols = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut d = vec![0f32; y.len()];
        for ((yr, gr), dr) in y.chunks(cols).zip(g.chunks(cols)).zip(d.chunks_mut(cols)) {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &a), &b) in dr.iter_mut().zip(yr).zip(gr) {
                *o = a * (b - dot);
            }
        }
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// LayerNorm over the last dimension with weight `w` and bias `b`, differentiable in all three.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

struct LayerNorm {
    eps: f32,
}

/// Mean and reciprocal standard deviation of one row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(self.name(), s1, l1)?;
        let w = f32s(self.name(), s2, l2)?;
        let b = f32s(self.name(), s3, l3)?;
        let c = w.len();
        if c == 0 || b.len() != c || !x.len().is_multiple_of(c) {
            bail!(
                "{}: weight {c} and bias {} do not fit rows of {:?}",
                self.name(),
                b.len(),
                l1.shape()
            );
        }
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks(c).zip(y.chunks_mut(c)) {
            let (mean, rstd) = row_stats(xr, self.eps);
            for (((o, &v), &w), &b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * rstd * w + b;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let rows = x.elem_count() / c;
        // One pass gives dx (the first `rows` rows), then dw and db as two extra rows.
        let all = x.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(w.shape())?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(rows + 2, c)`: dx per row, then dw, then db.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(self.name(), s1, l1)?;
        let w = f32s(self.name(), s2, l2)?;
        let g = f32s(self.name(), s3, l3)?;
        let c = w.len();
        let rows = x.len() / c.max(1);
        let mut out = vec![0f32; (rows + 2) * c];
        let (dx, dwb) = out.split_at_mut(rows * c);
        let (dw, db) = dwb.split_at_mut(c);
        let mut xhat = vec![0f32; c];
        let mut dxhat = vec![0f32; c];
        for ((xr, gr), dr) in x.chunks(c).zip(g.chunks(c)).zip(dx.chunks_mut(c)) {
            let (mean, rstd) = row_stats(xr, self.eps);
            let (mut m1, mut m2) = (0f32, 0f32);
            for k in 0..c {
                xhat[k] = (xr[k] - mean) * rstd;
                dxhat[k] = gr[k] * w[k];
                m1 += dxhat[k];
                m2 += dxhat[k] * xhat[k];
                dw[k] += gr[k] * xhat[k];
                db[k] += gr[k];
            }
            let (m1, m2) = (m1 / c as f32, m2 / c as f32);
            for k in 0..c {
                dr[k] = rstd * (dxhat[k] - m1 - xhat[k] * m2);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use candle_core::{Device, Var, D};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = crate::prefix_math::gaussian(seed, n)
            .iter()
            .map(|x| 1.5 * x)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Value and input gradient of `f` on `x`, with a fixed random upstream gradient.
    fn value_and_grad(x: &Var, f: impl Fn(&Tensor) -> Result<Tensor>) -> (Tensor, Tensor) {
        let y = f(x.as_tensor()).unwrap();
        let up = randn(y.dims(), 7);
        let loss = (&y * &up).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        (y, g.get(x).unwrap().clone())
    }

    #[test]
    fn gelu_matches_candle_in_value_and_gradient() {
        let x = Var::from_tensor(&randn(&[6, 50], 1)).unwrap();
        let (y1, g1) = value_and_grad(&x, gelu);
        let (y2, g2) = value_and_grad(&x, |t| t.gelu());
        assert!(
            max_abs_diff(&y1, &y2) < 1e-5,
            "value {}",
            max_abs_diff(&y1, &y2)
        );
        assert!(
            max_abs_diff(&g1, &g2) < 1e-4,
            "grad {}",
            max_abs_diff(&g1, &g2)
        );
    }

    #[test]
    fn causal_softmax_matches_masked_softmax_in_value_and_gradient() {
        for p in [0usize, 3] {
            let (h, t) = (5, 7);
            let x = Var::from_tensor(&randn(&[h, t, p + t], 2)).unwrap();
            let (y1, g1) = value_and_grad(&x, |s| causal_softmax_train(s, p));
            let mask = super::super::attention::causal_mask(t, p, &Device::Cpu).unwrap();
            let (y2, g2) = value_and_grad(&x, |s| {
                candle_nn::ops::softmax(&s.broadcast_add(&mask)?, D::Minus1)
            });
            assert!(max_abs_diff(&y1, &y2) < 1e-6, "p={p} value");
            assert!(
                max_abs_diff(&g1, &g2) < 1e-5,
                "p={p} grad {}",
                max_abs_diff(&g1, &g2)
            );
            // A masked (future) entry gets neither weight nor gradient.
            let row0: Vec<f32> = y1.get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
            assert_eq!(row0[p + 1], 0.0);
        }
    }

    #[test]
    fn layer_norm_matches_candle_in_value_and_all_three_gradients() {
        let x = Var::from_tensor(&randn(&[3, 4, 16], 3)).unwrap();
        let w = Var::from_tensor(&randn(&[16], 4)).unwrap();
        let b = Var::from_tensor(&randn(&[16], 5)).unwrap();
        let up = randn(&[3, 4, 16], 6);
        let grads = |fused: bool| {
            let y = if fused {
                layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
            } else {
                candle_nn::ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
            }
            .unwrap();
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |v: &Var| g.get(v).unwrap().clone();
            (y, get(&x), get(&w), get(&b))
        };
        let (y1, dx1, dw1, db1) = grads(true);
        let (y2, dx2, dw2, db2) = grads(false);
        for (name, a, b, tol) in [
            ("value", &y1, &y2, 1e-5),
            ("dx", &dx1, &dx2, 1e-4),
            ("dw", &dw1, &dw2, 1e-4),
            ("db", &db1, &db2, 1e-4),
        ] {
            let d = max_abs_diff(a, b);
            assert!(d < tol, "{name} off by {d:e}");
        }
        assert_eq!(dw1.dims(), &[16]);
    }
}
