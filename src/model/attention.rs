//! Attention with an optional block of prefix keys/values in front, returning the probabilities.
//! Shared by every family so that the masking and capture rules live in one place.

use candle_core::{DType, Device, Tensor, D};

/// `q`: `(n_heads, t, hd)`; `k`, `v`: `(n_kv_heads, p + t, hd)` where the first `p` columns are
/// prefix keys every query may see, then `t` keys at the same positions as the queries (causal).
/// Returns `(z (n_heads, t, hd), probs (n_heads, t, p + t))`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: usize,
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (n_heads, t, _hd) = q.dims3()?;
    let (n_kv, tk, _) = k.dims3()?;
    debug_assert_eq!(tk, p + t);
    let n_rep = n_heads / n_kv;
    // Grouped-query attention: query head h reads KV head h / n_rep.
    let (k, v) = if n_rep > 1 {
        (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?)
    } else {
        (k.clone(), v.clone())
    };
    let scores = (q.matmul(&k.t()?)? * scale)?;
    // Training (tracked tensors) needs the backward pass of the fused training op.
    let probs = if scores.dtype() != DType::F32 {
        // The fused kernels are f32; float64 (the gradient checks) takes the masked softmax,
        // differentiable by composition.
        let mask = causal_mask(t, p, scores.device())?.to_dtype(scores.dtype())?;
        candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?
    } else if scores.track_op() {
        super::train_ops::causal_softmax_train(&scores, p)?
    } else {
        causal_softmax(&scores, p)?
    };
    let z = probs.matmul(&v.contiguous()?)?;
    Ok((z, probs))
}

/// `(n_kv, t, hd)` -> `(n_kv * n_rep, t, hd)` with head `h` reading KV head `h / n_rep`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    let (n_kv, t, hd) = x.dims3()?;
    x.unsqueeze(1)?
        .expand((n_kv, n_rep, t, hd))?
        .reshape((n_kv * n_rep, t, hd))
}

/// `(t, p + t)` additive mask: prefix columns open, content columns causal.
pub fn causal_mask(t: usize, p: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; t * (p + t)];
    for i in 0..t {
        for j in (i + 1)..t {
            m[i * (p + t) + p + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (t, p + t), device)?.to_dtype(DType::F32)
}

/// Keep only the last `n` query rows of a `(h, t, k)` tensor (the content rows).
pub fn content_rows(x: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    let t = x.dim(1)?;
    x.narrow(1, t - n, n)?.contiguous()
}

/// Sum over the last dimension, used for row sums.
pub fn row_sums(x: &Tensor) -> candle_core::Result<Tensor> {
    x.sum(D::Minus1)
}

/// Softmax of raw scores `(H, t, p + t)` with the causal mask applied in the same pass: row `i`
/// sees the `p` prefix columns and content columns `0..=i`; the rest get exactly 0.
///
/// One pass over a plain buffer, parallel over rows. It replaces a broadcast mask add plus softmax,
/// which on the CPU cost more than the attention matmuls themselves (the broadcast add takes a slow
/// strided path). Not differentiable: training uses [`attend`] on tracked tensors.
pub fn causal_softmax(scores: &Tensor, p: usize) -> candle_core::Result<Tensor> {
    let (h, t, cols) = scores.dims3()?;
    let (buf, _, _) = causal_softmax_stats(scores, p)?;
    Tensor::from_vec(buf, (h, t, cols), scores.device())
}

/// [`causal_softmax`] as a plain buffer, with each row's max score and its denominator relative to
/// that max (what combining with more columns later needs).
pub fn causal_softmax_stats(
    scores: &Tensor,
    p: usize,
) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (h, t, cols) = scores.dims3()?;
    debug_assert_eq!(cols, p + t);
    let mut buf = scores.flatten_all()?.to_vec1::<f32>()?;
    let mut max = vec![0f32; h * t];
    let mut sum = vec![0f32; h * t];
    causal_softmax_rows(&mut buf, t, p, &mut max, &mut sum);
    Ok((buf, max, sum))
}

