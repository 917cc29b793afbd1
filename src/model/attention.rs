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
    let mask = causal_mask(t, p, q.device())?;
    let scores = scores.broadcast_add(&mask)?;
    // The fused softmax has no backward pass; training (tracked tensors) takes the composed one.
    let probs = if scores.track_op() {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
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
