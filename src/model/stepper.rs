//! Layer-by-layer access to a model ([`Stepper`]) and one forward pass through it ([`full_run`]):
//! the pieces the whole-run path and the incremental evaluator (`crate::incremental`) share, so the
//! two can never compute attention differently. It lives with the models because every family
//! implements [`Stepper`]; the evaluator sits above it and caches its results.

use super::attention::{attend, causal_attention_t, content_rows, repeat_kv};
use super::{LayerRun, LayerSel, PrefixTensors, Run, Transformer};
use crate::error::Result;
use crate::prefix::Prefix;
use candle_core::Tensor;

/// One layer's content queries (rotated), keys (rotated) and values: `(H, T, hd)`, `(KV, T, hd)`.
#[derive(Debug, Clone)]
pub struct ContentKv {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub scale: f64,
    /// The content-only attention of these queries, made on first use (see [`attend_split`]).
    content_attn: std::sync::OnceLock<ContentAttn>,
}

/// What the paper's identity needs from a layer whose inputs a prefix edit cannot change: the
/// attention over the content alone (the pretrained pattern of this layer's inputs), its per-row
/// log-sum-exp, and the head outputs it gives.
#[derive(Debug, Clone)]
struct ContentAttn {
    /// `(H, T, T)` row-major, causal.
    renorm: Vec<f32>,
    /// `(H * T)`: each content row's max score and its softmax denominator relative to that max,
    /// kept apart (and in f64) so that combining with prefix scores loses no precision when
    /// scores are large.
    max: Vec<f64>,
    sum: Vec<f64>,
    /// `(H, T, hd)`: `renorm @ values`.
    z: Tensor,
}

impl ContentKv {
    pub fn new(q: Tensor, k: Tensor, v: Tensor, scale: f64) -> Result<Self> {
        Ok(ContentKv {
            q,
            k,
            v,
            scale,
            content_attn: std::sync::OnceLock::new(),
        })
    }

    /// Drop the cached `T x T` content attention (kept only for layers on screen: memory at large N).
    pub fn forget_content_attn(&mut self) {
        self.content_attn.take();
    }

    fn content_attn(&self) -> Result<&ContentAttn> {
        if let Some(c) = self.content_attn.get() {
            return Ok(c);
        }
        let (z, probs, max, sum) =
            causal_attention_t(&self.q, &self.k, &self.v, 0, self.scale, true)?;
        let renorm = probs
            .ok_or(crate::error::Error::Internal(
                "attention map asked for, not made",
            ))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = ContentAttn {
            renorm,
            max: max.into_iter().map(f64::from).collect(),
            sum: sum.into_iter().map(f64::from).collect(),
            z,
        };
        Ok(self.content_attn.get_or_init(|| c))
    }
}

/// Attention over `[prefix | content]` from the cached content attention, by the paper's identity:
/// with `a_i` the prefix mass, the content part is `(1 - a_i)` times the content-only pattern. A
/// prefix edit then needs only the `T x P` prefix scores, not new `T x T` scores and softmax. The head
/// output is taken as `probs @ values` like the full path, so that both agree to rounding of the
/// probabilities (the property test checks 1e-6).
pub fn attend_split(c: &ContentKv, pk: &Tensor, pv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let ca = c.content_attn()?;
    let (h, t, _) = c.q.dims3()?;
    let p = pk.dim(1)?;
    let n_rep = h / c.k.dim(0)?;
    let sp = (c.q.matmul(&repeat_kv(pk, n_rep)?.t()?)? * c.scale)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut probs = vec![0f32; h * t * (p + t)];
    for r in 0..h * t {
        let s = &sp[r * p..(r + 1) * p];
        let m = s.iter().map(|&x| x as f64).fold(ca.max[r], f64::max);
        let content = (ca.max[r] - m).exp() * ca.sum[r];
        let z: f64 = content + s.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>();
        let row = &mut probs[r * (p + t)..(r + 1) * (p + t)];
        for k in 0..p {
            row[k] = ((s[k] as f64 - m).exp() / z) as f32;
        }
        let frac = content / z; // 1 - a_i
        for (dst, &src) in row[p..].iter_mut().zip(&ca.renorm[r * t..(r + 1) * t]) {
            *dst = (frac * src as f64) as f32;
        }
    }
    let probs = Tensor::from_vec(probs, (h, t, p + t), c.q.device())?;
    let values = Tensor::cat(&[pv, &c.v], 1)?;
    let z = probs.matmul(&repeat_kv(&values, n_rep)?.contiguous()?)?;
    Ok((z, probs, values))
}

