//! The paper's constructions (Theorems 1 and 2) as a model family.
//!
//! Exactly as the authors' `constructions.ipynb` computes them (`docs/paper-notes.md` §4):
//! - one attention layer whose scores are `softmax(T · q_i·k_j / sqrt(L))`, where `L` is the **current
//!   sequence length** (not the head dimension) and `T` an inverse temperature; causal mask;
//! - the heads are **summed** (every head writes the same `d_head`-wide space); no residual connection,
//!   no LayerNorm;
//! - optionally a stack of ReLU MLP blocks `ReLU(x W1 + b1) W2 + b2` (the two-token construction unpacks
//!   its map with them);
//! - the fixed decoder: `z = ReLU(1ᵀ ReLU(h - 1))`, logits `y_k = (2k/V - 1) z + 0.25 - (k/V)²`, so the
//!   argmax is the `k` whose `k/V` is nearest to `z`.
//!
//! The input at position `i` is `E[token] + P[i]`. A virtual token (a soft-prompt row) takes the place of
//! `E[token]`, and the model adds `P[i]` to it like to any token: a virtual token is a point of the same
//! space the `V` embedding rows live in, which is what the paper's hard-versus-soft argument is about.
//! A `Prefix::Hidden` row instead replaces the whole attention input (no position added), the paper's
//! per-layer form.
//!
//! The arithmetic runs in f64 (the weights and virtual tokens are f32, as stored); the captured tensors
//! are handed back in f32 like every other family's.

use crate::arrays::Array;
use crate::error::{Error, Result};
use crate::model::{Arch, LayerRun, LayerSel, ModelInfo, Run, Transformer};
use crate::prefix::Prefix;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Value of the safetensors metadata key `prefixscope.kind` for these files.
pub const KIND: &str = "construction";
/// Metadata key holding the JSON [`ConstructionConfig`].
pub const META_CONFIG: &str = "prefixscope.construction";

/// One attention head: its query/key width (heads may differ; the value width is shared).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadConfig {
    pub name: String,
    pub d_qk: usize,
}

/// One ReLU MLP block after the attention layer: `ReLU(x W1 + b1) W2 + b2`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpConfig {
    pub name: String,
    pub hidden: usize,
    pub d_out: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConstructionConfig {
    /// Which builder made it: `unconditional`, `conditional`, `long`, `two-token`.
    pub name: String,
    /// Output vocabulary (94: printable ASCII, token = code point - 32).
    pub vocab_size: usize,
    /// N: the number of positions (virtual tokens included).
    pub n_positions: usize,
    pub d_model: usize,
    /// T, the inverse temperature multiplying the scores.
    pub inv_temperature: f64,
    pub heads: Vec<HeadConfig>,
    /// Width every head writes into (the heads are summed).
    pub d_head: usize,
    pub mlps: Vec<MlpConfig>,
    /// How many virtual tokens the builder packs its target into.
    pub n_virtual: usize,
    /// Builder-specific numbers (alphabet, digits per coordinate, ...), for the host side that packs
    /// virtual tokens; the forward pass never reads them.
    #[serde(default)]
    pub extra: HashMap<String, f64>,
}

impl ConstructionConfig {
    /// Width of the decoder input (the last block's output).
    pub fn d_final(&self) -> usize {
        self.mlps.last().map_or(self.d_head, |m| m.d_out)
    }

    /// Every tensor the model needs and its shape, in file names.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.d_model;
        let mut v = vec![
            ("embed".to_string(), vec![self.vocab_size, d]),
            ("pos".to_string(), vec![self.n_positions, d]),
        ];
        for h in &self.heads {
            v.push((format!("attn.{}.w_q", h.name), vec![d, h.d_qk]));
            v.push((format!("attn.{}.w_k", h.name), vec![d, h.d_qk]));
            v.push((format!("attn.{}.w_v", h.name), vec![d, self.d_head]));
        }
        let mut d_in = self.d_head;
        for (i, m) in self.mlps.iter().enumerate() {
            v.push((format!("mlp.{i}.w1"), vec![d_in, m.hidden]));
            v.push((format!("mlp.{i}.b1"), vec![m.hidden]));
            v.push((format!("mlp.{i}.w2"), vec![m.hidden, m.d_out]));
            v.push((format!("mlp.{i}.b2"), vec![m.d_out]));
            d_in = m.d_out;
        }
        v
    }
}

