//! Recompute only what a prefix edit can change.
//!
//! A model that exposes its layers through [`Stepper`] is run one layer at a time, and the evaluator
//! keeps the residual stream entering every layer and each layer's content queries/keys/values. An edit
//! of the paper's prefix (or a key/value prefix) at layer `l` cannot change anything that enters layers
//! `0..=l`, so viewing layer `l` after such an edit costs one small attention over cached content
//! keys; a soft-prompt edit viewed at layer `L` recomputes layers `0..=L` and nothing above. The
//! pretrained run is computed once per prompt.
//!
//! Two ways to attend over `[prefix | content]`, kept apart on purpose:
//! - [`attend_cached`] (the full forward, [`full_run`], and every layer whose output feeds a
//!   recomputed layer): a genuine softmax over the concatenated `T x (P + T)` scores. The paper's
//!   layer-0 claim (renormalized == pretrained) and the head-output identity are then checked on
//!   numbers that could break, not assumed;
//! - [`attend_split`] (a viewed layer whose output nothing recomputed reads, e.g. the layer a slider
//!   edits): the content part taken as `(1 - a_i)` times the cached content-only softmax, which
//!   needs only the `T x P` prefix scores. It is the paper's identity used as a shortcut; the unit
//!   tests below and `tests/incremental.rs` check it against [`attend_cached`] to 1e-6.

use crate::capture::{self, Capture, PretrainedViews};
use crate::error::{Error, Result};
use crate::head_views::{self, LayerKv, Summaries};
use crate::model::attention::content_rows;
use crate::model::{LayerRun, LayerSel, Run, Transformer};
use crate::prefix::{Prefix, PrefixKind};
use candle_core::Tensor;

// The layer stepper lives with the models (`crate::model::stepper`); re-exported here, where its
// users looked for it before.
pub use crate::model::stepper::{
    attend_cached, attend_kept, attend_split, full_run, on_compute_pool, ContentKv, Stepper,
};

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

/// One pretrained run, kept for a prompt.
enum Pretrained {
    /// Every layer's map: models without layer access, and learned-position models (whose pretrained
    /// run has placeholder tokens the model itself supplies; small toys).
    Maps(Run),
    /// Each layer's content queries, keys and values (RoPE models), `O(N d)` per layer: a layer's
    /// map is made when it is viewed, so memory grows with `N^2` only for the layers on screen
    /// (all 30 maps of SmolLM2 at N = 4,096 would take 18 GB).
    Content {
        layers: Vec<ContentKv>,
        n: usize,
        logits_last: Tensor,
    },
}

impl Pretrained {
    fn p(&self) -> usize {
        match self {
            Pretrained::Maps(r) => r.p,
            Pretrained::Content { .. } => 0,
        }
    }

    fn logits_last(&self) -> &Tensor {
        match self {
            Pretrained::Maps(r) => &r.logits_last,
            Pretrained::Content { logits_last, .. } => logits_last,
        }
    }

    /// Layer `l`'s run (its map made now for [`Pretrained::Content`]), as [`full_run`] makes it.
    fn layer(&self, l: usize) -> Result<LayerRun> {
        match self {
            Pretrained::Maps(r) => r
                .layers
                .iter()
                .find(|x| x.layer == l)
                .cloned()
                .ok_or(Error::Internal("pretrained layer missing")),
            Pretrained::Content { layers, n, .. } => {
                let c = layers
                    .get(l)
                    .ok_or(Error::Internal("pretrained layer missing"))?;
                let (z, probs, values) = attend_cached(c, None)?;
                Ok(LayerRun {
                    layer: l,
                    pattern: content_rows(&probs, *n)?,
                    values,
                    z: content_rows(&z, *n)?,
                })
            }
        }
    }
}

/// Pretrained views kept for layers no longer asked for, while a map is at most this many bytes
/// (SmolLM2 up to N = 512); above it only the layers of the current request keep theirs.
const KEEP_OTHER_VIEWS_MAX_BYTES: usize = 8 << 20;

