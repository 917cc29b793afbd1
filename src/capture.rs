//! What a prefixed run and its pretrained counterpart show, per layer and head: the raw attention with
//! the prefix columns, the attention renormalized over the content, the pretrained attention, the
//! prefix mass `a_i`, and the head outputs needed to check `t_pt = (1 - a) t + sum_k A[i,k] v_k`.

use crate::arrays::Array;
use crate::error::{Error, Result};
use crate::model::{LayerRun, LayerSel, Run, Transformer};
use crate::prefix::Prefix;
use candle_core::{Tensor, D};

/// One layer's views. Arrays are `[head, query, key]`, float32.
#[derive(Debug, Clone)]
pub struct LayerCapture {
    pub layer: usize,
    /// `(H, N, P+N)`; `None` without a prefix.
    pub with_prefix: Option<Array>,
    /// `(H, N, N)`: `with_prefix[..., P:]` divided by its row sums.
    pub renormalized: Option<Array>,
    /// `(H, N, N)`: the pretrained run's content rows over content columns (renormalized over the
    /// content when the pretrained run has placeholder columns).
    pub pretrained: Array,
    /// `(H, N)`: attention each content query puts on the prefix.
    pub prefix_mass: Option<Array>,
    /// `(H, N, hd)`: per-head attention output with the prefix.
    pub z_prefixed: Option<Array>,
    /// `(H, N, hd)`: the pretrained per-head output over the content, `t_i = sum_j A[i,j] v_j`.
    pub z_pretrained: Array,
    /// `(H, P, hd)`: the prefix value vectors each head reads.
    pub prefix_values: Option<Array>,
}

impl LayerCapture {
    /// max |renormalized - pretrained| over heads (or one head), rows and columns.
    pub fn max_renorm_diff(&self, head: Option<usize>) -> Option<f32> {
        let r = self.renormalized.as_ref()?;
        Some(max_abs_diff(r, &self.pretrained, head))
    }

    /// max |z_pt - ((1 - a) t + sum_k A_pt[i,k] v_k)| (paper, the head-output identity), divided by
    /// the largest |z_pt| of the same heads when that exceeds 1: f32 rounding grows with the size of
    /// the outputs (Gemma 3's head outputs reach the hundreds, SmolLM2's stay below 1), so the bound
    /// that says "exact up to rounding" is relative. Exact wherever the layer's content inputs are the
    /// same with and without the prefix, i.e. always in the first layer.
    pub fn head_output_identity_error(&self, head: Option<usize>) -> Option<f32> {
        let (worst, scale) = self.head_output_identity_parts(head)?;
        Some(worst / scale)
    }

    /// The two halves of [`LayerCapture::head_output_identity_error`]: the largest error and the
    /// scale it is divided by (at least 1), so that heads computed apart (the long-prompt path,
    /// `crate::head_views`) combine to the same figure: max of the errors over max of the scales.
    pub fn head_output_identity_parts(&self, head: Option<usize>) -> Option<(f32, f32)> {
        let (wp, zp, pv, mass) = (
            self.with_prefix.as_ref()?,
            self.z_prefixed.as_ref()?,
            self.prefix_values.as_ref()?,
            self.prefix_mass.as_ref()?,
        );
        let (h_n, n, hd) = (zp.shape[0], zp.shape[1], zp.shape[2]);
        let p = wp.shape[2] - n;
        let mut worst = 0f32;
        let mut scale = 1f32;
        for h in 0..h_n {
            if head.is_some_and(|x| x != h) {
                continue;
            }
            for i in 0..n {
                let a = mass.data[h * n + i];
                for d in 0..hd {
                    let t = self.z_pretrained.data[(h * n + i) * hd + d];
                    let mut pred = (1.0 - a) * t;
                    for k in 0..p {
                        pred += wp.data[(h * n + i) * (p + n) + k] * pv.data[(h * p + k) * hd + d];
                    }
                    let z = zp.data[(h * n + i) * hd + d];
                    worst = worst.max((z - pred).abs());
                    scale = scale.max(z.abs());
                }
            }
        }
        Some((worst, scale))
    }

    /// `(H, N, N)`: renormalized - pretrained (the difference view; `None` without a prefix).
    pub fn difference(&self) -> Option<Array> {
        let r = self.renormalized.as_ref()?;
        Some(Array {
            shape: r.shape.clone(),
            data: r
                .data
                .iter()
                .zip(&self.pretrained.data)
                .map(|(a, b)| a - b)
                .collect(),
        })
    }

