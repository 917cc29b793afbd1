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

/// Per-head outputs `z` `(H, n, head_dim)` -> `(n, H * head_dim)`, the heads side by side as the output
/// projection (`W_O`, `c_proj`) reads them.
pub fn concat_heads(z: &Tensor) -> candle_core::Result<Tensor> {
    let (h, n, hd) = z.dims3()?;
    z.transpose(0, 1)?.contiguous()?.reshape((n, h * hd))
}
