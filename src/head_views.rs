//! One head's views from a layer's cached queries, keys and values, and the per-head summaries of
//! every layer computed one head at a time: the long-prompt path (issue 16), where memory may grow
//! with `N^2` only for what is on screen.
//!
//! A head's views are made exactly as a full capture makes them: the same blocked attention kernel
//! over `[prefix | content]` keys (`crate::model::attention::causal_attention`), then
//! [`capture::pretrained_views`] and [`capture::layer_views`] on one-head runs, so that every view
//! (raw, renormalized, pretrained, prefix mass, head outputs) is the full capture's own to rounding.
//! Memory: one head's maps, `N x (P + N)` floats each, never a layer's.

use crate::capture::{self, LayerCapture};
use crate::error::{Error, Result};
use crate::metrics::{self, HeadMetric, LayerDeviations};
use crate::model::attention::{causal_attention, f32_values, AttnDims};
use crate::model::stepper::ContentKv;
use crate::model::LayerRun;
use candle_core::Tensor;

/// `grid[layer][head]`, the overview's layout.
pub type Grid = Vec<Vec<Option<f32>>>;

/// Head `h`'s rows of a `(heads, rows, hd)` tensor's values: `rows x hd` floats from row `from`.
fn head_rows(x: &[f32], h: usize, rows: usize, hd: usize, from: usize, count: usize) -> &[f32] {
    let base = (h * rows + from) * hd;
    &x[base..base + count * hd]
}

/// One head of a layer as a [`LayerRun`] with one head: the attention of `q`'s last `n` rows over
/// `keys`/`values` (`p` open prefix columns, then `n` causal content columns).
fn one_head_run(
    layer: usize,
    q: &[f32],
    keys: Vec<f32>,
    values: Vec<f32>,
    (n, p, hd): (usize, usize, usize),
    scale: f64,
) -> Result<LayerRun> {
    let d = AttnDims {
        heads: 1,
        kv_heads: 1,
        t: n,
        p,
        head_dim: hd,
    };
    let a = causal_attention(q, &keys, &values, d, scale as f32, true);
    let probs = a
        .probs
        .ok_or(Error::Internal("attention map asked for, not made"))?;
    let dev = candle_core::Device::Cpu;
    Ok(LayerRun {
        layer,
        pattern: Tensor::from_vec(probs, (1, n, p + n), &dev)?,
        values: Tensor::from_vec(values, (1, p + n, hd), &dev)?,
        z: Tensor::from_vec(a.z, (1, n, hd), &dev)?,
    })
}

/// One head's queries, keys, values and prefix column count ([`LayerKv::operands`]).
type Operands<'a> = (&'a [f32], Vec<f32>, Vec<f32>, usize);

/// Every [`HeadMetric`]'s value for one head, and its `(max, mean)` deviation ([`head_figures`]).
type HeadFigures = (Vec<(HeadMetric, Option<f32>)>, Option<(f32, f32)>);

/// The content queries, keys and values of one layer as row-major floats, read once per layer and
/// shared by its heads.
pub struct LayerKv {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    heads: usize,
    kv_heads: usize,
    /// Rows of the stream (`P + N` for a soft prompt, else `N`).
    t: usize,
    hd: usize,
    scale: f64,
    /// Prefix keys and values `(KV, P, hd)` (a key/value or paper-form prefix), with `P`.
    extra: Option<(Vec<f32>, Vec<f32>, usize)>,
}