    pub fn n_heads(&self) -> usize {
        self.pretrained.shape[0]
    }
}

fn max_abs_diff(a: &Array, b: &Array, head: Option<usize>) -> f32 {
    let per_head = a.data.len() / a.shape[0].max(1);
    a.data
        .iter()
        .zip(&b.data)
        .enumerate()
        .filter(|(i, _)| head.is_none_or(|h| i / per_head == h))
        .map(|(_, (x, y))| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Everything one prompt + prefix shows.
#[derive(Debug, Clone)]
pub struct Capture {
    pub token_ids: Vec<u32>,
    /// Prefix length (0 without a prefix).
    pub p: usize,
    pub layers: Vec<LayerCapture>,
    pub logits_last_pretrained: Vec<f32>,
    pub logits_last_prefixed: Option<Vec<f32>>,
}

impl Capture {
    pub fn layer(&self, l: usize) -> Option<&LayerCapture> {
        self.layers.iter().find(|c| c.layer == l)
    }

    /// The arrays `prefixscope attention` writes, named in the one vocabulary ([`crate::hooks`]):
    /// `token_ids`, per layer `blocks.{l}.attn.hook_pattern`, `hook_pattern_renormalized`,
    /// `hook_prefix_mass` (with a prefix) and `hook_pattern_pretrained`, then the last logits.
    pub fn named_arrays(&self) -> Vec<(String, Array)> {
        self.clone().into_named_arrays()
    }

    /// [`Capture::named_arrays`], moving the arrays out instead of copying them.
    pub fn into_named_arrays(self) -> Vec<(String, Array)> {
        let mut out = vec![token_ids_array(&self.token_ids)];
        for c in self.layers {
            out.extend(c.into_named_arrays());
        }
        out.extend(
            CaptureEnds {
                token_ids: self.token_ids,
                p: self.p,
                logits_last_pretrained: self.logits_last_pretrained,
                logits_last_prefixed: self.logits_last_prefixed,
            }
            .logit_arrays(),
        );
        out
    }
}

impl LayerCapture {
    /// This layer's part of [`Capture::into_named_arrays`]: `blocks.{l}.attn.hook_pattern`,
    /// `hook_pattern_renormalized`, `hook_prefix_mass` (with a prefix), `hook_pattern_pretrained`.
    pub fn into_named_arrays(self) -> Vec<(String, Array)> {
        use crate::hooks::Hook;
        let l = self.layer;
        let mut out = Vec::with_capacity(4);
        if let (Some(w), Some(r), Some(m)) = (self.with_prefix, self.renormalized, self.prefix_mass)
        {
            out.push((Hook::Pattern.name(l), w));
            out.push((Hook::PatternRenormalized.name(l), r));
            out.push((Hook::PrefixMass.name(l), m));
        }
        out.push((Hook::PatternPretrained.name(l), self.pretrained));
        out
    }
}

/// `token_ids`, the first of [`Capture::into_named_arrays`]: the prompt's ids as float32 `(N,)`.
pub fn token_ids_array(ids: &[u32]) -> (String, Array) {
    (
        crate::hooks::TOKEN_IDS.to_string(),
        Array {
            shape: vec![ids.len()],
            data: ids.iter().map(|&x| x as f32).collect(),
        },
    )
}

/// What a capture has besides its layers: the prompt, the prefix length and the two runs' last
/// logits ([`capture_each`] returns it after the last layer).
#[derive(Debug, Clone)]
pub struct CaptureEnds {
    pub token_ids: Vec<u32>,
    pub p: usize,
    pub logits_last_pretrained: Vec<f32>,
    pub logits_last_prefixed: Option<Vec<f32>>,
}

impl CaptureEnds {
    /// The last logits of both runs, the last of [`Capture::into_named_arrays`].
    pub fn logit_arrays(self) -> Vec<(String, Array)> {
        let v = |x: Vec<f32>| Array {
            shape: vec![x.len()],
            data: x,
        };
        let mut out = vec![(
            crate::hooks::LOGITS_LAST_PRETRAINED.into(),
            v(self.logits_last_pretrained),
        )];
        if let Some(x) = self.logits_last_prefixed {
            out.push((crate::hooks::LOGITS_LAST_PREFIXED.into(), v(x)));
        }
        out
    }

    fn check_finite(&self) -> Result<()> {
        check_logits_finite(
            &self.logits_last_pretrained,
            self.logits_last_prefixed.as_deref(),
        )
    }
}

/// A NaN or infinity in either run's last logits is refused, naming the run and the token id.
fn check_logits_finite(pretrained: &[f32], prefixed: Option<&[f32]>) -> Result<()> {
    for (what, x) in [
        ("final logits (pretrained run)", Some(pretrained)),
        ("final logits (with the prefix)", prefixed),
    ] {
        if let Some(x) = x {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    at: "the output".into(),
                    what: format!("{what} at token id {i}"),
                    found: x[i].to_string(),
                });
            }
        }
    }
    Ok(())
}

