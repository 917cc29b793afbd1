//! Optional OpenBLAS for the big f32 matmuls, loaded at run time.
//!
//! candle's own gemm uses AVX2 kernels only (its AVX-512 path needs a nightly compiler); on the CPUs
//! this project runs on, OpenBLAS's `sgemm` is about four times faster for the projection matmuls
//! that dominate a forward pass. It is looked up once with `dlopen` (`libopenblas.so.0`, Debian's
//! `libopenblas0`, or the file `PREFIXSCOPE_BLAS` names); without it everything runs on candle's
//! matmul, with the same results up to rounding. `PREFIXSCOPE_BLAS=off` forces candle's.

use candle_core::{DType, Tensor};
use std::sync::OnceLock;

/// `cblas_sgemm` with 32-bit integers (the LP64 build that distributions ship).
type Sgemm = unsafe extern "C" fn(
    layout: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);

/// Products smaller than this many multiply-adds stay on candle's matmul (the call overhead is most
/// of their cost).
const BLAS_MIN_MACS: usize = 1 << 16;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

struct Blas {
    // Kept alive for as long as `sgemm` may be called.
    _lib: libloading::Library,
    sgemm: Sgemm,
    name: String,
}

fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(|| {
        let wanted = std::env::var("PREFIXSCOPE_BLAS").ok();
        if wanted.as_deref() == Some("off") {
            return None;
        }
        let candidates: Vec<String> = match wanted {
            Some(p) => vec![p],
            None => vec![
                "libopenblas.so.0".into(),
                "libopenblas.so".into(),
                "libopenblas.dylib".into(),
            ],
        };
        for name in candidates {
            // SAFETY: loading a BLAS library runs its initializers, which is what it is for; the
            // symbol has the standard CBLAS signature declared above.
            unsafe {
                let Ok(lib) = libloading::Library::new(&name) else {
                    continue;
                };
                let sgemm = match lib.get::<Sgemm>(b"cblas_sgemm\0") {
                    Ok(f) => *f,
                    Err(_) => continue,
                };
                tracing::info!("using {name} for f32 matmuls");
                return Some(Blas {
                    _lib: lib,
                    sgemm,
                    name,
                });
            }
        }
        None
    })
    .as_ref()
}

/// Whether OpenBLAS (or the library `PREFIXSCOPE_BLAS` names) was found.
pub fn active() -> bool {
    blas().is_some()
}

/// Which BLAS the projections use, for `inspect`/`bench` ("candle gemm" without one).
pub fn backend() -> String {
    blas().map_or("candle gemm".into(), |b| format!("OpenBLAS ({})", b.name))
}

/// `x (m, k) @ w (k, n)` for contiguous f32 CPU matrices, through OpenBLAS when it is there.
pub fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match product(x, w, false)? {
        Some(t) => Ok(t),
        None => x.matmul(w),
    }
}

/// `x (m, k) @ w^T` for an `(n, k)` weight (a dequantized GGUF/HF layout), through OpenBLAS's
/// transposed-B `sgemm` when it is there, so the weight is never copied into `(k, n)`.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match product(&x.contiguous()?, &w.contiguous()?, true)? {
        Some(t) => Ok(t),
        None => x.matmul(&w.t()?),
    }
}

/// `x @ w` (or `x @ w^T` with `w_transposed`, `w` then `(n, k)`) through `sgemm`, or `None` when
/// OpenBLAS is absent or the operands are not plain contiguous f32 CPU matrices large enough.
fn product(x: &Tensor, w: &Tensor, w_transposed: bool) -> candle_core::Result<Option<Tensor>> {
    let usable = x.rank() == 2
        && w.rank() == 2
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.is_contiguous()
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op();
    let Some(b) = blas().filter(|_| usable) else {
        return Ok(None);
    };
    let (m, k) = x.dims2()?;
    let (k2, n) = match (w_transposed, w.dims2()?) {
        (false, (k2, n)) => (k2, n),
        (true, (n, k2)) => (k2, n),
    };
    if k != k2 || m * n * k < BLAS_MIN_MACS || [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws) else {
        return Ok(None);
    };
    let xa = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k];
    let wa = &ws.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + k * n];
    let out = gemm(b, xa, false, wa, w_transposed, m, n, k);
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// `op(a) @ op(b)` as a new `(m, n)` row-major buffer, where `op(a)` is `(m, k)` (`a` stored `(k, m)`
/// when `ta`) and `op(b)` is `(k, n)` (`b` stored `(n, k)` when `tb`).
#[allow(clippy::too_many_arguments)]
fn gemm(
    blas: &Blas,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "gemm operands too short"
    );
    let (trans_a, lda) = if ta { (TRANS, m) } else { (NO_TRANS, k) };
    let (trans_b, ldb) = if tb { (TRANS, k) } else { (NO_TRANS, n) };
    let mut out = vec![0f32; m * n];
    // SAFETY: a and b hold at least m*k and k*n floats (checked above) in row-major order with the
    // leading dimensions given; sgemm reads them and writes the m*n floats of `out`.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            trans_a,
            trans_b,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            lda as i32,
            b.as_ptr(),
            ldb as i32,
            0.0,
            out.as_mut_ptr(),
            n as i32,
        );
    }
    out
}

/// Differentiable `x (m, k) @ w` for training: `w` is `(k, n)`, or `(n, k)` read transposed when
/// `w_transposed` (an `nn.Linear` weight). Through OpenBLAS forward and backward when it is there
/// (candle's matmul and its backward otherwise): the projections are half of a toy training step.
pub fn matmul_train(x: &Tensor, w: &Tensor, w_transposed: bool) -> candle_core::Result<Tensor> {
    let fits = x.rank() == 2
        && w.rank() == 2
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.device().is_cpu()
        && [x.dims(), w.dims()]
            .concat()
            .iter()
            .all(|&d| d <= i32::MAX as usize);
    if blas().is_none() || !fits {
        return match w_transposed {
            true => x.matmul(&w.t()?),
            false => x.matmul(w),
        };
    }
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Gemm {
            ta: false,
            tb: w_transposed,
        },
    )
}