/// The model's layer access when its pretrained run is the content alone at positions `0..n` (RoPE
/// models: scores depend only on `i - j`, so this is what [`Transformer::pretrained`] runs), so that
/// the pretrained run can be stepped through layer by layer beside the prefixed one. `None` for a
/// model without layer access and for a learned-position model, whose pretrained run keeps the
/// content at `p..p+n` behind placeholders.
pub fn content_alone_pretrained(model: &dyn Transformer) -> Option<&dyn Stepper> {
    model
        .stepper()
        .filter(|_| model.info().max_positions.is_none())
}

/// Layer-by-layer access to a model, in the order a forward pass uses it.
pub trait Stepper: Send + Sync {
    /// The residual stream entering layer 0 for content `ids` behind a prefix of `p` positions, and
    /// the position of its first row; `soft` `(P, d)` is a soft prompt (in the stream itself). The
    /// one body behind [`Stepper::embed_input`] and [`Stepper::embed_input_t`].
    fn embed_with(&self, ids: &[u32], soft: Option<&Tensor>, p: usize) -> Result<(Tensor, usize)>;
    /// The residual stream entering layer 0 and the position of its first row.
    fn embed_input(&self, ids: &[u32], prefix: Option<&Prefix>) -> Result<(Tensor, usize)> {
        let p = prefix.map_or(0, |x| x.len());
        match prefix {
            Some(Prefix::SoftPrompt(a)) => self.embed_with(ids, Some(&a.to_tensor()?), p),
            _ => self.embed_with(ids, None, p),
        }
    }
    /// Layer `l`'s content queries, keys and values for input `x` whose first row is at `pos0`.
    fn layer_content(&self, l: usize, x: &Tensor, pos0: usize) -> Result<ContentKv>;
    /// Layer `l`'s prefix keys and values `(KV, P, hd)` (none for a soft prompt: it is in the stream).
    fn prefix_kv(&self, l: usize, prefix: Option<&Prefix>) -> Result<Option<(Tensor, Tensor)>>;
    /// Output projection, residual and MLP of layer `l`, given its attention output `z (H, T, hd)`.
    fn layer_finish(&self, l: usize, x: &Tensor, z: &Tensor) -> Result<Tensor>;
    /// Logits at the final position of the stream after the last layer.
    fn logits_last(&self, x: &Tensor) -> Result<Tensor>;
    /// [`Stepper::embed_input`] for a prefix held as tensors (the tuned prefix: `Var`s whose
    /// gradients flow back through the stream).
    fn embed_input_t(
        &self,
        ids: &[u32],
        prefix: Option<&PrefixTensors>,
    ) -> Result<(Tensor, usize)> {
        let p = prefix.map(PrefixTensors::len).transpose()?.unwrap_or(0);
        match prefix {
            Some(PrefixTensors::SoftPrompt(s)) => self.embed_with(ids, Some(s), p),
            _ => self.embed_with(ids, None, p),
        }
    }
    /// [`Stepper::prefix_kv`] for a prefix held as tensors.
    fn prefix_kv_t(
        &self,
        l: usize,
        prefix: Option<&PrefixTensors>,
    ) -> Result<Option<(Tensor, Tensor)>>;
    /// Logits `(rows, vocab)` of the given rows `(rows, d)` of the final stream (final norm, head).
    fn logits_rows(&self, x: &Tensor) -> Result<Tensor>;
    fn n_layers(&self) -> usize;
}