/// [`capture`], handing each selected layer's views to `sink` as soon as they are made (in layer
/// order) instead of returning them together, and returning the rest after the last layer. For RoPE
/// models with layer access the pretrained and the prefixed runs walk the layers side by side
/// ([`crate::model::stepper::Walk`]), so that at most one layer's maps of each run are held: four
/// layers of SmolLM2 at N = 2,048 are 604 MB of maps, written one layer at a time by `prefixscope
/// attention`. Other models (learned positions: a pretrained run with placeholders) capture as
/// [`capture`] does and hand the layers over afterwards. The numbers are [`capture`]'s either way: the
/// same [`crate::model::stepper`] calls make them.
///
/// Errors: [`check_ids`]'s, the model's, a non-finite logit, and whatever `sink` returns (which
/// stops the walk).
pub fn capture_each(
    model: &dyn Transformer,
    ids: &[u32],
    prefix: Option<&Prefix>,
    layers: &LayerSel,
    sink: &mut (dyn FnMut(LayerCapture) -> Result<()> + Send),
) -> Result<CaptureEnds> {
    let p = prefix.map_or(0, |p| p.len());
    let st = match crate::model::stepper::content_alone_pretrained(model) {
        Some(st) => st,
        None => {
            let cap = capture(model, ids, prefix, layers)?;
            for l in cap.layers {
                sink(l)?;
            }
            return Ok(CaptureEnds {
                token_ids: cap.token_ids,
                p: cap.p,
                logits_last_pretrained: cap.logits_last_pretrained,
                logits_last_prefixed: cap.logits_last_prefixed,
            });
        }
    };
    check_ids(model, ids, p)?;
    use crate::model::stepper::{on_compute_pool, Walk};
    let ends = on_compute_pool(model, ids.len() + p, || -> Result<CaptureEnds> {
        // RoPE: the pretrained run is the content alone at positions 0..n (`Transformer::pretrained`).
        let mut pre = Walk::new(st, ids, None)?;
        let mut with = prefix.map(|pf| Walk::new(st, ids, Some(pf))).transpose()?;
        for l in 0..st.n_layers() {
            let keep = layers.contains(l);
            let lp = pre.step(keep)?;
            let lw = match &mut with {
                Some(w) => w.step(keep)?,
                None => None,
            };
            if let Some(lp) = lp {
                let views = layer_views(pretrained_views(&lp, 0)?, lw.as_ref(), p)?;
                drop((lp, lw));
                sink(views)?;
            }
        }
        Ok(CaptureEnds {
            token_ids: ids.to_vec(),
            p,
            logits_last_pretrained: pre.logits_last()?.to_vec1::<f32>()?,
            logits_last_prefixed: with
                .map(|w| -> Result<Vec<f32>> { Ok(w.logits_last()?.to_vec1::<f32>()?) })
                .transpose()?,
        })
    })?;
    ends.check_finite()?;
    Ok(ends)
}

/// Run `ids` with and without `prefix` and build the views for the selected layers.
pub fn capture(
    model: &dyn Transformer,
    ids: &[u32],
    prefix: Option<&Prefix>,
    layers: &LayerSel,
) -> Result<Capture> {
    check_ids(model, ids, prefix.map_or(0, |p| p.len()))?;
    let p = prefix.map_or(0, |p| p.len());
    let pre = model.pretrained(ids, p, layers)?;
    let with = match prefix {
        Some(pf) => Some(model.forward(ids, Some(pf), layers)?),
        None => None,
    };
    build_from(ids, pre, with)
}

