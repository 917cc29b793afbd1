//! Recompute only what a prefix edit can change.
//!
//! A model that exposes its layers through [`Stepper`] is run one layer at a time, and the evaluator
//! keeps the residual stream entering every layer and each layer's content queries/keys/values. An edit
//! of the paper's prefix (or a key/value prefix) at layer `l` cannot change anything that enters layers
//! `0..=l`, so viewing layer `l` after such an edit costs one small attention over cached content
//! keys; a soft-prompt edit viewed at layer `L` recomputes layers `0..=L` and nothing above. The
//! pretrained run is computed once per prompt. [`full_run`] uses the same pieces, so the incremental
//! and the full results come from one code path.

use crate::capture::{self, Capture, PretrainedViews};
use crate::error::{Error, Result};
use crate::model::attention::{causal_softmax_stats, content_rows, repeat_kv};
use crate::model::{LayerRun, LayerSel, Run, Transformer};
use crate::prefix::{Prefix, PrefixKind};
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
/// attention over the content alone (the pretrained pattern of this layer's inputs) and its per-row
/// log-sum-exp.
#[derive(Debug, Clone)]
struct ContentAttn {
    /// `(H, T, T)` row-major, causal.
    renorm: Vec<f32>,
    /// `(H * T)`: each content row's max score and its softmax denominator relative to that max,
    /// kept apart (and in f64) so that combining with prefix scores loses no precision when
    /// scores are large.
    max: Vec<f64>,
    sum: Vec<f64>,
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