/// Caches for one model and one prompt.
pub struct Evaluator {
    ids: Vec<u32>,
    /// Pretrained runs, keyed by the placeholder count they were made for.
    pretrained: Vec<(usize, Pretrained)>,
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

    /// The key (placeholder count) of the pretrained run for a prefix of length `p`, made if needed.
    fn pretrained_key(&mut self, model: &dyn Transformer, p: usize) -> Result<usize> {
        // RoPE models ignore p; learned-position models need one run per placeholder count.
        let key = if model.info().max_positions.is_some() {
            p
        } else {
            0
        };
        if self.pretrained.iter().any(|(k, _)| *k == key) {
            return Ok(key);
        }
        let run = match crate::model::stepper::content_alone_pretrained(model) {
            Some(st) => {
                // The content alone at positions 0..n (what `Transformer::pretrained` runs for
                // RoPE models), keeping each layer's q/k/v instead of its map.
                let (mut x, pos0) = st.embed_input(&self.ids, None)?;
                let mut layers = Vec::with_capacity(st.n_layers());
                for l in 0..st.n_layers() {
                    let c = st.layer_content(l, &x, pos0)?;
                    let (z, _, _) = attend_kept(&c, None, false)?;
                    x = st.layer_finish(l, &x, &z)?;
                    layers.push(c);
                }
                Pretrained::Content {
                    layers,
                    n: self.ids.len(),
                    logits_last: st.logits_last(&x)?,
                }
            }
            _ => Pretrained::Maps(model.pretrained(&self.ids, key, &LayerSel::All)?),
        };
        self.pretrained.push((key, run));
        Ok(key)
    }