/// Token ids must be in the vocabulary, non-empty, and fit the context with the prefix.
pub fn check_ids(model: &dyn Transformer, ids: &[u32], p: usize) -> Result<()> {
    let info = model.info();
    if ids.is_empty() {
        return Err(Error::input(
            "prompt",
            "at least one token",
            "an empty prompt",
        ));
    }
    if let Some((i, &bad)) = ids
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= info.vocab_size)
    {
        return Err(Error::input(
            format!("token id at index {i}"),
            format!("an id below the vocabulary size {}", info.vocab_size),
            bad.to_string(),
        ));
    }
    if let Some(maxp) = info.max_positions {
        if p + ids.len() > maxp {
            return Err(Error::input(
                "prompt length",
                format!("prefix + content <= {maxp} positions (the model's context)"),
                format!("{p} + {} = {}", ids.len(), p + ids.len()),
            ));
        }
    }
    Ok(())
}

/// Combine a pretrained run and an optional prefixed run into views.
pub fn build(ids: &[u32], pre: &Run, with: Option<&Run>) -> Result<Capture> {
    // Cloning a run copies tensor handles, not data.
    build_from(ids, pre.clone(), with.cloned())
}

/// [`build`] taking the runs: each layer's maps are released as soon as its views are made, so a long
/// prompt holds one layer's maps twice at most, not all of them.
fn build_from(ids: &[u32], mut pre: Run, mut with: Option<Run>) -> Result<Capture> {
    let p_with = with.as_ref().map_or(0, |w| w.p);
    let logits_last_pretrained = pre.logits_last.to_vec1::<f32>()?;
    let logits_last_prefixed = with
        .as_ref()
        .map(|w| w.logits_last.to_vec1::<f32>())
        .transpose()?;
    let mut layers = Vec::new();
    for lp in std::mem::take(&mut pre.layers) {
        let lw = with.as_mut().and_then(|w| {
            let i = w.layers.iter().position(|x| x.layer == lp.layer)?;
            Some(w.layers.swap_remove(i))
        });
        layers.push(build_layer(&lp, pre.p, lw.as_ref(), p_with)?);
    }
    let cap = Capture {
        token_ids: ids.to_vec(),
        p: p_with,
        layers,
        logits_last_pretrained,
        logits_last_prefixed,
    };
    check_logits_finite(
        &cap.logits_last_pretrained,
        cap.logits_last_prefixed.as_deref(),
    )?;
    Ok(cap)
}

/// Attention restricted to the content columns, each row divided by its sum.
pub fn renormalize(pattern: &Tensor, p: usize) -> candle_core::Result<Tensor> {
    let n = pattern.dim(D::Minus1)? - p;
    let content = pattern.narrow(D::Minus1, p, n)?;
    let sums = content.sum_keepdim(D::Minus1)?;
    content.broadcast_div(&sums)
}

/// Values `(n_kv, cols, hd)` expanded so that head `h` reads KV head `h / rep`: `(H, cols, hd)`.
fn values_per_head(values: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let n_kv = values.dim(0)?;
    crate::model::attention::repeat_kv(values, n_heads / n_kv)
}

/// The pretrained side of one layer's views: it depends only on the model, the prompt and the
/// placeholder count, so the incremental evaluator keeps it while a prefix is edited.
#[derive(Debug, Clone)]
pub struct PretrainedViews {
    pub layer: usize,
    pub pretrained: Array,
    pub z_pretrained: Array,
}

/// Pretrained attention over the content (for RoPE models `p_pre = 0` and this is the plain matrix)
/// and the pretrained head output `t_i = sum_j A[i,j] v_j`.
pub fn pretrained_views(pre: &LayerRun, p_pre: usize) -> Result<PretrainedViews> {
    let n_heads = pre.pattern.dim(0)?;
    let n = pre.pattern.dim(1)?;
    let pretrained = renormalize(&pre.pattern, p_pre)?;
    let v_pre = values_per_head(&pre.values, n_heads)?.narrow(1, p_pre, n)?;
    let z_pretrained = pretrained.matmul(&v_pre.contiguous()?)?;
    Ok(PretrainedViews {
        layer: pre.layer,
        pretrained: Array::from_tensor(&pretrained)?,
        z_pretrained: Array::from_tensor(&z_pretrained)?,
    })
}