/// [`causal_softmax`] in place on a row-major `(heads, t, p + t)` buffer, writing each row's max
/// score and denominator into `max` and `sum` (one per row).
pub fn causal_softmax_rows(buf: &mut [f32], t: usize, p: usize, max: &mut [f32], sum: &mut [f32]) {
    use rayon::prelude::*;
    let cols = p + t;
    buf.par_chunks_mut(cols)
        .zip(max.par_iter_mut().zip(sum.par_iter_mut()))
        .enumerate()
        .for_each(|(r, (row, (mx, sm)))| {
            let valid = p + (r % t) + 1;
            let (live, dead) = row.split_at_mut(valid);
            let m = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0f32;
            for x in live.iter_mut() {
                *x = (*x - m).exp();
                s += *x;
            }
            let inv = 1.0 / s;
            for x in live.iter_mut() {
                *x *= inv;
            }
            dead.fill(0.0);
            (*mx, *sm) = (m, s);
        });
}

/// Query rows per block of [`causal_attention`]: one block's scores (rows x keys up to its last row,
/// at most 64 x (P + T) floats: 512 KB at T = 2,048) stay in the core's cache between the score
/// product, the softmax and the value product.
const ROW_BLOCK: usize = 64;

/// Sizes of one layer's attention for [`causal_attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (query head `h` reads `h / (heads / kv_heads)`).
    pub kv_heads: usize,
    /// Query rows (positions).
    pub t: usize,
    /// Prefix key columns every row sees, before the `t` causal ones.
    pub p: usize,
    pub head_dim: usize,
}

/// What [`causal_attention`] returns.
#[derive(Debug, Clone)]
pub struct CausalAttention {
    /// `(H, T, hd)`: the head outputs.
    pub z: Vec<f32>,
    /// `(H, T, P + T)`: the probabilities, when asked for (future columns exactly 0).
    pub probs: Option<Vec<f32>>,
    /// `(H * T)`: each row's max score and its softmax denominator relative to that max.
    pub max: Vec<f32>,
    pub sum: Vec<f32>,
}

/// Causal attention over `[prefix | content]` keys, in blocks of query rows: for each head and
/// block of [`ROW_BLOCK`] rows, the scores against the keys those rows may see (the `p` prefix
/// columns and the content up to the block's last row: half the work of the full square), the
/// masked softmax of [`causal_softmax_rows`] and the product with the values. Scores are never
/// materialised for more than one block per thread, so memory grows with `T^2` only for the
/// probabilities that are asked for (`keep_probs`), and the blocks run in parallel on rayon. The two
/// products of a block run on OpenBLAS's `sgemm` when it is the backend (one thread per block,
/// [`super::blas::SerialGemm`]: twice candle's gemm on AVX-512 machines), else on the `gemm` crate.
///
/// `q`: `(H, T, hd)`; `k`, `v`: `(KV, P + T, hd)`, all row-major f32. Scores are `(q . k) * scale` in
/// f32, the scale applied by the product itself (`sgemm`'s `alpha`, `gemm`'s `beta`), as
/// `q.matmul(k^T) * scale` rounds them.
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: AttnDims,
    scale: f32,
    keep_probs: bool,
) -> CausalAttention {
    causal_attention_blocks(
        q,
        k,
        v,
        d,
        scale,
        keep_probs,
        ROW_BLOCK,
        BlockKernel::Backend,
    )
}

/// Which products [`causal_attention_blocks`] runs its blocks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKernel {
    /// OpenBLAS's `sgemm` when it is the matmul backend, else the `gemm` crate (what a forward uses).
    Backend,
    /// The `gemm` crate (candle's), whatever the backend: `bench --attention-blocks` compares them.
    GemmCrate,
}

