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
    let (trans_b, ldb) = if w_transposed {
        (TRANS, k)
    } else {
        (NO_TRANS, n)
    };
    let mut out = vec![0f32; m * n];
    // SAFETY: the slices hold m*k, k*n and m*n floats in row-major order with the leading
    // dimensions given (w is (k, n), or (n, k) read transposed); sgemm reads a and b and writes c
    // within those bounds.
    unsafe {
        (b.sgemm)(
            ROW_MAJOR,
            NO_TRANS,
            trans_b,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            xa.as_ptr(),
            k as i32,
            wa.as_ptr(),
            ldb as i32,
            0.0,
            out.as_mut_ptr(),
            n as i32,
        );
    }
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{flat, max_abs_diff};
    use super::*;

    #[test]
    fn blas_matmul_equals_candle_matmul() {
        let dev = candle_core::Device::Cpu;
        // Large enough for OpenBLAS.
        let x = Tensor::randn(0f32, 1.0, (130, 177), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (177, 301), &dev).unwrap();
        let want = x.matmul(&w).unwrap();
        let d = max_abs_diff(&matmul(&x, &w).unwrap(), &want);
        assert!(d < 1e-3, "{} vs candle: {d}", backend());
        // The transposed-weight form.
        let wt = w.t().unwrap().contiguous().unwrap();
        let d = max_abs_diff(&matmul_t(&x, &wt).unwrap(), &want);
        assert!(d < 1e-3, "{} transposed vs candle: {d}", backend());
        // A narrowed (non-contiguous) view falls back to candle and is still right.
        let wv = w.narrow(1, 3, 7).unwrap();
        assert_eq!(
            flat(&matmul(&x, &wv).unwrap()),
            flat(&x.matmul(&wv).unwrap())
        );
    }
}