    fn pretrained_of(&self, key: usize) -> Result<&Pretrained> {
        self.pretrained
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, r)| r)
            .ok_or(Error::Internal("pretrained run missing"))
    }

    /// The overview's per-head summary of every layer, `[layer][head]`: max |renormalized -
    /// pretrained| (`None` without a prefix), computed one head at a time from the cached queries and
    /// keys, so that no layer's maps are kept: what the app shows for every layer when holding all
    /// their maps would not fit (long prompts). Brings every layer's inputs up to date for `prefix`
    /// (call it after [`Evaluator::update`] with the same prefix). `None` for a model whose pretrained
    /// run is not kept per layer (no layer access, learned positions: small toys whose maps fit).
    pub fn overview(
        &mut self,
        model: &dyn Transformer,
        prefix: Option<&Prefix>,
    ) -> Result<Option<Vec<Vec<Option<f32>>>>> {
        let positions = self.ids.len() + prefix.map_or(0, |p| p.len());
        on_compute_pool(model, positions, || self.overview_here(model, prefix))
    }

    fn overview_here(
        &mut self,
        model: &dyn Transformer,
        prefix: Option<&Prefix>,
    ) -> Result<Option<Vec<Vec<Option<f32>>>>> {
        let Some(st) = model.stepper() else {
            return Ok(None);
        };
        let p = prefix.map_or(0, |p| p.len());
        let key = self.pretrained_key(model, p)?;
        let n_layers = st.n_layers();
        let n_heads = model.info().n_heads;
        // Another prefix than the cached one: every layer is stale (the edit between them is unknown).
        self.invalidate(prefix, Edit::All, n_layers);
        // Pretrained maps kept whole (not content keys and values): nothing to compare per head.
        if let Pretrained::Maps(_) = self.pretrained_of(key)? {
            return Ok(None);
        }
        self.bring_up_to(st, n_layers - 1)?;
        let n = self.ids.len();
        let mut rows = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let c = self.content[l]
                .as_ref()
                .ok_or(Error::Internal("incremental cache out of order"))?;
            let row = match (prefix, self.pretrained_of(key)?) {
                (Some(_), Pretrained::Content { layers, .. }) => {
                    let pre = layers
                        .get(l)
                        .ok_or(Error::Internal("pretrained layer missing"))?;
                    content_attention_diff(c, n, pre)?
                        .into_iter()
                        .map(Some)
                        .collect()
                }
                (None, Pretrained::Content { .. }) => vec![None; n_heads],
                (_, Pretrained::Maps(_)) => return Ok(None),
            };
            rows.push(row);
        }
        Ok(Some(rows))
    }

    /// Take `prefix` as current after `edit`: the layers whose inputs it can change are marked stale.
    fn invalidate(&mut self, prefix: Option<&Prefix>, edit: Edit, n_layers: usize) {
        // The same prefix again (another layer or head viewed): nothing it feeds has changed. A soft
        // prompt's "unchanged" edit would otherwise restart from layer 0 (its edits change every
        // layer), at N = 4,096 a whole forward for a head switch.
        if self.prefix.as_ref() == prefix && self.inputs.len() == n_layers {
            return;
        }
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
        if self.inputs.len() != n_layers {
            self.inputs = vec![None; n_layers];
            self.content = vec![None; n_layers];
            self.valid_in = 0;
        }
    }

    /// Bring the inputs and content of layers `0..=top` up to date for the current prefix (after
    /// [`Evaluator::invalidate`]), making no map: each stale layer costs its projections and the
    /// head outputs of the layer below it.
    fn bring_up_to(&mut self, st: &dyn Stepper, top: usize) -> Result<()> {
        let prefix = self.prefix.clone();
        let prefix = prefix.as_ref();
        let start = self.valid_in;
        if start > top {
            return Ok(());
        }
        let missing = || Error::Internal("incremental cache out of order");
        let mut z_prev: Option<Tensor> = None;
        if start > 0 {
            let c = self.content[start - 1].as_ref().ok_or_else(missing)?;
            let extra = st.prefix_kv(start - 1, prefix)?;
            z_prev = Some(attend_kept(c, extra.as_ref(), false)?.0);
        }
        for l in start..=top {
            let x = if l == 0 {
                let (x, pos0) = st.embed_input(&self.ids, prefix)?;
                self.pos0 = pos0;
                x
            } else {
                let prev = self.inputs[l - 1].as_ref().ok_or_else(missing)?;
                st.layer_finish(l - 1, prev, z_prev.as_ref().ok_or_else(missing)?)?
            };
            let c = st.layer_content(l, &x, self.pos0)?;
            if l < top {
                let extra = st.prefix_kv(l, prefix)?;
                z_prev = Some(attend_kept(&c, extra.as_ref(), false)?.0);
            }
            self.content[l] = Some(c);
            self.inputs[l] = Some(x);
            self.valid_in = l + 1;
        }
        Ok(())
    }

    /// Layer `l`'s queries, keys and values for the current prefix and for the pretrained run, as
    /// [`head_views::LayerKv`] (call after [`Evaluator::bring_up_to`] `l`).
    fn layer_kv(
        &self,
        st: &dyn Stepper,
        key: usize,
        l: usize,
    ) -> Result<Option<(Option<LayerKv>, LayerKv)>> {
        let Pretrained::Content { layers, .. } = self.pretrained_of(key)? else {
            return Ok(None);
        };
        let pre = LayerKv::new(
            layers
                .get(l)
                .ok_or(Error::Internal("pretrained layer missing"))?,
            None,
        )?;
        let with = match &self.prefix {
            Some(pf) => {
                let c = self.content[l]
                    .as_ref()
                    .ok_or(Error::Internal("incremental cache out of order"))?;
                let extra = st.prefix_kv(l, Some(pf))?;
                Some(LayerKv::new(c, extra.as_ref())?)
            }
            None => None,
        };
        Ok(Some((with, pre)))
    }

    /// Whether [`Evaluator::head_capture`] and [`Evaluator::summaries`] can serve `model`: it has
    /// layer access and rotary positions (the pretrained run is kept as per-layer queries and keys).
    pub fn streams_heads(model: &dyn Transformer) -> bool {
        crate::model::stepper::content_alone_pretrained(model).is_some()
    }

    /// The views of one head of one layer for `prefix` after `edit`, as a capture of that layer whose
    /// arrays hold that head only (`(1, N, ...)`): the long-prompt path, where a layer's maps would
    /// take gigabytes (SmolLM2 at N = 4,096: 604 MB a kind). Layers up to `layer` are brought up to
    /// date; no other map is made or kept. `None` for a model [`Evaluator::streams_heads`] refuses.
    pub fn head_capture(
        &mut self,
        model: &dyn Transformer,
        prefix: Option<&Prefix>,
        edit: Edit,
        layer: usize,
        head: usize,
    ) -> Result<Option<Capture>> {
        let positions = self.ids.len() + prefix.map_or(0, |p| p.len());
        on_compute_pool(model, positions, || {
            self.head_capture_here(model, prefix, edit, layer, head)
        })
    }

    fn head_capture_here(
        &mut self,
        model: &dyn Transformer,
        prefix: Option<&Prefix>,
        edit: Edit,
        layer: usize,
        head: usize,
    ) -> Result<Option<Capture>> {
        let Some(st) = crate::model::stepper::content_alone_pretrained(model) else {
            return Ok(None);
        };
        let p = prefix.map_or(0, |p| p.len());
        capture::check_ids(model, &self.ids, p)?;
        if let Some(pf) = prefix {
            pf.check(model.info(), std::path::Path::new("prefix"))?;
        }
        let n_layers = st.n_layers();
        let (layer, head) = (
            layer.min(n_layers - 1),
            head.min(model.info().n_heads.saturating_sub(1)),
        );
        self.invalidate(prefix, edit, n_layers);
        let key = self.pretrained_key(model, p)?;
        self.bring_up_to(st, layer)?;
        let Some((with, pre)) = self.layer_kv(st, key, layer)? else {
            return Ok(None);
        };
        let lc = head_views::head_views(layer, head, self.ids.len(), with.as_ref(), &pre)?;
        Ok(Some(Capture {
            token_ids: self.ids.clone(),
            p,
            layers: vec![lc],
            logits_last_pretrained: self.logits_pretrained(key)?,
            logits_last_prefixed: None,
        }))
    }

    fn logits_pretrained(&mut self, key: usize) -> Result<Vec<f32>> {
        if let Some((_, v)) = self.logits_pretrained.iter().find(|(k, _)| *k == key) {
            return Ok(v.clone());
        }
        let v = self.pretrained_of(key)?.logits_last().to_vec1::<f32>()?;
        self.logits_pretrained.push((key, v.clone()));
        Ok(v)
    }

    /// Every layer's per-head summaries for the current prefix (call after
    /// [`Evaluator::head_capture`] with the same prefix): the overview's grids, the deviation plot's
    /// per-layer figures and the layer-0 checks, computed one head at a time so that one head's maps
    /// are the most ever held. `None` for a model [`Evaluator::streams_heads`] refuses.
    pub fn summaries(&mut self, model: &dyn Transformer) -> Result<Option<Summaries>> {
        let positions = self.ids.len() + self.prefix.as_ref().map_or(0, |p| p.len());
        on_compute_pool(model, positions, || self.summaries_here(model))
    }

    fn summaries_here(&mut self, model: &dyn Transformer) -> Result<Option<Summaries>> {
        let Some(st) = crate::model::stepper::content_alone_pretrained(model) else {
            return Ok(None);
        };
        let n_layers = st.n_layers();
        if self.inputs.len() != n_layers {
            return Err(Error::Internal("summaries asked for before the views"));
        }
        let p = self.prefix.as_ref().map_or(0, |p| p.len());
        let key = self.pretrained_key(model, p)?;
        let n = self.ids.len();
        let mut out = Summaries::new(n_layers, model.info().n_heads);
        for l in 0..n_layers {
            self.bring_up_to(st, l)?;
            let Some((with, pre)) = self.layer_kv(st, key, l)? else {
                return Ok(None);
            };
            if l == 0 {
                // Layer 0's checks need the head outputs: the views, one head at a time.
                out.add_layer(l, pre.heads(), |h| {
                    head_views::head_views(l, h, n, with.as_ref(), &pre)
                })?;
            } else {
                out.add_layer_figures(l, n, with.as_ref(), &pre)?;
            }
        }
        Ok(Some(out))
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
            let key = self.pretrained_key(model, p)?;
            let Pretrained::Maps(pre) = self.pretrained_of(key)? else {
                return Err(Error::Internal("pretrained maps missing"));
            };
            let pre = pre.clone();
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
        let n_layers = stepper.n_layers();
        self.invalidate(prefix, edit, n_layers);
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
                // A viewed layer whose output no recomputed layer reads (the top one) reuses its
                // content attention (the paper's identity); a layer that feeds the next one takes
                // the full path's genuine softmax, so every layer input stays the full pass's own.
                let feeds_next = l < top && l + 1 >= self.valid_in;
                let (z, probs, values) = match &extra {
                    Some((pk, pv)) if viewed && !feeds_next => {
                        let (z, probs, values) = attend_split(c, pk, pv)?;
                        (z, Some(probs), values)
                    }
                    // A layer only fed through makes no map.
                    _ => attend_kept(c, extra.as_ref(), viewed)?,
                };
                if let Some(probs) = probs {
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
                        c.forget_content_attn();
                    }
                }
            }
        }
        self.valid_in = self.valid_in.max(top + 1);
        let key = self.pretrained_key(model, p)?;
        let pre = self
            .pretrained
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, r)| r)
            .ok_or(Error::Internal("pretrained run missing"))?;
        let p_pre = pre.p();
        let mut views = Vec::new();
        for &l in layers {
            let cached = self
                .pretrained_views
                .iter()
                .find(|(k, v)| *k == key && v.layer == l);
            let pv = match cached {
                Some((_, v)) => v.clone(),
                None => {
                    let v = capture::pretrained_views(&pre.layer(l)?, p_pre)?;
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
        // Views of layers no longer on screen are kept only while small.
        self.pretrained_views.retain(|(_, v)| {
            layers.contains(&v.layer) || v.pretrained.data.len() * 4 <= KEEP_OTHER_VIEWS_MAX_BYTES
        });
        let logits_pretrained = match self.logits_pretrained.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => v.clone(),
            None => {
                let v = pre.logits_last().to_vec1::<f32>()?;
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

/// Per head: max |A - B| between the content-only attention of the last `n` query rows of `c` over
/// its last `n` keys (the prefixed run renormalized over the content: by the paper's identity the
/// softmax of the content scores alone) and that of the pretrained run `pre`. One head's two maps at a
/// time (`n x n` each), never a layer's.
fn content_attention_diff(c: &ContentKv, n: usize, pre: &ContentKv) -> Result<Vec<f32>> {
    use crate::model::attention::{causal_attention, f32_values, AttnDims};
    let (heads, t, hd) = c.q.dims3()?;
    let kv = c.k.dim(0)?;
    let off = t - n;
    let rows = |x: &Tensor| -> Result<Vec<f32>> { Ok(f32_values(&x.narrow(1, off, n)?)?) };
    let (q, k, v) = (rows(&c.q)?, rows(&c.k)?, rows(&c.v)?);
    let (pq, pk, pv) = (
        f32_values(&pre.q)?,
        f32_values(&pre.k)?,
        f32_values(&pre.v)?,
    );
    if pq.len() != q.len() || pk.len() != k.len() {
        return Err(Error::Internal(
            "pretrained and prefixed runs differ in shape",
        ));
    }
    let one = AttnDims {
        heads: 1,
        kv_heads: 1,
        t: n,
        p: 0,
        head_dim: hd,
    };
    let mut out = Vec::with_capacity(heads);
    for h in 0..heads {
        let kh = h / (heads / kv);
        let head = |q: &[f32], k: &[f32], v: &[f32], scale: f64| {
            causal_attention(
                &q[h * n * hd..(h + 1) * n * hd],
                &k[kh * n * hd..(kh + 1) * n * hd],
                &v[kh * n * hd..(kh + 1) * n * hd],
                one,
                scale as f32,
                true,
            )
            .probs
            .unwrap_or_default()
        };
        let a = head(&q, &k, &v, c.scale);
        let b = head(&pq, &pk, &pv, pre.scale);
        out.push(
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max),
        );
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t3(data: &[f32], shape: (usize, usize, usize)) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// One head, head size 1, two content rows behind one prefix column, written out by hand:
    /// row 0 sees `[prefix, c0]`, row 1 sees `[prefix, c0, c1]`, softmax over exactly those.
    #[test]
    fn full_path_is_a_softmax_over_prefix_and_causal_content() {
        let c = ContentKv::new(
            t3(&[1.0, 2.0], (1, 2, 1)),
            t3(&[1.0, -1.0], (1, 2, 1)),
            t3(&[10.0, 20.0], (1, 2, 1)),
            1.0,
        )
        .unwrap();
        let (pk, pv) = (t3(&[0.5], (1, 1, 1)), t3(&[-4.0], (1, 1, 1)));
        let (z, probs, values) = attend_cached(&c, Some(&(pk, pv))).unwrap();
        let e = f64::exp;
        let r0 = [e(0.5), e(1.0), 0.0];
        let r1 = [e(1.0), e(2.0), e(-2.0)];
        let mut want = Vec::new();
        for r in [r0, r1] {
            let s: f64 = r.iter().sum();
            want.extend(r.iter().map(|x| x / s));
        }
        let got = flat(&probs);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "probs {got:?}, want {want:?}");
        }
        let zw: Vec<f64> = want
            .chunks(3)
            .map(|r| r[0] * -4.0 + r[1] * 10.0 + r[2] * 20.0)
            .collect();
        for (g, w) in flat(&z).iter().zip(&zw) {
            assert!(
                (*g as f64 - w).abs() < 1e-5,
                "z {:?}, want {zw:?}",
                flat(&z)
            );
        }
        assert_eq!(flat(&values), vec![-4.0, 10.0, 20.0]);
    }

    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn tensor(&mut self, shape: (usize, usize, usize), scale: f32) -> Tensor {
            let n = shape.0 * shape.1 * shape.2;
            let v: Vec<f32> = (0..n).map(|_| self.unit() * scale).collect();
            t3(&v, shape)
        }
    }

    /// The shortcut the evaluator takes for a viewed layer (`(1 - a_i)` times the cached content
    /// softmax) against the genuine softmax over `[prefix | content]`, with grouped-query heads,
    /// prefixes that take almost all or almost none of the mass, and large scores.
    #[test]
    fn split_attention_equals_the_genuine_softmax() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let (h, kv, t, hd) = (4, 2, 9, 8);
        for (p, key_scale, prefix_scale) in
            [(1, 1.0, 1.0), (3, 3.0, 0.1), (5, 1.0, 6.0), (2, 8.0, 8.0)]
        {
            let c = ContentKv::new(
                rng.tensor((h, t, hd), 1.0),
                rng.tensor((kv, t, hd), key_scale),
                rng.tensor((kv, t, hd), 1.0),
                1.0 / (hd as f64).sqrt(),
            )
            .unwrap();
            let pk = rng.tensor((kv, p, hd), prefix_scale);
            let pv = rng.tensor((kv, p, hd), 2.0);
            let (z_full, probs_full, v_full) =
                attend_cached(&c, Some(&(pk.clone(), pv.clone()))).unwrap();
            let (z_split, probs_split, v_split) = attend_split(&c, &pk, &pv).unwrap();
            let d = |a: &Tensor, b: &Tensor| {
                flat(a)
                    .iter()
                    .zip(flat(b))
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            assert!(d(&probs_full, &probs_split) <= 1e-6, "p {p}: probs differ");
            assert!(d(&z_full, &z_split) <= 1e-5, "p {p}: head outputs differ");
            assert_eq!(flat(&v_full), flat(&v_split));
            // Rows sum to 1 and future content columns are exactly 0 in both.
            for (r, row) in flat(&probs_full).chunks(p + t).enumerate() {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "row {r} sums to {s}");
                assert!(row[p + r % t + 1..].iter().all(|&x| x == 0.0));
            }
        }
    }
}