impl LayerKv {
    /// `c`'s tensors, with `extra` the layer's prefix keys and values (none for a soft prompt, whose
    /// rows are in the stream, or for the pretrained run).
    pub fn new(c: &ContentKv, extra: Option<&(Tensor, Tensor)>) -> Result<Self> {
        let (heads, t, hd) = c.q.dims3()?;
        let kv_heads = c.k.dim(0)?;
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(Error::Internal("query heads not a multiple of key heads"));
        }
        let extra = extra
            .map(|(pk, pv)| -> Result<_> { Ok((f32_values(pk)?, f32_values(pv)?, pk.dim(1)?)) })
            .transpose()?;
        Ok(LayerKv {
            q: f32_values(&c.q)?,
            k: f32_values(&c.k)?,
            v: f32_values(&c.v)?,
            heads,
            kv_heads,
            t,
            hd,
            scale: c.scale,
            extra,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Head `h`'s operands for the last `n` query rows: its queries, its keys and values over
    /// `[prefix keys | stream rows]`, and the number of columns before the content (`P`).
    fn operands(&self, h: usize, n: usize) -> Result<Operands<'_>> {
        if h >= self.heads || n > self.t {
            return Err(Error::Internal("head or rows out of range"));
        }
        let (t, hd) = (self.t, self.hd);
        let kh = h / (self.heads / self.kv_heads);
        let q = head_rows(&self.q, h, t, hd, t - n, n);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut p = t - n;
        if let Some((pk, pv, pp)) = &self.extra {
            keys.extend_from_slice(head_rows(pk, kh, *pp, hd, 0, *pp));
            values.extend_from_slice(head_rows(pv, kh, *pp, hd, 0, *pp));
            p += pp;
        }
        keys.extend_from_slice(head_rows(&self.k, kh, t, hd, 0, t));
        values.extend_from_slice(head_rows(&self.v, kh, t, hd, 0, t));
        Ok((q, keys, values, p))
    }

    /// Head `h`'s run for the last `n` query rows: columns `[prefix keys | stream rows]`.
    fn run(&self, layer: usize, h: usize, n: usize) -> Result<LayerRun> {
        let (q, keys, values, p) = self.operands(h, n)?;
        one_head_run(layer, q, keys, values, (n, p, self.hd), self.scale)
    }

    /// Head `h`'s attention probabilities alone, `n x (P + n)`, with `P`: what the summaries read.
    fn probs(&self, h: usize, n: usize) -> Result<(Vec<f32>, usize)> {
        let (q, keys, values, p) = self.operands(h, n)?;
        let d = AttnDims {
            heads: 1,
            kv_heads: 1,
            t: n,
            p,
            head_dim: self.hd,
        };
        let a = causal_attention(q, &keys, &values, d, self.scale as f32, true);
        Ok((
            a.probs
                .ok_or(Error::Internal("attention map asked for, not made"))?,
            p,
        ))
    }
}

/// One head's figures straight from its probabilities, as [`metrics::head_metric`] and
/// [`metrics::layer_deviations`] take them from a capture's views (the tests check both ways agree):
/// `with` the prefixed run's `n x (P + n)` rows and `P`, `pre` the pretrained run's `n x n`.
/// Returns the value of every [`HeadMetric`] and the `(max, mean)` deviation (with a prefix).
fn head_figures(with: Option<(&[f32], usize)>, pre: &[f32], n: usize) -> HeadFigures {
    let (src, cols, c0) = match with {
        Some((w, p)) => (w, p + n, p),
        None => (pre, n, 0),
    };
    let mean = |f: &dyn Fn(usize) -> f64, from: usize| -> Option<f32> {
        (n > from).then(|| (from..n).map(f).sum::<f64>() as f32 / (n - from) as f32)
    };
    let mut dev = None;
    let mut mass = None;
    if let Some((w, p)) = with {
        let (mut max, mut sum, mut mass_sum) = (0f32, 0f64, 0f64);
        for i in 0..n {
            let row = &w[i * (p + n)..(i + 1) * (p + n)];
            let content = &row[p..];
            let total: f32 = content.iter().sum();
            let pre_row = &pre[i * n..(i + 1) * n];
            let pre_total: f32 = pre_row.iter().sum();
            for j in 0..=i {
                let d = (content[j] / total - pre_row[j] / pre_total).abs();
                max = max.max(d);
                sum += d as f64;
            }
            mass_sum += row[..p].iter().sum::<f32>() as f64;
        }
        dev = Some((max, (sum / (n * (n + 1) / 2).max(1) as f64) as f32));
        mass = Some((mass_sum / n.max(1) as f64) as f32);
    }
    let figures = HeadMetric::ALL
        .into_iter()
        .map(|m| {
            let v = match m {
                HeadMetric::Deviation => dev.map(|d| d.0),
                HeadMetric::Entropy => Some(metrics::mean_row_entropy(src, n, cols)),
                HeadMetric::SinkMass => mean(&|i| src[i * cols + c0] as f64, 0),
                HeadMetric::PreviousToken => mean(&|i| src[i * cols + c0 + i - 1] as f64, 1),
                HeadMetric::PrefixMass => mass.filter(|_| n > 0),
            };
            (m, v)
        })
        .collect();
    (figures, dev)
}

/// Head `h` of layer `layer`: its views as a one-head [`LayerCapture`] (arrays `(1, N, ...)`), from
/// the prefixed run's `with` (`None` without a prefix) and the pretrained run's `pre` (content only,
/// no placeholder columns: RoPE models). `n`: content tokens.
pub fn head_views(
    layer: usize,
    h: usize,
    n: usize,
    with: Option<&LayerKv>,
    pre: &LayerKv,
) -> Result<LayerCapture> {
    let pre_run = pre.run(layer, h, n)?;
    let pv = capture::pretrained_views(&pre_run, 0)?;
    drop(pre_run);
    match with {
        Some(w) => {
            let run = w.run(layer, h, n)?;
            let p = run.pattern.dim(2)? - n;
            capture::layer_views(pv, Some(&run), p)
        }
        None => capture::layer_views(pv, None, 0),
    }
}

/// What the overview and the plots show for every layer, computed head by head.
#[derive(Debug, Clone, Default)]
pub struct Summaries {
    /// Per layer with a prefix: `(max, mean)` |renormalized − pretrained| per head (the deviation plot).
    pub deviations: Vec<LayerDeviations>,
    /// One grid per [`HeadMetric`], the overview's colourings (the deviation's is the overview).
    pub grids: Vec<(HeadMetric, Grid)>,
    /// Layer 0, all heads: max |renormalized − pretrained| (`None` without a prefix).
    pub layer0_renorm_diff: Option<f32>,
    /// Layer 0, all heads: the head-output identity error (`None` without a prefix).
    pub layer0_identity_error: Option<f32>,
}

impl Summaries {
    /// Empty grids for `n_layers x n_heads`.
    pub fn new(n_layers: usize, n_heads: usize) -> Self {
        Summaries {
            deviations: Vec::new(),
            grids: HeadMetric::ALL
                .into_iter()
                .map(|m| (m, vec![vec![None; n_heads]; n_layers]))
                .collect(),
            layer0_renorm_diff: None,
            layer0_identity_error: None,
        }
    }