/// `op(a) @ op(b)` as a candle op (see [`gemm`]); only built when OpenBLAS is loaded.
struct Gemm {
    ta: bool,
    tb: bool,
}

impl candle_core::CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "openblas-sgemm"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let Some(blas) = blas() else {
            candle_core::bail!("{}: OpenBLAS is not loaded", self.name());
        };
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: expected contiguous operands", self.name());
        };
        let ((r1, c1), (r2, c2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let (m, k) = if self.ta { (c1, r1) } else { (r1, c1) };
        let (k2, n) = if self.tb { (c2, r2) } else { (r2, c2) };
        if k != k2 {
            candle_core::bail!(
                "{}: inner dimensions differ, {:?} against {:?}",
                self.name(),
                l1.shape(),
                l2.shape()
            );
        }
        let a = &s1.as_slice::<f32>()?[a0..a1];
        let b = &s2.as_slice::<f32>()?[b0..b1];
        let out = gemm(blas, a, self.ta, b, self.tb, m, n, k);
        Ok((candle_core::CpuStorage::F32(out), (m, n).into()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let op = |ta, tb| Gemm { ta, tb };
        // Only the forms `matmul_train` builds: C = A B (B stored (k, n)) or C = A B^T (B (n, k)).
        if self.ta {
            candle_core::bail!("{}: no backward for a transposed left operand", self.name());
        }
        // A frozen operand (the model's weights under prefix or LoRA training) gets no gradient:
        // computing it would be a third of the backward products, thrown away.
        let da = match (a.track_op(), self.tb) {
            (false, _) => None,
            // dA = G B.
            (true, true) => Some(g.apply_op2_no_bwd(b, &op(false, false))?),
            // dA = G B^T.
            (true, false) => Some(g.apply_op2_no_bwd(b, &op(false, true))?),
        };
        let db = match (b.track_op(), self.tb) {
            (false, _) => None,
            // dB = G^T A.
            (true, true) => Some(g.apply_op2_no_bwd(a, &op(true, false))?),
            // dB = A^T G.
            (true, false) => Some(a.apply_op2_no_bwd(&g, &op(true, false))?),
        };
        Ok((da, db))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{flat, max_abs_diff};
    use super::*;

    #[test]
    fn blas_matmul_equals_a_naive_f64_product() {
        let dev = candle_core::Device::Cpu;
        // Large enough for OpenBLAS.
        let (m, k, n) = (130, 177, 301);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        // The expected product from a naive f64 triple loop, not from candle: without OpenBLAS
        // `matmul` is candle's own, and candle against candle would prove nothing.
        let (xs, ws) = (flat(&x), flat(&w));
        let mut naive = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                naive[i * n + j] = (0..k)
                    .map(|t| xs[i * k + t] as f64 * ws[t * n + j] as f64)
                    .sum();
            }
        }
        let want = Tensor::from_vec(
            naive.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
            (m, n),
            &dev,
        )
        .unwrap();
        // f32 sums of 177 products of unit normals: rounding well below 1e-3.
        let d = max_abs_diff(&matmul(&x, &w).unwrap(), &want);
        assert!(d < 1e-3, "{} vs the f64 product: {d}", backend());
        // The transposed-weight form.
        let wt = w.t().unwrap().contiguous().unwrap();
        let d = max_abs_diff(&matmul_t(&x, &wt).unwrap(), &want);
        assert!(d < 1e-3, "{} transposed vs the f64 product: {d}", backend());
        // A narrowed (non-contiguous) view falls back to candle and is still right.
        let wv = w.narrow(1, 3, 7).unwrap();
        assert_eq!(
            flat(&matmul(&x, &wv).unwrap()),
            flat(&x.matmul(&wv).unwrap())
        );
    }

    #[test]
    fn training_matmul_matches_candle_in_value_and_gradients() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::randn(0f32, 1.0, (37, 19), &dev).unwrap();
        let w = candle_core::Var::randn(0f32, 1.0, (19, 23), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (37, 23), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor, w: &Tensor| {
            let y = f(x.as_tensor(), w);
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        // x @ w, with w (k, n).
        let (y1, dx1) = run(&|x, w| matmul_train(x, w, false).unwrap(), w.as_tensor());
        let (y2, dx2) = run(&|x, w| x.matmul(w).unwrap(), w.as_tensor());
        assert!(max_abs_diff(&y1, &y2) < 1e-4 && max_abs_diff(&dx1, &dx2) < 1e-4);
        // Weight gradients of both forms: x @ w and x @ (w^T)^T.
        let dw = |f: &dyn Fn(&Tensor) -> Tensor| {
            let y = f(w.as_tensor());
            (&y * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(&w)
                .unwrap()
                .clone()
        };
        let want = dw(&|w| x.as_tensor().matmul(w).unwrap());
        let got = dw(&|w| matmul_train(x.as_tensor(), w, false).unwrap());
        assert!(max_abs_diff(&got, &want) < 1e-4, "{}", backend());
        let got_t = dw(&|w| {
            let wt = w.t().unwrap().contiguous().unwrap();
            matmul_train(x.as_tensor(), &wt, true).unwrap()
        });
        assert!(
            max_abs_diff(&got_t, &want) < 1e-4,
            "{} (transposed)",
            backend()
        );
    }
}