/// Attention of the cached content queries over `[prefix | content]` keys: one softmax over the
/// concatenated scores `q [pk | k]^T * scale` (prefix columns open, content columns causal), as the
/// reference implementations compute it (HF `past_key_values`, `docs/conventions.md` rules 4, 6, 7).
/// Returns `(z (H, T, hd), probs (H, T, P + T), values (KV, P + T, hd))`.
///
/// Without a prefix the content-only softmax is the same as the split path's: reused when that one
/// has made it already.
pub fn attend_cached(
    c: &ContentKv,
    extra: Option<&(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (z, probs, values) = attend_kept(c, extra, true)?;
    let probs = probs.ok_or(crate::error::Error::Internal(
        "attention map asked for, not made",
    ))?;
    Ok((z, probs, values))
}

/// [`attend_cached`], with the probabilities made only when `keep_probs` (a layer nobody looks at
/// needs only its head outputs: no `T x T` map is made or kept, and without a prefix the content
/// attention is not cached either, unless it already was).
pub fn attend_kept(
    c: &ContentKv,
    extra: Option<&(Tensor, Tensor)>,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    // Tuning (a tracked stream: the content's queries, or a prefix held as `Var`s) and float64
    // checks take the differentiable softmax: the blocked kernel reads f32 slices and would cut the
    // gradient.
    let tracked = c.q.track_op()
        || c.q.dtype() != candle_core::DType::F32
        || extra.is_some_and(|(pk, pv)| pk.track_op() || pv.track_op());
    if tracked {
        let (keys, values, p) = match extra {
            Some((pk, pv)) => (
                Tensor::cat(&[pk, &c.k], 1)?,
                Tensor::cat(&[pv, &c.v], 1)?,
                pk.dim(1)?,
            ),
            None => (c.k.clone(), c.v.clone(), 0),
        };
        let (z, probs) = attend(&c.q, &keys, &values, p, c.scale)?;
        return Ok((z, Some(probs), values));
    }
    match extra {
        Some((pk, pv)) => {
            let p = pk.dim(1)?;
            let keys = Tensor::cat(&[pk, &c.k], 1)?;
            let values = Tensor::cat(&[pv, &c.v], 1)?;
            let (z, probs, _, _) =
                causal_attention_t(&c.q, &keys, &values, p, c.scale, keep_probs)?;
            Ok((z, probs, values))
        }
        None => match c.content_attn.get() {
            Some(ca) => {
                let (h, t, _) = c.q.dims3()?;
                let probs = keep_probs
                    .then(|| Tensor::from_slice(&ca.renorm, (h, t, t), c.q.device()))
                    .transpose()?;
                Ok((ca.z.clone(), probs, c.v.clone()))
            }
            // Not cached here: only the split path (a prefix edit) reads the content attention
            // again, and it makes it on first use.
            None => {
                let (z, probs, _, _) =
                    causal_attention_t(&c.q, &c.k, &c.v, 0, c.scale, keep_probs)?;
                Ok((z, probs, c.v.clone()))
            }
        },
    }
}

/// A forward pass through a [`Stepper`] taken one layer at a time: [`full_run`] is all of it, and
/// `crate::capture::capture_each` walks the pretrained and the prefixed runs side by side, so that a
/// long prompt holds one layer's maps of each at a time.
pub struct Walk<'a> {
    m: &'a dyn Stepper,
    prefix: Option<&'a Prefix>,
    /// The residual stream entering the next layer, `(P + n, d)` (the prefix rows only for a soft
    /// prompt).
    x: Tensor,
    pos0: usize,
    /// Content tokens.
    n: usize,
    next: usize,
}

impl<'a> Walk<'a> {
    /// The stream of content `ids` behind `prefix`, entering layer 0.
    pub fn new(m: &'a dyn Stepper, ids: &[u32], prefix: Option<&'a Prefix>) -> Result<Self> {
        let (x, pos0) = m.embed_input(ids, prefix)?;
        Ok(Walk {
            m,
            prefix,
            x,
            pos0,
            n: ids.len(),
            next: 0,
        })
    }

    /// The layer [`Walk::step`] runs next (the number of layers once all have run).
    pub fn next_layer(&self) -> usize {
        self.next
    }

