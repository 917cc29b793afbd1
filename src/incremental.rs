//! Recompute only what a prefix edit can change.
//!
//! A model that exposes its layers through [`Stepper`] is run one layer at a time, and the evaluator
//! keeps the residual stream entering every layer and each layer's content queries/keys/values. An edit
//! of the paper's prefix (or a key/value prefix) at layer `l` cannot change anything that enters layers
//! `0..=l`, so viewing layer `l` after such an edit costs one small attention over cached content
//! keys; a soft-prompt edit viewed at layer `L` recomputes layers `0..=L` and nothing above. The
//! pretrained run is computed once per prompt. [`full_run`] uses the same pieces, so the incremental
//! and the full results come from one code path.

use crate::capture::{self, Capture};
use crate::error::{Error, Result};
use crate::model::attention::{causal_softmax, content_rows, repeat_kv};
use crate::model::{LayerRun, LayerSel, Run, Transformer};
use crate::prefix::{Prefix, PrefixKind};
use candle_core::{Tensor, D};

/// One layer's content queries (rotated), keys (rotated) and values: `(H, T, hd)`, `(KV, T, hd)`.
#[derive(Debug, Clone)]
pub struct ContentKv {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub scale: f64,
}

impl ContentKv {
    pub fn new(q: Tensor, k: Tensor, v: Tensor, scale: f64) -> Result<Self> {
        Ok(ContentKv { q, k, v, scale })
    }
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
pub fn attend_cached(
    c: &ContentKv,
    extra: Option<&(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let h = c.q.dim(0)?;
    let n_rep = h / c.k.dim(0)?;
    let content_scores = (c.q.matmul(&repeat_kv(&c.k, n_rep)?.t()?)? * c.scale)?;
    let p = extra.map_or(Ok(0), |(pk, _)| pk.dim(1))?;
    let (scores, values) = match extra {
        Some((pk, pv)) => {
            let prefix_scores = (c.q.matmul(&repeat_kv(pk, n_rep)?.t()?)? * c.scale)?;
            (
                Tensor::cat(&[&prefix_scores, &content_scores], D::Minus1)?,
                Tensor::cat(&[pv, &c.v], 1)?,
            )
        }
        None => (content_scores, c.v.clone()),
    };
    let probs = causal_softmax(&scores, p)?;
    let z = probs.matmul(&repeat_kv(&values, n_rep)?.contiguous()?)?;
    Ok((z, probs, values))
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

/// Caches for one model and one prompt.
pub struct Evaluator {
    ids: Vec<u32>,
    /// Pretrained runs, all layers, keyed by the placeholder count they were made for.
    pretrained: Vec<(usize, Run)>,
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
                let (z, probs, values) = attend_cached(c, extra.as_ref())?;
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
            }
        }
        self.valid_in = self.valid_in.max(top + 1);
        let pre = self.pretrained_run(model, p)?;
        let with = prefix.map(|_| Run {
            p,
            n: self.ids.len(),
            layers: runs,
            logits_last: pre.logits_last.clone(),
        });
        finish(&self.ids, &pre, with.as_ref(), layers, None)
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