    /// The grid of `metric`.
    pub fn grid(&self, metric: HeadMetric) -> Option<&Grid> {
        self.grids
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, g)| g)
    }

    /// Add the summaries of every head of one layer, whose one-head views `head(h)` makes (one head
    /// alive at a time).
    pub fn add_layer(
        &mut self,
        layer: usize,
        n_heads: usize,
        mut head: impl FnMut(usize) -> Result<LayerCapture>,
    ) -> Result<()> {
        let mut per_head = Vec::with_capacity(n_heads);
        let (mut worst, mut scale) = (None::<f32>, 1f32);
        for h in 0..n_heads {
            let lc = head(h)?;
            for (m, grid) in &mut self.grids {
                if let Some(cell) = grid.get_mut(layer).and_then(|r| r.get_mut(h)) {
                    *cell = metrics::head_metric(&lc, 0, *m);
                }
            }
            if let Some(d) = metrics::layer_deviations(&lc) {
                per_head.extend(d.per_head);
            }
            if layer == 0 {
                if let Some((w, s)) = lc.head_output_identity_parts(None) {
                    worst = Some(worst.unwrap_or(0.0).max(w));
                    scale = scale.max(s);
                }
            }
        }
        if layer == 0 {
            self.layer0_renorm_diff = self
                .grid(HeadMetric::Deviation)
                .and_then(|g| g.first())
                .and_then(|row| row.iter().copied().reduce(|a, b| Some(a?.max(b?))))
                .flatten();
            self.layer0_identity_error = worst.map(|w| w / scale);
        }
        if per_head.len() == n_heads && n_heads > 0 {
            self.deviations.push(LayerDeviations { layer, per_head });
        }
        Ok(())
    }

    /// Add the summaries of every head of one layer straight from each head's probabilities (one
    /// head's two maps alive at a time, no views made): every layer but 0, whose checks need the
    /// head outputs ([`Summaries::add_layer`]).
    pub fn add_layer_figures(
        &mut self,
        layer: usize,
        n: usize,
        with: Option<&LayerKv>,
        pre: &LayerKv,
    ) -> Result<()> {
        let mut per_head = Vec::with_capacity(pre.heads());
        for h in 0..pre.heads() {
            let (pre_probs, p_pre) = pre.probs(h, n)?;
            if p_pre != 0 {
                return Err(Error::Internal("pretrained run with placeholder columns"));
            }
            let with_probs = with.map(|w| w.probs(h, n)).transpose()?;
            let (figures, dev) = head_figures(
                with_probs.as_ref().map(|(w, p)| (w.as_slice(), *p)),
                &pre_probs,
                n,
            );
            for (m, grid) in &mut self.grids {
                if let (Some(cell), Some((_, v))) = (
                    grid.get_mut(layer).and_then(|r| r.get_mut(h)),
                    figures.iter().find(|(k, _)| k == m),
                ) {
                    *cell = *v;
                }
            }
            per_head.extend(dev);
        }
        if !per_head.is_empty() && per_head.len() == pre.heads() {
            self.deviations.push(LayerDeviations { layer, per_head });
        }
        Ok(())
    }

    /// Bytes held (the grids and deviations), for the memory tests.
    pub fn approx_bytes(&self) -> usize {
        self.grids
            .iter()
            .map(|(_, g)| g.iter().map(|r| r.len() * 8).sum::<usize>())
            .sum::<usize>()
            + self
                .deviations
                .iter()
                .map(|d| d.per_head.len() * 8)
                .sum::<usize>()
    }
}