/// Row-major f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }
    pub fn set(&mut self, r: usize, c: usize, v: f64) {
        self.data[r * self.cols + c] = v;
    }
    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// `self (n×k) @ w (k×m)`.
    pub fn matmul(&self, w: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows, w.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                if a == 0.0 {
                    continue;
                }
                let wr = w.row(k);
                let o = &mut out.data[i * w.cols..(i + 1) * w.cols];
                for (o, &b) in o.iter_mut().zip(wr) {
                    *o += a * b;
                }
            }
        }
        out
    }
    fn from_array(a: &Array) -> Self {
        let (rows, cols) = match a.shape.as_slice() {
            [r, c] => (*r, *c),
            [c] => (1, *c),
            _ => (1, a.data.len()),
        };
        Mat {
            rows,
            cols,
            data: a.data.iter().map(|&x| x as f64).collect(),
        }
    }
    pub fn to_array(&self) -> Array {
        Array {
            shape: vec![self.rows, self.cols],
            data: self.data.iter().map(|&x| x as f32).collect(),
        }
    }
}

struct Head {
    w_q: Mat,
    w_k: Mat,
    w_v: Mat,
}

struct Mlp {
    w1: Mat,
    b1: Vec<f64>,
    w2: Mat,
    b2: Vec<f64>,
}

/// Everything one forward pass computes, for all positions (prefix and content).
#[derive(Debug, Clone)]
pub struct Trace {
    /// Prefix length.
    pub p: usize,
    /// Per head, `(L, L)` attention (causal: zero above the diagonal).
    pub probs: Vec<Mat>,
    /// Per head, `(L, d_head)` value vectors.
    pub values: Vec<Mat>,
    /// Per head, `(L, d_head)` head outputs.
    pub z_heads: Vec<Mat>,
    /// `(L, d_final)`: the decoder input `h` (heads summed, then the MLP blocks).
    pub h: Mat,
    /// Per position, the decoder's scalar `z = ReLU(1ᵀ ReLU(h - 1))`.
    pub z: Vec<f64>,
    /// Logits at the last position, `(V,)`.
    pub logits_last: Vec<f64>,
}

/// A greedy continuation and how safely each character was decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated token ids (not including the prompt).
    pub ids: Vec<u32>,
    /// The decoder's `z` at each step.
    pub z: Vec<f64>,
    /// Per step, the distance from `z` to the nearest edge of the decoded token's cell
    /// `[(k - 1/2)/V, (k + 1/2)/V]`: how far `z` could move before the output changed. At most `1/(2V)`.
    pub margins: Vec<f64>,
}

