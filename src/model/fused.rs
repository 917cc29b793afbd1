//! Element-wise passes of the f32 inference path done in one loop each, instead of a chain of candle
//! ops: SwiGLU's `silu(gate) * up` read straight from the fused gate|up product (candle's `silu` and
//! `*` on its two column views took the strided path, two passes and two fresh buffers), and the
//! residual add. On these 2-core machines candle's element-wise ops also wake its thread pool for
//! every op; a single pass over a few hundred KB costs less than that wake-up when the machine is
//! busy. Both return `None` for what they do not handle (a tracked tensor, another dtype or layout):
//! the caller then takes candle's ops, which give the same numbers up to `exp`'s rounding.

use candle_core::{DType, Tensor};

/// Rows of a rank-2 f32 CPU tensor that no gradient tracks, each contiguous (`stride (rs, 1)`):
/// calls `f(buffer from the first element, row stride, rows, columns)`.
fn with_rows<R>(x: &Tensor, f: impl FnOnce(&[f32], usize, usize, usize) -> R) -> Option<R> {
    if x.dtype() != DType::F32 || x.track_op() || x.rank() != 2 {
        return None;
    }
    let (n, c) = x.dims2().ok()?;
    let (s, l) = x.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        return None;
    };
    // Only unit column stride: a single row of a transposed column (stride `(1, 2)`) is not.
    let [rs, 1] = l.stride() else {
        return None;
    };
    let rs = *rs;
    let a = s.as_slice::<f32>().ok()?;
    let need = if n == 0 { 0 } else { (n - 1) * rs + c };
    let a = a.get(l.start_offset()..l.start_offset() + need)?;
    Some(f(a, rs, n, c))
}

/// `silu(gate) * up` for `(n, F)` gate and up (column views of one `(n, 2F)` product, or any two
/// row-major matrices), as a new contiguous `(n, F)`. `silu(g) = g / (1 + exp(-g))`, as candle's;
/// `exp` is [`super::attention::exp_f32`] (within 0.51 ulp of libm's `expf`), vectorized.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if gate.dims() != up.dims() {
        return Ok(None);
    }
    let out = with_rows(gate, |g, gs, n, f| {
        with_rows(up, |u, us, _, _| {
            let mut out = vec![0f32; n * f];
            let row = |(r, o): (usize, &mut [f32])| {
                silu_mul_row(&g[r * gs..r * gs + f], &u[r * us..r * us + f], o)
            };
            // At long prompts (SmolLM2 at N = 512: 786,432 exponentials, 2 ms on one core) the rows
            // run on the attention's pool: the forward's own pool has one thread (see
            // `stepper::on_compute_pool`), and OpenBLAS's threads are idle between products.
            match super::attention::parallel_pool().filter(|_| n * f >= PARALLEL_MIN_ELEMENTS) {
                Some(pool) => {
                    use rayon::prelude::*;
                    pool.install(|| out.par_chunks_mut(f.max(1)).enumerate().for_each(row))
                }
                None => out.chunks_exact_mut(f.max(1)).enumerate().for_each(row),
            }
            out
        })
    })
    .flatten();
    let Some(out) = out else { return Ok(None) };
    Ok(Some(Tensor::from_vec(out, gate.dims2()?, gate.device())?))
}

/// Below this many elements [`silu_mul`] stays on the calling thread (waking a pool costs more).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 17;

/// `x + y` for two same-shaped rank-2 f32 tensors with contiguous rows, as a new contiguous tensor.
pub fn add(x: &Tensor, y: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if x.dims() != y.dims() {
        return Ok(None);
    }
    let out = with_rows(x, |a, xs, n, c| {
        with_rows(y, |b, ys, _, _| {
            let mut out = Vec::with_capacity(n * c);
            for r in 0..n {
                let (ra, rb) = (&a[r * xs..r * xs + c], &b[r * ys..r * ys + c]);
                out.extend(ra.iter().zip(rb).map(|(p, q)| p + q));
            }
            out
        })
    })
    .flatten();
    let Some(out) = out else { return Ok(None) };
    Ok(Some(Tensor::from_vec(out, x.dims2()?, x.device())?))
}