    fn content_attn(&self) -> Result<&ContentAttn> {
        if let Some(c) = self.content_attn.get() {
            return Ok(c);
        }
        let h = self.q.dim(0)?;
        let n_rep = h / self.k.dim(0)?;
        let scores = (self.q.matmul(&repeat_kv(&self.k, n_rep)?.t()?)? * self.scale)?;
        let (renorm, max, sum) = causal_softmax_stats(&scores, 0)?;
        let c = ContentAttn {
            renorm,
            max: max.into_iter().map(f64::from).collect(),
            sum: sum.into_iter().map(f64::from).collect(),
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

/// Layer-by-layer access to a model, in the order a forward pass uses it.
pub trait Stepper: Send + Sync {
    /// The residual stream entering layer 0 and the position of its first row.
    fn embed_input(&self, ids: &[u32], prefix: Option<&Prefix>) -> Result<(Tensor, usize)>;
    /// Layer `l`'s content queries, keys and values for input `x` whose first row is at `pos0`.
    fn layer_content(&self, l: usize, x: &Tensor, pos0: usize) -> Result<ContentKv>;
    /// Layer `l`'s prefix keys and values `(KV, P, hd)` (none for a soft prompt: it is in the stream).
    fn prefix_kv(&self, l: usize, prefix: Option<&Prefix>) -> Result<Option<(Tensor, Tensor)>>;
    /// Output projection, residual and MLP of layer `l`, given its attention output `z (H, T, hd)`.
    fn layer_finish(&self, l: usize, x: &Tensor, z: &Tensor) -> Result<Tensor>;
    /// Logits at the final position of the stream after the last layer.
    fn logits_last(&self, x: &Tensor) -> Result<Tensor>;
    fn n_layers(&self) -> usize;
}

/// Attention of the cached content queries over `[prefix | content]` keys.
/// Returns `(z (H, T, hd), probs (H, T, P + T), values (KV, P + T, hd))`.
///
/// Both the full and the incremental path come through here, so they agree exactly: the content
/// part of the softmax is computed once per layer input ([`ContentKv`] keeps it), and a prefix only
/// adds its `T x P` scores (see [`attend_split`]).
pub fn attend_cached(
    c: &ContentKv,
    extra: Option<&(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    match extra {
        Some((pk, pv)) => attend_split(c, pk, pv),
        None => {
            let ca = c.content_attn()?;
            let (h, t, _) = c.q.dims3()?;
            let n_rep = h / c.k.dim(0)?;
            let probs = Tensor::from_slice(&ca.renorm, (h, t, t), c.q.device())?;
            let z = probs.matmul(&repeat_kv(&c.v, n_rep)?.contiguous()?)?;
            Ok((z, probs, c.v.clone()))
        }
    }
}

/// One full forward pass through a [`Stepper`].
pub fn full_run(
    m: &dyn Stepper,
    ids: &[u32],
    prefix: Option<&Prefix>,
    sel: &LayerSel,
) -> Result<Run> {
    let n = ids.len();
    let (mut x, pos0) = m.embed_input(ids, prefix)?;
    let mut layers = Vec::new();
    for l in 0..m.n_layers() {
        let c = m.layer_content(l, &x, pos0)?;
        let extra = m.prefix_kv(l, prefix)?;
        let (z, probs, values) = attend_cached(&c, extra.as_ref())?;
        if sel.contains(l) {
            layers.push(LayerRun {
                layer: l,
                pattern: content_rows(&probs, n)?,
                values,
                z: content_rows(&z, n)?,
            });
        }
        x = m.layer_finish(l, &x, &z)?;
    }
    Ok(Run {
        p: prefix.map_or(0, |p| p.len()),
        n,
        layers,
        logits_last: m.logits_last(&x)?,
    })
}

/// What changed since the last update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Anything may have changed (new prefix kind or length, loaded file, ...).
    All,
    /// Only the soft prompt's values.
    SoftPrompt,
    /// Only layer `l` of a paper-form or key/value prefix.
    Layer(usize),
}

impl Edit {
    /// Which layers can differ between two prefixes of the same kind and length.
    pub fn between(old: Option<&Prefix>, new: Option<&Prefix>, n_layers: usize) -> Edit {
        let unchanged = Edit::Layer(n_layers.saturating_sub(1));
        let first_diff = |a: &crate::arrays::Array, b: &crate::arrays::Array| -> Option<usize> {
            let per = a.data.len() / a.shape.first().copied().unwrap_or(1).max(1);
            a.data
                .iter()
                .zip(&b.data)
                .position(|(x, y)| x != y)
                .map(|i| i / per.max(1))
        };
        match (old, new) {
            (Some(a), Some(b)) if a.kind() == b.kind() && a.len() == b.len() => match (a, b) {
                (Prefix::SoftPrompt(x), Prefix::SoftPrompt(y)) => {
                    if x == y {
                        unchanged
                    } else {
                        Edit::SoftPrompt
                    }
                }
                (Prefix::Hidden(x), Prefix::Hidden(y)) => {
                    first_diff(x, y).map_or(unchanged, Edit::Layer)
                }
                (
                    Prefix::KeyValue {
                        keys: k1,
                        values: v1,
                    },
                    Prefix::KeyValue {
                        keys: k2,
                        values: v2,
                    },
                ) => match (first_diff(k1, k2), first_diff(v1, v2)) {
                    (None, None) => unchanged,
                    (a, b) => Edit::Layer(a.unwrap_or(usize::MAX).min(b.unwrap_or(usize::MAX))),
                },
                _ => Edit::All,
            },
            (None, None) => unchanged,
            _ => Edit::All,
        }
    }
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

/// Caches for one model and one prompt.
pub struct Evaluator {
    ids: Vec<u32>,
    /// Pretrained runs, all layers, keyed by the placeholder count they were made for.
    pretrained: Vec<(usize, Run)>,
    /// The pretrained side of the views, per (placeholder count, layer), made on first view.
    pretrained_views: Vec<(usize, PretrainedViews)>,
    logits_pretrained: Vec<(usize, Vec<f32>)>,
    prefix: Option<Prefix>,
    inputs: Vec<Option<Tensor>>,
    content: Vec<Option<ContentKv>>,
    pos0: usize,
    /// Layers `0..valid_in` have inputs (and content) valid for the current prefix.
    valid_in: usize,
}

impl Evaluator {
    pub fn new(ids: &[u32]) -> Self {
        Evaluator {
            ids: ids.to_vec(),
            pretrained: Vec::new(),
            pretrained_views: Vec::new(),
            logits_pretrained: Vec::new(),
            prefix: None,
            inputs: Vec::new(),
            content: Vec::new(),
            pos0: 0,
            valid_in: 0,
        }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn pretrained_run(&mut self, model: &dyn Transformer, p: usize) -> Result<Run> {
        // RoPE models ignore p; learned-position models need one run per placeholder count.
        let key = if model.info().max_positions.is_some() {
            p
        } else {
            0
        };
        if let Some((_, run)) = self.pretrained.iter().find(|(k, _)| *k == key) {
            return Ok(run.clone());
        }
        let run = model.pretrained(&self.ids, key, &LayerSel::All)?;
        self.pretrained.push((key, run.clone()));
        Ok(run)
    }

    /// The views of `layers` for `prefix` after `edit`. Only the layers needed are recomputed.
    pub fn update(
        &mut self,
        model: &dyn Transformer,
        prefix: Option<&Prefix>,
        edit: Edit,
        layers: &[usize],
    ) -> Result<Capture> {
        let positions = self.ids.len() + prefix.map_or(0, |p| p.len());
        on_compute_pool(model, positions, || {
            self.update_here(model, prefix, edit, layers)
        })
    }

    fn update_here(
        &mut self,
        model: &dyn Transformer,
        prefix: Option<&Prefix>,
        edit: Edit,
        layers: &[usize],
    ) -> Result<Capture> {
        capture::check_ids(model, &self.ids, prefix.map_or(0, |p| p.len()))?;
        if let Some(pf) = prefix {
            pf.check(model.info(), std::path::Path::new("prefix"))?;
        }
        let p = prefix.map_or(0, |p| p.len());
        let Some(stepper) = model.stepper() else {
            // No layer access: full recompute of the prefixed run, pretrained still cached.
            let pre = self.pretrained_run(model, p)?;
            let with = match prefix {
                Some(pf) => {
                    Some(model.forward(&self.ids, Some(pf), &LayerSel::Only(layers.to_vec()))?)
                }
                None => None,
            };
            return finish(
                &self.ids,
                &pre,
                with.as_ref(),
                layers,
                with.as_ref().map(|w| w.logits_last.clone()),
            );
        };
        let same_shape = match (&self.prefix, prefix) {
            (Some(a), Some(b)) => a.kind() == b.kind() && a.len() == b.len(),
            _ => false,
        };
        let edit = if same_shape { edit } else { Edit::All };
        match edit {
            Edit::All | Edit::SoftPrompt => self.valid_in = 0,
            Edit::Layer(l) => {
                if prefix.map(|p| p.kind()) == Some(PrefixKind::SoftPrompt) {
                    self.valid_in = 0;
                } else {
                    self.valid_in = self.valid_in.min(l + 1);
                }
            }
        }
        self.prefix = prefix.cloned();
        let n_layers = stepper.n_layers();
        if self.inputs.len() != n_layers {
            self.inputs = vec![None; n_layers];
            self.content = vec![None; n_layers];
            self.valid_in = 0;
        }
        let top = layers.iter().copied().max().unwrap_or(0).min(n_layers - 1);
        let mut z_prev: Option<Tensor> = None;
        let mut runs = Vec::new();
        for l in 0..=top {
            if l >= self.valid_in {
                let x = if l == 0 {
                    let (x, pos0) = stepper.embed_input(&self.ids, prefix)?;
                    self.pos0 = pos0;
                    x
                } else {
                    let prev = self.inputs[l - 1]
                        .as_ref()
                        .ok_or(Error::Internal("incremental cache out of order"))?;
                    let z = z_prev
                        .as_ref()
                        .ok_or(Error::Internal("incremental cache out of order"))?;
                    stepper.layer_finish(l - 1, prev, z)?
                };
                self.content[l] = Some(stepper.layer_content(l, &x, self.pos0)?);
                self.inputs[l] = Some(x);
            }
            let viewed = layers.contains(&l);
            if viewed || (l < top && l + 1 >= self.valid_in) {
                let c = self.content[l]
                    .as_ref()
                    .ok_or(Error::Internal("incremental cache out of order"))?;
                let extra = stepper.prefix_kv(l, prefix)?;
                // A layer viewed again after an edit reuses its content attention (the paper's identity).
                let (z, probs, values) = match &extra {
                    Some((pk, pv)) if viewed => attend_split(c, pk, pv)?,
                    _ => attend_cached(c, extra.as_ref())?,
                };
                if viewed {
                    let n = self.ids.len();
                    runs.push(LayerRun {
                        layer: l,
                        pattern: content_rows(&probs, n)?,
                        values,
                        z: content_rows(&z, n)?,
                    });
                }
                z_prev = Some(z);
                if !viewed {
                    // Keep the T x T content attention only for layers on screen (memory at large N).
                    if let Some(c) = self.content[l].as_mut() {
                        c.content_attn.take();
                    }
                }
            }
        }
        self.valid_in = self.valid_in.max(top + 1);
        let pre = self.pretrained_run(model, p)?;
        let key = pre.p;
        let mut views = Vec::new();
        for &l in layers {
            let cached = self
                .pretrained_views
                .iter()
                .find(|(k, v)| *k == key && v.layer == l);
            let pv = match cached {
                Some((_, v)) => v.clone(),
                None => {
                    let lp = pre
                        .layers
                        .iter()
                        .find(|x| x.layer == l)
                        .ok_or(Error::Internal("pretrained layer missing"))?;
                    let v = capture::pretrained_views(lp, pre.p)?;
                    self.pretrained_views.push((key, v.clone()));
                    v
                }
            };
            let with = runs.iter().find(|r| r.layer == l);
            views.push(capture::layer_views(
                pv,
                if prefix.is_some() { with } else { None },
                p,
            )?);
        }
        let logits_pretrained = match self.logits_pretrained.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => v.clone(),
            None => {
                let v = pre.logits_last.to_vec1::<f32>()?;
                self.logits_pretrained.push((key, v.clone()));
                v
            }
        };
        Ok(Capture {
            token_ids: self.ids.clone(),
            p,
            layers: views,
            logits_last_pretrained: logits_pretrained,
            logits_last_prefixed: None,
        })
    }
}

/// Views for `layers` from a pretrained run (all layers) and a prefixed run (at least `layers`).
fn finish(
    ids: &[u32],
    pre: &Run,
    with: Option<&Run>,
    layers: &[usize],
    logits: Option<Tensor>,
) -> Result<Capture> {
    let pre_sel = Run {
        p: pre.p,
        n: pre.n,
        layers: pre
            .layers
            .iter()
            .filter(|l| layers.contains(&l.layer))
            .cloned()
            .collect(),
        logits_last: pre.logits_last.clone(),
    };
    let mut cap = capture::build(ids, &pre_sel, with)?;
    cap.logits_last_prefixed = logits.map(|t| t.to_vec1::<f32>()).transpose()?;
    Ok(cap)
}