/// [`causal_attention`] with `row_block` query rows per task on the given products (the block size
/// and the kernel are chosen by timing this: `prefixscope bench --attention-blocks`).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_blocks(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: AttnDims,
    scale: f32,
    keep_probs: bool,
    row_block: usize,
    kernel: BlockKernel,
) -> CausalAttention {
    let row_block = row_block.max(1);
    use rayon::prelude::*;
    let AttnDims {
        heads,
        kv_heads,
        t,
        p,
        head_dim: hd,
    } = d;
    let cols_all = p + t;
    assert!(
        q.len() == heads * t * hd
            && k.len() == kv_heads * cols_all * hd
            && v.len() == k.len()
            && kv_heads > 0
            && heads.is_multiple_of(kv_heads),
        "causal_attention: operands do not match {d:?}"
    );
    let n_rep = heads / kv_heads;
    let mut z = vec![0f32; heads * t * hd];
    let mut probs = keep_probs.then(|| vec![0f32; heads * t * cols_all]);
    let mut max = vec![0f32; heads * t];
    let mut sum = vec![0f32; heads * t];
    // One task per (head, row block), each owning its slices of the outputs.
    struct Task<'a> {
        h: usize,
        r0: usize,
        z: &'a mut [f32],
        probs: Option<&'a mut [f32]>,
        max: &'a mut [f32],
        sum: &'a mut [f32],
    }
    let mut tasks = Vec::with_capacity(heads * t.div_ceil(row_block));
    {
        let (mut zr, mut mr, mut sr) = (&mut z[..], &mut max[..], &mut sum[..]);
        let mut pr = probs.as_deref_mut();
        for h in 0..heads {
            for r0 in (0..t).step_by(row_block) {
                let nr = row_block.min(t - r0);
                let (zb, zrest) = std::mem::take(&mut zr).split_at_mut(nr * hd);
                let (mb, mrest) = std::mem::take(&mut mr).split_at_mut(nr);
                let (sb, srest) = std::mem::take(&mut sr).split_at_mut(nr);
                let pb = match pr.take() {
                    Some(all) => {
                        let (pb, prest) = all.split_at_mut(nr * cols_all);
                        pr = Some(prest);
                        Some(pb)
                    }
                    None => None,
                };
                (zr, mr, sr) = (zrest, mrest, srest);
                tasks.push(Task {
                    h,
                    r0,
                    z: zb,
                    probs: pb,
                    max: mb,
                    sum: sb,
                });
            }
        }
    }
    // OpenBLAS, one product per thread, when it is the backend (candle's gemm otherwise).
    let serial = match kernel {
        BlockKernel::Backend => super::blas::serial_gemm(),
        BlockKernel::GemmCrate => None,
    };
    let body = |task: Task| {
        let nr = task.max.len();
        let cols = p + task.r0 + nr;
        let kvh = task.h / n_rep;
        let qb = &q[(task.h * t + task.r0) * hd..][..nr * hd];
        let kb = &k[kvh * cols_all * hd..][..cols * hd];
        let vb = &v[kvh * cols_all * hd..][..cols * hd];
        let mut scratch = Vec::new();
        // Scores land where the probabilities go: the kept map (leading dimension P + T) or a
        // scratch block (leading dimension `cols`).
        let (sc, ld): (&mut [f32], usize) = match task.probs {
            Some(pb) => (pb, cols_all),
            None => {
                scratch.resize(nr * cols, 0f32);
                (&mut scratch[..], cols)
            }
        };
        match &serial {
            Some(g) => g.product((nr, cols, hd), scale, qb, hd, kb, hd, true, sc, ld),
            // SAFETY: every pointer/stride pair addresses inside its slice: `sc` holds `nr` rows of
            // `ld >= cols` floats, `qb` `nr` rows of `hd`, `kb` `cols` rows of `hd` read as its
            // transpose.
            None => unsafe {
                gemm::gemm(
                    nr,
                    cols,
                    hd,
                    sc.as_mut_ptr(),
                    1,
                    ld as isize,
                    false,
                    qb.as_ptr(),
                    1,
                    hd as isize,
                    kb.as_ptr(),
                    hd as isize,
                    1,
                    0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            },
        }
        for i in 0..nr {
            let row = &mut sc[i * ld..i * ld + cols];
            let valid = p + task.r0 + i + 1;
            let (live, dead) = row.split_at_mut(valid);
            let m = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s = exp_sub_sum(live, m);
            let inv = 1.0 / s;
            for x in live.iter_mut() {
                *x *= inv;
            }
            dead.fill(0.0);
            (task.max[i], task.sum[i]) = (m, s);
        }
        match &serial {
            Some(g) => g.product((nr, hd, cols), 1.0, sc, ld, vb, hd, false, task.z, hd),
            // SAFETY: `z` holds `nr` rows of `hd`; `sc` `nr` rows of `ld` (first `cols` read); `vb`
            // `cols` rows of `hd`.
            None => unsafe {
                gemm::gemm(
                    nr,
                    hd,
                    cols,
                    task.z.as_mut_ptr(),
                    1,
                    hd as isize,
                    false,
                    sc.as_ptr(),
                    1,
                    ld as isize,
                    vb.as_ptr(),
                    1,
                    hd as isize,
                    0f32,
                    1f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            },
        }
    };
    // Inside the one-thread pool (`stepper::on_compute_pool` puts candle's element-wise ops there
    // while OpenBLAS does the projections) the blocks would run one after another; the attention
    // runs between products, when OpenBLAS's threads are idle, so it takes every core of a pool of
    // its own once it is big enough to pay for waking it (a toy's few-token attention is not).
    let run = || tasks.into_par_iter().for_each(body);
    match parallel_pool().filter(|_| wants_own_pool(d, rayon::current_num_threads())) {
        Some(pool) => pool.install(run),
        None => run(),
    }
    CausalAttention { z, probs, max, sum }
}

/// Below this many multiply-adds, [`causal_attention`] stays on the calling thread's pool.
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// Whether [`causal_attention`] of sizes `d`, called from a pool of `pool_threads` threads, runs on
/// [`parallel_pool`]: only from a one-thread pool, and only when its multiply-adds (the scores and
/// the value product over the causal half and the prefix: `2 H T (P + T/2) hd`) reach
/// [`PARALLEL_MIN_MACS`]. SmolLM2 at T = 128 (9.4 million) does; a 4-head toy at T = 16 does not.
pub fn wants_own_pool(d: AttnDims, pool_threads: usize) -> bool {
    let macs = d.heads * d.t * (d.p + d.t.div_ceil(2)) * d.head_dim * 2;
    pool_threads == 1 && macs >= PARALLEL_MIN_MACS
}

/// Threads of [`parallel_pool`]: `RAYON_NUM_THREADS` when it is a positive number (as rayon reads
/// it), else the cores; at most one pool thread per core is any use, but the user's number is kept.
pub fn pool_threads(rayon_num_threads: Option<&str>, cores: usize) -> usize {
    rayon_num_threads
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(cores.max(1))
}

/// A pool with a thread per core (`RAYON_NUM_THREADS` respected) for [`causal_attention`] called
/// from a one-thread pool; `None` on a one-core machine or when the OS refused the threads.
pub(crate) fn parallel_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = pool_threads(std::env::var("RAYON_NUM_THREADS").ok().as_deref(), cores);
        (n > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("prefixscope-attn-{i}"))
                    .build()
                    .ok()
            })
            .flatten()
    })
    .as_ref()
}