fn silu_mul_row(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked just above).
            return unsafe { silu_mul_avx512(g, u, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { silu_mul_avx2(g, u, out) };
        }
    }
    silu_mul_body::<false>(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_body::<true>(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_body::<true>(g, u, out)
}

#[inline(always)]
fn silu_mul_body<const FMA: bool>(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + super::attention::exp_f32::<FMA>(-g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Expected values from f64 formulas over the same inputs, not from the function under test.
    #[test]
    fn silu_mul_of_column_views_equals_the_f64_formula() {
        let (n, f) = (5, 37);
        let vals: Vec<f32> = (0..n * 2 * f)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) * 0.09)
            .collect();
        let gu = Tensor::from_vec(vals.clone(), (n, 2 * f), &Device::Cpu).unwrap();
        let (g, u) = (gu.narrow(1, 0, f).unwrap(), gu.narrow(1, f, f).unwrap());
        let got = silu_mul(&g, &u).unwrap().expect("handled");
        assert_eq!(got.dims(), &[n, f]);
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        for r in 0..n {
            for j in 0..f {
                let gv = vals[r * 2 * f + j] as f64;
                let uv = vals[r * 2 * f + f + j] as f64;
                let want = gv / (1.0 + (-gv).exp()) * uv;
                let d = (got[r * f + j] as f64 - want).abs();
                assert!(
                    d <= 2e-6 * want.abs().max(1e-3),
                    "({r},{j}): {} vs {want}",
                    got[r * f + j]
                );
            }
        }
        // Large magnitudes: silu(g) -> g for large g, -> 0 for very negative g; no NaN.
        let x = Tensor::new(&[[120f32, -120.0, 0.0]], &Device::Cpu).unwrap();
        let one = Tensor::new(&[[1f32, 1.0, 1.0]], &Device::Cpu).unwrap();
        let y: Vec<f32> = silu_mul(&x, &one)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y[0], 120.0);
        assert!(y[1].abs() < 1e-30 && y[2] == 0.0, "{y:?}");
    }

    #[test]
    fn add_of_views_equals_the_sum_and_unhandled_inputs_are_declined() {
        let a = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let b = Tensor::arange(100f32, 124.0, &Device::Cpu)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let (av, bv) = (a.narrow(1, 1, 3).unwrap(), b.narrow(1, 2, 3).unwrap());
        let got: Vec<f32> = add(&av, &bv)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = (0..4)
            .flat_map(|r| {
                (0..3).map(move |j| (r * 6 + 1 + j) as f32 + (100 + r * 6 + 2 + j) as f32)
            })
            .collect();
        assert_eq!(got, want);
        // Other shapes, a transposed view, another dtype: declined.
        assert!(add(&a, &b.narrow(1, 0, 5).unwrap()).unwrap().is_none());
        let t = a.t().unwrap();
        assert!(add(&t, &t).unwrap().is_none());
        let d = a.to_dtype(DType::F64).unwrap();
        assert!(add(&d, &d).unwrap().is_none());
        assert!(silu_mul(&d, &d).unwrap().is_none());
        // One row whose columns are not adjacent (column 0 of a (3, 2) matrix, transposed): declined,
        // not read as if they were.
        let col = b
            .narrow(0, 0, 3)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .t()
            .unwrap();
        assert_eq!(col.dims(), &[1, 3]);
        assert!(add(&col, &col).unwrap().is_none());
        // Tracked tensors are declined: a fused pass has no backward.
        let v = candle_core::Var::from_tensor(&a).unwrap();
        assert!(add(v.as_tensor(), &b).unwrap().is_none());
        assert!(add(&b, v.as_tensor()).unwrap().is_none());
        assert!(silu_mul(v.as_tensor(), &b).unwrap().is_none());
    }
}