impl Generation {
    /// The smallest margin over the steps (`f64::INFINITY` when nothing was generated).
    pub fn margin(&self) -> f64 {
        self.margins.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

pub struct Construction {
    cfg: ConstructionConfig,
    info: ModelInfo,
    embed: Mat,
    pos: Mat,
    heads: Vec<Head>,
    mlps: Vec<Mlp>,
}

/// The decoder's logits for a scalar `z` over a vocabulary of `v`.
pub fn decoder_logits(z: f64, v: usize) -> Vec<f64> {
    (0..v)
        .map(|k| {
            let kv = k as f64 / v as f64;
            (2.0 * kv - 1.0) * z + 0.25 - kv * kv
        })
        .collect()
}

/// The decoder's scalar `z = ReLU(1ᵀ ReLU(h - 1))`.
pub fn decoder_z(h: &[f64]) -> f64 {
    h.iter().map(|&x| (x - 1.0).max(0.0)).sum::<f64>().max(0.0)
}

/// Distance from `z` to the nearest edge of token `k`'s decoding cell (outer cells are open-ended).
pub fn decoder_margin(z: f64, k: usize, v: usize) -> f64 {
    let vf = v as f64;
    let mut m = f64::INFINITY;
    if k > 0 {
        m = m.min(z - (k as f64 - 0.5) / vf);
    }
    if k + 1 < v {
        m = m.min((k as f64 + 0.5) / vf - z);
    }
    m
}

fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Construction {
    /// Build from named weights (the builders and the file loader both come through here, so a saved
    /// model is checked exactly like a built one). `source` names the file in messages.
    pub fn load(
        tensors: &HashMap<String, Array>,
        cfg: &ConstructionConfig,
        source: &Path,
    ) -> Result<Self> {
        if cfg.vocab_size == 0 || cfg.n_positions == 0 || cfg.d_model == 0 || cfg.heads.is_empty() {
            return Err(Error::format(
                source,
                "construction config",
                "non-zero vocabulary, positions, width and at least one head",
                format!(
                    "V={}, N={}, d={}, {} heads",
                    cfg.vocab_size,
                    cfg.n_positions,
                    cfg.d_model,
                    cfg.heads.len()
                ),
            ));
        }
        if !(cfg.inv_temperature.is_finite() && cfg.inv_temperature > 0.0) {
            return Err(Error::format(
                source,
                "construction config field 'inv_temperature'",
                "a positive number",
                cfg.inv_temperature.to_string(),
            ));
        }
        let mut n_params = 0;
        let mut get = |name: &str, shape: &[usize]| -> Result<Mat> {
            let a = tensors
                .get(name)
                .ok_or_else(|| Error::missing(source, name))?;
            if a.shape != shape {
                return Err(Error::shape(source, name, shape, &a.shape));
            }
            if let Some(i) = a.data.iter().position(|x| !x.is_finite()) {
                return Err(Error::format(
                    source,
                    format!("tensor '{name}' element {i}"),
                    "a finite number",
                    a.data[i].to_string(),
                ));
            }
            n_params += a.data.len();
            Ok(Mat::from_array(a))
        };
        let d = cfg.d_model;
        let embed = get("embed", &[cfg.vocab_size, d])?;
        let pos = get("pos", &[cfg.n_positions, d])?;
        let mut heads = Vec::new();
        for h in &cfg.heads {
            heads.push(Head {
                w_q: get(&format!("attn.{}.w_q", h.name), &[d, h.d_qk])?,
                w_k: get(&format!("attn.{}.w_k", h.name), &[d, h.d_qk])?,
                w_v: get(&format!("attn.{}.w_v", h.name), &[d, cfg.d_head])?,
            });
        }
        let mut mlps = Vec::new();
        let mut d_in = cfg.d_head;
        for (i, m) in cfg.mlps.iter().enumerate() {
            let w1 = get(&format!("mlp.{i}.w1"), &[d_in, m.hidden])?;
            let b1 = get(&format!("mlp.{i}.b1"), &[m.hidden])?.data;
            let w2 = get(&format!("mlp.{i}.w2"), &[m.hidden, m.d_out])?;
            let b2 = get(&format!("mlp.{i}.b2"), &[m.d_out])?.data;
            mlps.push(Mlp { w1, b1, w2, b2 });
            d_in = m.d_out;
        }
        let info = ModelInfo {
            arch: Arch::Construction,
            n_layers: 1,
            n_heads: cfg.heads.len(),
            n_kv_heads: cfg.heads.len(),
            d_model: d,
            head_dim: cfg.d_head,
            vocab_size: cfg.vocab_size,
            max_positions: Some(cfg.n_positions),
            n_params,
            dtype: "f32 weights, f64 arithmetic".into(),
            source: format!("construction ({})", cfg.name),
        };
        Ok(Construction {
            cfg: cfg.clone(),
            info,
            embed,
            pos,
            heads,
            mlps,
        })
    }

    pub fn config(&self) -> &ConstructionConfig {
        &self.cfg
    }

    /// The named weights, as the file stores them.
    pub fn named_tensors(&self) -> Vec<(String, Array)> {
        let mut v = vec![
            ("embed".to_string(), self.embed.to_array()),
            ("pos".to_string(), self.pos.to_array()),
        ];
        for (hc, h) in self.cfg.heads.iter().zip(&self.heads) {
            v.push((format!("attn.{}.w_q", hc.name), h.w_q.to_array()));
            v.push((format!("attn.{}.w_k", hc.name), h.w_k.to_array()));
            v.push((format!("attn.{}.w_v", hc.name), h.w_v.to_array()));
        }
        for (i, m) in self.mlps.iter().enumerate() {
            let vec1 = |x: &[f64]| Array {
                shape: vec![x.len()],
                data: x.iter().map(|&v| v as f32).collect(),
            };
            v.push((format!("mlp.{i}.w1"), m.w1.to_array()));
            v.push((format!("mlp.{i}.b1"), vec1(&m.b1)));
            v.push((format!("mlp.{i}.w2"), m.w2.to_array()));
            v.push((format!("mlp.{i}.b2"), vec1(&m.b2)));
        }
        v
    }

    /// The rows entering the attention layer: prefix rows, then `E[id] + P[pos]` for the content.
    fn inputs(&self, ids: &[u32], prefix: Option<&Prefix>) -> Result<(Mat, usize)> {
        let d = self.cfg.d_model;
        if let Some(pf @ (Prefix::SoftPrompt(_) | Prefix::Hidden(_))) = prefix {
            // Shape, finiteness and room in the context, with the usual messages.
            pf.check(&self.info, Path::new("prefix"))?;
        }
        let (rows, p, add_pos): (Vec<&[f32]>, usize, bool) = match prefix {
            None => (vec![], 0, true),
            Some(Prefix::SoftPrompt(a)) => {
                if a.shape.len() != 2 || a.shape[1] != d {
                    return Err(Error::shape(
                        "prefix",
                        "soft_prompt",
                        format!("[P, {d}]"),
                        &a.shape,
                    ));
                }
                (a.data.chunks(d).collect(), a.shape[0], true)
            }
            Some(Prefix::Hidden(a)) => {
                if a.shape.len() != 3 || a.shape[0] != 1 || a.shape[2] != d {
                    return Err(Error::shape(
                        "prefix",
                        "prefix",
                        format!("[1, P, {d}]"),
                        &a.shape,
                    ));
                }
                (a.data.chunks(d).collect(), a.shape[1], false)
            }
            Some(Prefix::KeyValue { .. }) => {
                return Err(Error::unsupported(
                    "prefix",
                    "prefix kind for a construction",
                    "key/value prefix (its heads have different query/key and value widths)",
                    "soft prompt, per-layer (hidden) prefix",
                ))
            }
        };
        let len = p + ids.len();
        if len > self.cfg.n_positions {
            return Err(Error::input(
                "sequence length",
                format!(
                    "prefix + content <= {} positions (the construction's N)",
                    self.cfg.n_positions
                ),
                format!("{p} + {} = {len}", ids.len()),
            ));
        }
        if len == 0 {
            return Err(Error::input(
                "sequence",
                "at least one virtual or real token",
                "nothing",
            ));
        }
        let mut x = Mat::zeros(len, d);
        for (i, r) in rows.iter().enumerate() {
            for c in 0..d {
                let pv = if add_pos { self.pos.at(i, c) } else { 0.0 };
                x.set(i, c, r[c] as f64 + pv);
            }
        }
        for (j, &id) in ids.iter().enumerate() {
            if id as usize >= self.cfg.vocab_size {
                return Err(Error::input(
                    format!("token id at index {j}"),
                    format!("an id below the vocabulary size {}", self.cfg.vocab_size),
                    id.to_string(),
                ));
            }
            let i = p + j;
            for c in 0..d {
                x.set(i, c, self.embed.at(id as usize, c) + self.pos.at(i, c));
            }
        }
        Ok((x, p))
    }

    /// One forward pass over `prefix` then `ids`, keeping everything.
    pub fn trace(&self, ids: &[u32], prefix: Option<&Prefix>) -> Result<Trace> {
        let (x, p) = self.inputs(ids, prefix)?;
        Ok(self.trace_inputs(&x, p))
    }

    fn trace_inputs(&self, x: &Mat, p: usize) -> Trace {
        let l = x.rows;
        // The notebook's scaling: the current sequence length, not the head width.
        let scale = self.cfg.inv_temperature / (l as f64).sqrt();
        let mut h = Mat::zeros(l, self.cfg.d_head);
        let (mut probs, mut values, mut z_heads) = (vec![], vec![], vec![]);
        for head in &self.heads {
            let q = x.matmul(&head.w_q);
            let k = x.matmul(&head.w_k);
            let v = x.matmul(&head.w_v);
            let mut a = Mat::zeros(l, l);
            for i in 0..l {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        scale
                            * q.row(i)
                                .iter()
                                .zip(k.row(j))
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&s| (s - mx).exp()).collect();
                let tot: f64 = e.iter().sum();
                for (j, e) in e.iter().enumerate() {
                    a.set(i, j, e / tot);
                }
            }
            let z = a.matmul(&v);
            for (o, zz) in h.data.iter_mut().zip(&z.data) {
                *o += zz;
            }
            probs.push(a);
            values.push(v);
            z_heads.push(z);
        }
        for m in &self.mlps {
            let mut hid = h.matmul(&m.w1);
            for r in 0..l {
                for (c, b) in m.b1.iter().enumerate() {
                    let v = hid.at(r, c) + b;
                    hid.set(r, c, v.max(0.0));
                }
            }
            let mut out = hid.matmul(&m.w2);
            for r in 0..l {
                for (c, b) in m.b2.iter().enumerate() {
                    let v = out.at(r, c) + b;
                    out.set(r, c, v);
                }
            }
            h = out;
        }
        let z: Vec<f64> = (0..l).map(|r| decoder_z(h.row(r))).collect();
        let logits_last = decoder_logits(z[l - 1], self.cfg.vocab_size);
        Trace {
            p,
            probs,
            values,
            z_heads,
            h,
            z,
            logits_last,
        }
    }

    /// Greedy generation after `prefix` and `prompt`: each step runs the whole sequence (the score
    /// scale depends on its length) and appends the argmax. Stops after `max_new` tokens or when the
    /// next token would fall past position N (the last prediction, at position N-1, is still emitted).
    pub fn generate(
        &self,
        prefix: Option<&Prefix>,
        prompt: &[u32],
        max_new: Option<usize>,
    ) -> Result<Generation> {
        let p = prefix.map_or(0, |x| x.len());
        let n_max = self.cfg.n_positions;
        let room = (n_max + 1).saturating_sub(p + prompt.len());
        let steps = max_new.map_or(room, |m| m.min(room));
        let mut ids = prompt.to_vec();
        let mut out = Generation {
            ids: vec![],
            z: vec![],
            margins: vec![],
        };
        for _ in 0..steps {
            let tr = self.trace(&ids, prefix)?;
            let k = argmax(&tr.logits_last);
            let z = *tr.z.last().unwrap_or(&0.0);
            out.ids.push(k as u32);
            out.z.push(z);
            out.margins.push(decoder_margin(z, k, self.cfg.vocab_size));
            ids.push(k as u32);
        }
        Ok(out)
    }

    fn run(&self, x: &Mat, p: usize, sel: &LayerSel) -> Result<Run> {
        let tr = self.trace_inputs(x, p);
        let l = x.rows;
        let n = l - p;
        let dh = self.cfg.d_head;
        let h_n = self.heads.len();
        let dev = Device::Cpu;
        let mut layers = vec![];
        if sel.contains(0) {
            let mut pat = Vec::with_capacity(h_n * n * l);
            let mut val = Vec::with_capacity(h_n * l * dh);
            let mut zz = Vec::with_capacity(h_n * n * dh);
            for hh in 0..h_n {
                for i in p..l {
                    pat.extend(tr.probs[hh].row(i).iter().map(|&v| v as f32));
                    zz.extend(tr.z_heads[hh].row(i).iter().map(|&v| v as f32));
                }
                val.extend(tr.values[hh].data.iter().map(|&v| v as f32));
            }
            layers.push(LayerRun {
                layer: 0,
                pattern: Tensor::from_vec(pat, (h_n, n, l), &dev)?,
                values: Tensor::from_vec(val, (h_n, l, dh), &dev)?,
                z: Tensor::from_vec(zz, (h_n, n, dh), &dev)?,
            });
        }
        let logits: Vec<f32> = tr.logits_last.iter().map(|&v| v as f32).collect();
        let nv = logits.len();
        Ok(Run {
            p,
            n,
            layers,
            logits_last: Tensor::from_vec(logits, nv, &dev)?,
        })
    }

    /// Write the model as a prefixscope `.safetensors` (metadata `prefixscope.kind` = `construction`
    /// and the config as JSON), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named = self.named_tensors();
        let tensors: Vec<(String, Tensor)> = named
            .iter()
            .map(|(n, a)| Ok((n.clone(), a.to_tensor()?)))
            .collect::<candle_core::Result<_>>()?;
        let cfg = serde_json::to_string(&self.cfg)
            .map_err(|e| Error::format(path, "construction config", "JSON", e.to_string()))?;
        let meta: HashMap<String, String> = [
            ("prefixscope.kind".to_string(), KIND.to_string()),
            (META_CONFIG.to_string(), cfg),
        ]
        .into_iter()
        .collect();
        let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| {
            Error::format(path, "safetensors", "serializable tensors", e.to_string())
        })?;
        crate::arrays::write_atomic(path, &bytes)
    }

    /// Read a file written by [`Construction::save`] (`load::load` dispatches here on the metadata).
    pub fn load_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::format(
                path,
                "safetensors header",
                "a valid header",
                format!("{e:?}"),
            )
        })?;
        let md = meta.metadata().clone().unwrap_or_default();
        match md.get("prefixscope.kind").map(String::as_str) {
            Some(KIND) => {}
            other => {
                return Err(Error::format(
                    path,
                    "metadata 'prefixscope.kind'",
                    KIND,
                    format!("{other:?}"),
                ))
            }
        }
        let cfg_json = md.get(META_CONFIG).ok_or_else(|| {
            Error::format(
                path,
                format!("metadata '{META_CONFIG}'"),
                "the construction config",
                "nothing",
            )
        })?;
        let cfg: ConstructionConfig = serde_json::from_str(cfg_json).map_err(|e| {
            Error::format(
                path,
                format!("metadata '{META_CONFIG}'"),
                "a construction config in JSON",
                e.to_string(),
            )
        })?;
        let ts = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::format(
                path,
                "safetensors tensors",
                "readable tensors",
                e.to_string(),
            )
        })?;
        let mut arrays = HashMap::new();
        for (k, t) in ts {
            arrays.insert(k, Array::from_tensor(&t)?);
        }
        Construction::load(&arrays, &cfg, path)
    }
}