/// `x <- exp(x - m)` over a row whose max is `m`, returning the row's sum: the softmax's exponentials,
/// which at long prompts cost more than the attention products (18.9 million per layer of SmolLM2 at
/// T = 2,048). libm's scalar `expf` does not vectorize; [`exp_f32`] gives its numbers (to 0.51 ulp)
/// and does, compiled for AVX-512 or AVX2 + FMA when the CPU has them.
pub fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked just above).
            return unsafe { exp_sub_sum_avx512(row, m) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { exp_sub_sum_avx2(row, m) };
        }
    }
    exp_sub_sum_body::<false>(row, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_sub_sum_avx512(row: &mut [f32], m: f32) -> f32 {
    exp_sub_sum_body::<true>(row, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(row: &mut [f32], m: f32) -> f32 {
    exp_sub_sum_body::<true>(row, m)
}

#[inline(always)]
fn exp_sub_sum_body<const FMA: bool>(row: &mut [f32], m: f32) -> f32 {
    for x in row.iter_mut() {
        *x = exp_f32::<FMA>(*x - m);
    }
    // Eight partial sums: a single running sum is a chain the compiler may not reorder.
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// `a * b + c`, fused where the caller is compiled with FMA (else `mul_add` would call libm).
#[inline(always)]
fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(x)` rounded to f32, computed in f64 so that it is as exact as libm's `expf` (within 0.51 ulp:
/// the polynomial's own error is below 0.1 ulp of f32) yet vectorizes: `x = n ln 2 + f` with
/// `|f| <= ln 2 / 2` (`ln 2` in two parts), `exp(f)` by its Taylor polynomial of degree 8, `2^n` put
/// in the exponent bits. Below -104 the f32 result is 0 (as `expf`'s), above 88.8 infinity; NaN
/// stays NaN.
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // 1.5 * 2^52: adding it rounds to the nearest integer, left in the low mantissa bits.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let x = (x as f64).clamp(-104.0, 88.8);
    let r = madd::<FMA>(x, LOG2E, MAGIC);
    let n = r - MAGIC;
    let ni = (r.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    let f = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut y = 1.0 / 40320.0;
    y = madd::<FMA>(y, f, 1.0 / 5040.0);
    y = madd::<FMA>(y, f, 1.0 / 720.0);
    y = madd::<FMA>(y, f, 1.0 / 120.0);
    y = madd::<FMA>(y, f, 1.0 / 24.0);
    y = madd::<FMA>(y, f, 1.0 / 6.0);
    y = madd::<FMA>(y, f, 0.5);
    y = madd::<FMA>(y, f, 1.0);
    y = madd::<FMA>(y, f, 1.0);
    (y * f64::from_bits((ni.wrapping_add(1023) << 52) as u64)) as f32
}

/// A tensor's values as a row-major `Vec<f32>` (a copy).
pub fn f32_values(x: &Tensor) -> candle_core::Result<Vec<f32>> {
    x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// `(z, probs, row max, row denominator)` of [`causal_attention_t`].
pub type AttnTensors = (Tensor, Option<Tensor>, Vec<f32>, Vec<f32>);

/// [`causal_attention`] on tensors: `q (H, T, hd)`, `k`, `v` `(KV, P + T, hd)`. Returns `z (H, T,
/// hd)`, the probabilities `(H, T, P + T)` when `keep_probs`, and each row's max and denominator.
pub fn causal_attention_t(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: usize,
    scale: f64,
    keep_probs: bool,
) -> candle_core::Result<AttnTensors> {
    let (heads, t, head_dim) = q.dims3()?;
    let (kv_heads, tk, _) = k.dims3()?;
    if tk != p + t || v.dims3()? != (kv_heads, tk, head_dim) || kv_heads == 0 {
        candle_core::bail!(
            "attention: keys {:?} and values {:?} for {p} prefix columns and queries {:?}",
            k.shape(),
            v.shape(),
            q.shape()
        );
    }
    let d = AttnDims {
        heads,
        kv_heads,
        t,
        p,
        head_dim,
    };
    let a = causal_attention(
        &f32_values(q)?,
        &f32_values(k)?,
        &f32_values(v)?,
        d,
        scale as f32,
        keep_probs,
    );
    let dev = q.device();
    let z = Tensor::from_vec(a.z, (heads, t, head_dim), dev)?;
    let probs = a
        .probs
        .map(|pr| Tensor::from_vec(pr, (heads, t, p + t), dev))
        .transpose()?;
    Ok((z, probs, a.max, a.sum))
}

/// Per-head outputs `z` `(H, n, head_dim)` -> `(n, H * head_dim)`, the heads side by side as the output
/// projection (`W_O`, `c_proj`) reads them.
pub fn concat_heads(z: &Tensor) -> candle_core::Result<Tensor> {
    let (h, n, hd) = z.dims3()?;
    z.transpose(0, 1)?.contiguous()?.reshape((n, h * hd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool rule on hand-counted sizes: `2 H T (P + ceil(T/2)) hd` multiply-adds against
    /// 2^22 = 4,194,304.
    #[test]
    fn the_attention_takes_its_own_pool_only_from_one_thread_and_when_big() {
        let d = |heads, t, p, head_dim| AttnDims {
            heads,
            kv_heads: 1,
            t,
            p,
            head_dim,
        };
        // SmolLM2 at T = 128: 2 * 9 * 128 * 64 * 64 = 9,437,184.
        assert!(wants_own_pool(d(9, 128, 0, 64), 1));
        assert!(!wants_own_pool(d(9, 128, 0, 64), 2));
        // A toy: 2 * 4 * 16 * 8 * 32 = 16,384.
        assert!(!wants_own_pool(d(4, 16, 0, 32), 1));
        // Exactly at the threshold: 2 * 1 * 64 * (0 + 32) * 1024 = 4,194,304 (ceil of T/2 = 32).
        assert!(wants_own_pool(d(1, 64, 0, 1024), 1));
        // One multiply-add short: T = 63 gives 2 * 63 * 32 * 1024 = 4,128,768.
        assert!(!wants_own_pool(d(1, 63, 0, 1024), 1));
        // The prefix counts in full: 2 * 1 * 2 * (2047 + 1) * 1024 = 8,388,608; without it 4,096.
        assert!(wants_own_pool(d(1, 2, 2047, 1024), 1));
        assert!(!wants_own_pool(d(1, 2, 0, 1024), 1));
        // Heads and head size multiply: half of the threshold each way is below it.
        assert!(!wants_own_pool(d(1, 64, 0, 512), 1));
        assert!(wants_own_pool(d(2, 64, 0, 512), 1));
        assert!(!wants_own_pool(d(2, 32, 16, 512), 1));
        assert!(wants_own_pool(d(4, 32, 16, 512), 1));
    }

    #[test]
    fn the_own_pool_has_a_thread_per_core_or_the_users_number() {
        assert_eq!(pool_threads(None, 2), 2);
        assert_eq!(pool_threads(None, 0), 1);
        assert_eq!(pool_threads(Some("3"), 2), 3);
        assert_eq!(pool_threads(Some(" 1 "), 2), 1);
        // Zero or garbage: rayon's default, the cores.
        assert_eq!(pool_threads(Some("0"), 2), 2);
        assert_eq!(pool_threads(Some("two"), 4), 4);
        // In this process: a pool exactly when more than one thread is wanted.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let want = pool_threads(std::env::var("RAYON_NUM_THREADS").ok().as_deref(), cores);
        assert_eq!(
            parallel_pool().map(|p| p.current_num_threads()),
            (want > 1).then_some(want)
        );
    }

    /// The vectorized exponential against f64's over the softmax's range, and its row sum.
    #[test]
    fn vectorized_exp_is_within_a_few_ulp_of_f64() {
        let xs: Vec<f32> = (0..20_001)
            .map(|i| -87.0 + i as f32 * 87.5 / 20_000.0)
            .collect();
        let mut row = xs.clone();
        let s = exp_sub_sum(&mut row, 0.0);
        let mut want_sum = 0f64;
        for (x, got) in xs.iter().zip(&row) {
            let want = (*x as f64).exp();
            want_sum += want;
            let rel = ((*got as f64 - want) / want).abs();
            // 0.51 ulp: below 6.1e-8 relative.
            assert!(
                rel < 6.1e-8,
                "exp({x}) = {got}, want {want} (relative {rel:e})"
            );
        }
        assert!(((s as f64 - want_sum) / want_sum).abs() < 1e-6);
        // Far below the range: 0, never a NaN or garbage from the exponent bits.
        let mut low = [-1e30f32, -200.0, f32::NEG_INFINITY];
        assert_eq!(exp_sub_sum(&mut low, 0.0), 0.0);
        assert_eq!(low, [0.0; 3]);
        // The scalar body (no FMA) agrees too.
        let mut a = [-3.7f32, -0.01, 0.0];
        exp_sub_sum_body::<false>(&mut a, 0.0);
        for (g, x) in a.iter().zip([-3.7f64, -0.01, 0.0]) {
            assert!(((*g as f64 - x.exp()) / x.exp()).abs() < 6.1e-8);
        }
    }

    /// The blocked attention against a naive f64 softmax over `[prefix | causal content]`, with
    /// grouped-query heads and more rows than one block.
    #[test]
    fn blocked_attention_equals_a_naive_f64_softmax() {
        let (heads, kv_heads, t, p, hd) = (4, 2, 70, 3, 5);
        let val = |i: usize, s: f32| (((i * 2654435761) % 1000) as f32 / 500.0 - 1.0) * s;
        let q: Vec<f32> = (0..heads * t * hd).map(|i| val(i, 2.0)).collect();
        let k: Vec<f32> = (0..kv_heads * (p + t) * hd)
            .map(|i| val(i + 7, 1.5))
            .collect();
        let v: Vec<f32> = (0..kv_heads * (p + t) * hd)
            .map(|i| val(i + 11, 1.0))
            .collect();
        let d = AttnDims {
            heads,
            kv_heads,
            t,
            p,
            head_dim: hd,
        };
        let scale = 0.4f32;
        // Both kernels (OpenBLAS when it is the backend, the gemm crate), in one block and in
        // several (the prefix columns and the causal part of each block's keys).
        for (kernel, rows) in [
            (BlockKernel::Backend, ROW_BLOCK),
            (BlockKernel::Backend, 16),
            (BlockKernel::GemmCrate, ROW_BLOCK),
            (BlockKernel::GemmCrate, 16),
        ] {
            let a = causal_attention_blocks(&q, &k, &v, d, scale, true, rows, kernel);
            check_against_f64(&a, &q, &k, &v, d, scale, &format!("{kernel:?} {rows} rows"));
        }
        // Without the map: the same head outputs.
        let a = causal_attention(&q, &k, &v, d, scale, true);
        let b = causal_attention(&q, &k, &v, d, scale, false);
        assert!(b.probs.is_none());
        assert_eq!(a.z, b.z);
    }

    fn check_against_f64(
        a: &CausalAttention,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d: AttnDims,
        scale: f32,
        what: &str,
    ) {
        let AttnDims {
            heads,
            kv_heads,
            t,
            p,
            head_dim: hd,
        } = d;
        let probs = a.probs.as_ref().unwrap();
        let cols = p + t;
        for h in 0..heads {
            let kh = h / (heads / kv_heads);
            for i in 0..t {
                let s: Vec<f64> = (0..p + i + 1)
                    .map(|j| {
                        (0..hd)
                            .map(|e| {
                                q[(h * t + i) * hd + e] as f64 * k[(kh * cols + j) * hd + e] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for j in 0..cols {
                    let want = if j < s.len() {
                        (s[j] - m).exp() / z
                    } else {
                        0.0
                    };
                    let got = probs[(h * t + i) * cols + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-6,
                        "{what}: h {h} row {i} col {j}: {got} vs {want}"
                    );
                }
                for e in 0..hd {
                    let want: f64 = (0..s.len())
                        .map(|j| (s[j] - m).exp() / z * v[(kh * cols + j) * hd + e] as f64)
                        .sum();
                    let got = a.z[(h * t + i) * hd + e] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{what}: z h {h} row {i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