    /// Run the next layer and return its content rows' attention (its map, values and head outputs)
    /// when `keep`; a layer not kept makes no `T x (P + T)` map at all. `None` also once every layer
    /// has run.
    pub fn step(&mut self, keep: bool) -> Result<Option<LayerRun>> {
        let l = self.next;
        if l >= self.m.n_layers() {
            return Ok(None);
        }
        let c = self.m.layer_content(l, &self.x, self.pos0)?;
        let extra = self.m.prefix_kv(l, self.prefix)?;
        let (z, probs, values) =
            super::profile::span("attention", || attend_kept(&c, extra.as_ref(), keep))?;
        drop(c);
        let kept = match probs {
            Some(probs) => {
                let n = self.n;
                let (pattern, zc) = super::profile::span("copies of kept maps", || {
                    Ok::<_, candle_core::Error>((content_rows(&probs, n)?, content_rows(&z, n)?))
                })?;
                Some(LayerRun {
                    layer: l,
                    pattern,
                    values,
                    z: zc,
                })
            }
            None => None,
        };
        self.x = self.m.layer_finish(l, &self.x, &z)?;
        self.next = l + 1;
        Ok(kept)
    }

    /// Logits at the final position, once every layer has run.
    pub fn logits_last(&self) -> Result<Tensor> {
        if self.next < self.m.n_layers() {
            return Err(crate::error::Error::Internal(
                "logits asked for before the last layer ran",
            ));
        }
        self.m.logits_last(&self.x)
    }
}

/// One full forward pass through a [`Stepper`].
pub fn full_run(
    m: &dyn Stepper,
    ids: &[u32],
    prefix: Option<&Prefix>,
    sel: &LayerSel,
) -> Result<Run> {
    let mut walk = Walk::new(m, ids, prefix)?;
    let mut layers = Vec::new();
    while walk.next_layer() < m.n_layers() {
        let keep = sel.contains(walk.next_layer());
        layers.extend(walk.step(keep)?);
    }
    Ok(Run {
        p: prefix.map_or(0, |p| p.len()),
        n: ids.len(),
        layers,
        logits_last: walk.logits_last()?,
    })
}

/// The differentiable forward pass behind a prefix held as tensors (its `Var`s are what tuning
/// trains): the layers [`full_run`] runs, through the same [`Stepper`] methods, returning the logits
/// `(rows, vocab)` of the last `rows` positions of the stream. Nothing is captured, and the content
/// attention is not cached (a tracked stream changes with every step).
pub fn tail_logits(
    m: &dyn Stepper,
    ids: &[u32],
    prefix: Option<&PrefixTensors>,
    rows: usize,
) -> Result<Tensor> {
    let (mut x, pos0) = m.embed_input_t(ids, prefix)?;
    for l in 0..m.n_layers() {
        let c = m.layer_content(l, &x, pos0)?;
        let extra = m.prefix_kv_t(l, prefix)?;
        let (z, _, _) = attend_cached(&c, extra.as_ref())?;
        x = m.layer_finish(l, &x, &z)?;
    }
    let t = x.dim(0)?;
    if rows == 0 || rows > t {
        return Err(crate::error::Error::input(
            "logit rows",
            format!("1..={t} (the stream's length)"),
            rows.to_string(),
        ));
    }
    m.logits_rows(&x.narrow(0, t - rows, rows)?)
}

/// Below this many multiply-adds per pass (parameters x positions), candle's ops run on one thread.
const SERIAL_MAX_MACS: f64 = 1e8;

/// Runs `f`, a pass of `model` over `positions` tokens, with candle's ops on one thread when that is
/// faster on these 2-core machines:
/// - a small model's pass is a few hundred tiny ops, and waking the pool for each costs more than the
///   op (a 4-layer toy update: 1.3 ms on 2 threads, 0.9 ms on one);
/// - when OpenBLAS does the projections, its threads do the parallel part, and candle's competing
///   with them for the cores slows both (SmolLM2 at N = 128: 0.22-0.23 s, 0.21-0.23 s with candle on
///   one thread) until the N x N attention is big enough to be worth splitting (N = 512: 1.07 s on
///   every core, 1.30 s with candle on one).
///
/// Otherwise candle keeps every core.
pub fn on_compute_pool<R: Send>(
    model: &dyn Transformer,
    positions: usize,
    f: impl FnOnce() -> R + Send,
) -> R {
    let work = model.info().n_params as f64 * positions as f64;
    let serial = work < SERIAL_MAX_MACS || (model.blas_projections() && positions <= 256);
    match serial_pool().filter(|_| serial) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// A one-thread rayon pool: inside it candle's parallel loops run inline.
/// `None` when the OS refused the thread (updates then run where they are called).
fn serial_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "prefixscope-serial".into())
            .build()
            .ok()
    })
    .as_ref()
}