fn build_layer(
    pre: &LayerRun,
    p_pre: usize,
    with: Option<&LayerRun>,
    p: usize,
) -> Result<LayerCapture> {
    layer_views(pretrained_views(pre, p_pre)?, with, p)
}

/// One layer's views from its pretrained side and (optionally) the prefixed run of that layer.
pub fn layer_views(
    pre: PretrainedViews,
    with: Option<&LayerRun>,
    p: usize,
) -> Result<LayerCapture> {
    let n_heads = pre.pretrained.shape[0];
    let mut lc = LayerCapture {
        layer: pre.layer,
        with_prefix: None,
        renormalized: None,
        pretrained: pre.pretrained,
        prefix_mass: None,
        z_prefixed: None,
        z_pretrained: pre.z_pretrained,
        prefix_values: None,
    };
    if let Some(w) = with {
        let mass = w.pattern.narrow(D::Minus1, 0, p)?.sum(D::Minus1)?;
        let renorm = renormalize(&w.pattern, p)?;
        let pv = values_per_head(&w.values, n_heads)?.narrow(1, 0, p)?;
        lc.with_prefix = Some(Array::from_tensor(&w.pattern)?);
        lc.renormalized = Some(Array::from_tensor(&renorm)?);
        lc.prefix_mass = Some(Array::from_tensor(&mass)?);
        lc.z_prefixed = Some(Array::from_tensor(&w.z)?);
        lc.prefix_values = Some(Array::from_tensor(&pv.contiguous()?)?);
    }
    lc.check_finite()?;
    Ok(lc)
}

/// The first NaN or infinity of `a`: its index in each dimension and its value.
fn first_non_finite(a: &Array) -> Option<(Vec<usize>, f32)> {
    let i = a.data.iter().position(|x| !x.is_finite())?;
    let mut at = vec![0; a.shape.len()];
    let mut rest = i;
    for (k, &d) in a.shape.iter().enumerate().rev() {
        at[k] = rest % d.max(1);
        rest /= d.max(1);
    }
    Some((at, a.data[i]))
}

/// Refuse an array holding a NaN or an infinity: `layer` and `what` say where it came from.
pub fn check_array_finite(layer: usize, what: &str, a: &Array) -> Result<()> {
    match first_non_finite(a) {
        Some((at, x)) => Err(Error::NonFinite {
            at: format!("layer {layer}"),
            what: format!("{what} at index {at:?}"),
            found: x.to_string(),
        }),
        None => Ok(()),
    }
}

/// Arrays about to be written (`prefixscope attention`): every one finite, else an error naming the
/// array and its layer (read from its name, [`crate::hooks::lookup`]).
pub fn check_named_finite(named: &[(String, Array)]) -> Result<()> {
    for (name, a) in named {
        let at = match crate::hooks::lookup(name) {
            Ok((crate::hooks::Name::Layer(h), _)) => format!("layer {}", h.layer),
            _ => "the output".to_string(),
        };
        if let Some((i, x)) = first_non_finite(a) {
            return Err(Error::NonFinite {
                at,
                what: format!("array '{name}' at index {i:?}"),
                found: x.to_string(),
            });
        }
    }
    Ok(())
}

impl LayerCapture {
    /// A run that produced a NaN or an infinity is refused, naming the layer and the view, instead
    /// of being drawn or written (a NaN weight, an overflow, a row whose content attention sums to
    /// zero).
    pub fn check_finite(&self) -> Result<()> {
        let l = self.layer;
        let views: [(&str, Option<&Array>); 7] = [
            (
                "pretrained attention (head, query, key)",
                Some(&self.pretrained),
            ),
            (
                "attention with the prefix (head, query, key)",
                self.with_prefix.as_ref(),
            ),
            (
                "renormalized attention (head, query, key)",
                self.renormalized.as_ref(),
            ),
            (
                "prefix attention mass (head, query)",
                self.prefix_mass.as_ref(),
            ),
            (
                "head output with the prefix (head, query, dim)",
                self.z_prefixed.as_ref(),
            ),
            (
                "pretrained head output (head, query, dim)",
                Some(&self.z_pretrained),
            ),
            (
                "prefix values (head, position, dim)",
                self.prefix_values.as_ref(),
            ),
        ];
        for (what, a) in views {
            if let Some(a) = a {
                check_array_finite(l, what, a)?;
            }
        }
        Ok(())
    }
}