impl Transformer for Construction {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, ids: &[u32], prefix: Option<&Prefix>, layers: &LayerSel) -> Result<Run> {
        let (x, p) = self.inputs(ids, prefix)?;
        self.run(&x, p, layers)
    }

    /// Learned (one-hot) positions: the content stays at `p..p+n` behind `p` copies of token 0 (space),
    /// a hard token where the prefix was.
    fn pretrained(&self, ids: &[u32], p: usize, layers: &LayerSel) -> Result<Run> {
        let mut all = vec![0u32; p];
        all.extend_from_slice(ids);
        let (x, _) = self.inputs(&all, None)?;
        self.run(&x, p, layers)
    }

    fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        if id as usize >= self.cfg.vocab_size {
            return Err(Error::input(
                "token id",
                format!("below {}", self.cfg.vocab_size),
                id.to_string(),
            ));
        }
        Ok(self
            .embed
            .row(id as usize)
            .iter()
            .map(|&v| v as f32)
            .collect())
    }
}

/// Open a construction file as a [`crate::load::Loaded`] (printable-ASCII tokenizer): what
/// `load::load` calls for a `.safetensors` whose `prefixscope.kind` is `construction`.
pub fn open(path: &Path) -> Result<crate::load::Loaded> {
    let m = Construction::load_file(path)?;
    let vocab = m.config().vocab_size;
    Ok(crate::load::Loaded {
        model: Box::new(m),
        tokenizer: crate::tokenizer::Tokenizer::Ascii { vocab },
        path: path.to_path_buf(),
    })
}

/// The `prefixscope.kind` metadata of a safetensors file, reading only its header.
pub fn safetensors_kind(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(Error::format(
            path,
            "safetensors header length",
            "at most 100 MB",
            n.to_string(),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::format(path, "safetensors header", "JSON", e.to_string()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.get("prefixscope.kind"))
        .and_then(|k| k.as_str())
        .map(str::to_string))
}
