//! LLaMA-style family: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, tied or untied output.
//!
//! Weights are held in Hugging Face layout (query/key rows in rotate-half order), whichever file they
//! came from: the GGUF loader undoes llama.cpp's row permutation, so one forward serves both.

use super::attention::concat_heads;
use super::{Arch, LayerSel, ModelInfo, Run, Transformer};
use crate::error::{Error, Result};
use crate::incremental::{ContentKv, Stepper};
use crate::prefix::Prefix;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

/// The fields of a Hugging Face `config.json` we use (GGUF metadata is mapped onto the same struct).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}

impl LlamaConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

impl LlamaConfig {
    /// Every tensor the model needs, in Hugging Face names, with its shape `(out, in)`.
    /// Loaders check a file against this before building the model, so a config that disagrees with
    /// the weights is reported by tensor name.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.hidden_size;
        let (h, kv, hd, f) = (
            self.num_attention_heads,
            self.n_kv_heads(),
            self.head_dim(),
            self.intermediate_size,
        );
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, d],
        )];
        for i in 0..self.num_hidden_layers {
            let b = format!("model.layers.{i}");
            v.push((format!("{b}.input_layernorm.weight"), vec![d]));
            v.push((format!("{b}.self_attn.q_proj.weight"), vec![h * hd, d]));
            v.push((format!("{b}.self_attn.k_proj.weight"), vec![kv * hd, d]));
            v.push((format!("{b}.self_attn.v_proj.weight"), vec![kv * hd, d]));
            v.push((format!("{b}.self_attn.o_proj.weight"), vec![d, h * hd]));
            v.push((format!("{b}.post_attention_layernorm.weight"), vec![d]));
            v.push((format!("{b}.mlp.gate_proj.weight"), vec![f, d]));
            v.push((format!("{b}.mlp.up_proj.weight"), vec![f, d]));
            v.push((format!("{b}.mlp.down_proj.weight"), vec![d, f]));
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        v
    }

    /// Sizes that must agree with each other before any tensor is read.
    pub fn validate(&self, file: &std::path::Path) -> Result<()> {
        let h = self.num_attention_heads;
        let kv = self.n_kv_heads();
        let bad = |field: &str, expected: String, found: String| {
            Err(Error::format(file, field, expected, found))
        };
        if h == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return bad(
                "sizes",
                "non-zero heads, hidden size, layers, vocabulary".into(),
                format!("{self:?}"),
            );
        }
        if kv == 0 || !h.is_multiple_of(kv) {
            return bad(
                "num_key_value_heads",
                format!("a divisor of num_attention_heads = {h}"),
                kv.to_string(),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(
                "head_dim",
                "an even number (RoPE rotates pairs)".into(),
                self.head_dim().to_string(),
            );
        }
        Ok(())
    }
}

/// A projection `x -> x W^T`: f32 weights stored transposed `(in, out)` for a plain matmul, or weights
/// kept in their GGUF blocks `(out, in)`.
///
/// A quantized weight is dequantized for each product and multiplied in f32. candle's `QMatMul`
/// instead quantizes the activations to Q8 (as llama.cpp does), which moved SmolLM2's final logits
/// by up to 4.8 and flipped the argmax of the fixtures' key/value-prefix run; dequantizing is exact
/// for these formats, so quantized mode gives the f32 mode's numbers at a third of its memory (one
/// weight at a time is f32), and on 2 cores it is also faster (the f32 product runs on OpenBLAS).
pub enum Linear {
    Dense(Tensor),
    Quant(std::sync::Arc<QTensor>),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Dense(w) => super::blas::matmul(x, w),
            Linear::Quant(q) => super::blas::matmul_t(x, &q.dequantize(&Device::Cpu)?),
        }
    }
}

/// The q, k, v projections: fused into one `(d, (H + 2 KV) hd)` matmul in f32 (the prefix path reads
/// the k and v column blocks as views, so no weight is stored twice), or three quantized ones.
enum Qkv {
    Fused(Tensor),
    Split(Linear, Linear, Linear),
}

/// Gate and up: fused `(d, 2 ffn)` in f32, or two quantized projections.
enum GateUp {
    Fused(Tensor),
    Split(Linear, Linear),
}

struct Block {
    attn_norm: Tensor,
    qkv: Qkv,
    w_o: Linear,
    ffn_norm: Tensor,
    gate_up: GateUp,
    w_down: Linear,
}

impl Block {
    /// `(t, d)` normed input -> q `(t, H hd)`, k, v `(t, KV hd)`.
    fn qkv(
        &self,
        xn: &Tensor,
        h: usize,
        kv: usize,
        hd: usize,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        match &self.qkv {
            Qkv::Fused(w) => {
                let qkv = super::blas::matmul(xn, w)?;
                Ok((
                    qkv.narrow(1, 0, h * hd)?,
                    qkv.narrow(1, h * hd, kv * hd)?,
                    qkv.narrow(1, (h + kv) * hd, kv * hd)?,
                ))
            }
            Qkv::Split(q, k, v) => Ok((q.forward(xn)?, k.forward(xn)?, v.forward(xn)?)),
        }
    }

    /// Keys and values only (for prefix hidden states).
    fn kv(
        &self,
        xn: &Tensor,
        h: usize,
        kv: usize,
        hd: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match &self.qkv {
            Qkv::Fused(w) => Ok((
                xn.matmul(&w.narrow(1, h * hd, kv * hd)?)?,
                xn.matmul(&w.narrow(1, (h + kv) * hd, kv * hd)?)?,
            )),
            Qkv::Split(_, k, v) => Ok((k.forward(xn)?, v.forward(xn)?)),
        }
    }

    fn mlp(&self, xn: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Fused(w) => {
                let gu = super::blas::matmul(xn, w)?;
                let ffn = gu.dim(1)? / 2;
                (gu.narrow(1, 0, ffn)?, gu.narrow(1, ffn, ffn)?)
            }
            GateUp::Split(g, u) => (g.forward(xn)?, u.forward(xn)?),
        };
        self.w_down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `(vocab, d)`: the embedding itself when tied (used through a transposed view, not copied);
    /// quantized in quantized mode.
    lm_head: Head,
    /// RoPE inverse frequencies, `(hd / 2,)`.
    inv_freq: Vec<f32>,
    /// cos/sin tables for positions `0..len`, grown on demand: every layer of every run needs the
    /// same rows, and computing them took 4,096 cos/sin pairs per layer at N = 128.
    rope_cache: std::sync::Mutex<Option<(Tensor, Tensor)>>,
}

enum Head {
    Dense(Tensor),
    Quant(QMatMul),
}

/// `(out, in)` weight -> contiguous `(in, out)` so that `x @ w` is a plain matmul.
fn t(w: Tensor) -> candle_core::Result<Tensor> {
    w.t()?.contiguous()
}

impl Llama {
    /// Load from a `VarBuilder` with Hugging Face tensor names (`model.layers.{i}.self_attn.q_proj.weight`, ...).
    /// `source` and `dtype` describe where the weights came from for `inspect`.
    pub fn load(
        vb: VarBuilder,
        cfg: &LlamaConfig,
        source: &str,
        dtype: &str,
    ) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
        let ffn = cfg.intermediate_size;
        let mut n_params = 0usize;
        let mut get =
            |vb: &VarBuilder, name: &str, shape: &[usize]| -> candle_core::Result<Tensor> {
                let w = vb.get(shape, name)?.to_dtype(DType::F32)?;
                n_params += w.elem_count();
                Ok(w)
            };
        let m = vb.pp("model");
        let embed = get(&m, "embed_tokens.weight", &[cfg.vocab_size, d])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = m.pp(format!("layers.{i}"));
            let wq = get(&b, "self_attn.q_proj.weight", &[h * hd, d])?;
            let wk = get(&b, "self_attn.k_proj.weight", &[kv * hd, d])?;
            let wv = get(&b, "self_attn.v_proj.weight", &[kv * hd, d])?;
            let wo = get(&b, "self_attn.o_proj.weight", &[d, h * hd])?;
            let wg = get(&b, "mlp.gate_proj.weight", &[ffn, d])?;
            let wu = get(&b, "mlp.up_proj.weight", &[ffn, d])?;
            let wd = get(&b, "mlp.down_proj.weight", &[d, ffn])?;
            blocks.push(Block {
                attn_norm: get(&b, "input_layernorm.weight", &[d])?,
                qkv: Qkv::Fused(Tensor::cat(&[&t(wq)?, &t(wk)?, &t(wv)?], 1)?),
                w_o: Linear::Dense(t(wo)?),
                ffn_norm: get(&b, "post_attention_layernorm.weight", &[d])?,
                gate_up: GateUp::Fused(Tensor::cat(&[&t(wg)?, &t(wu)?], 1)?),
                w_down: Linear::Dense(t(wd)?),
            });
        }
        let norm = get(&m, "norm.weight", &[d])?;
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            embed.clone()
        } else {
            get(&vb, "lm_head.weight", &[cfg.vocab_size, d])?
        };
        Ok(Self::assemble(
            cfg,
            embed,
            blocks,
            norm,
            Head::Dense(lm_head),
            n_params,
            source,
            dtype,
        ))
    }

    /// Keep every 2-D weight quantized (`QMatMul`); norms and the embedding table (a lookup) in f32.
    /// For checkpoints that would not fit in memory as f32, at the quantized tolerances of
    /// `conventions.md`. `get` returns a weight by Hugging Face name, Q/K rows already in HF order.
    pub fn load_quantized(
        cfg: &LlamaConfig,
        mut get_q: impl FnMut(&str) -> crate::Result<candle_core::quantized::QTensor>,
        mut get_f32: impl FnMut(&str) -> crate::Result<Tensor>,
        source: &str,
        dtype: &str,
    ) -> crate::Result<Self> {
        let mut n_params = 0usize;
        let mut q = |name: &str| -> crate::Result<std::sync::Arc<QTensor>> {
            let t = get_q(name)?;
            n_params += t.shape().elem_count();
            Ok(std::sync::Arc::new(t))
        };
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        let mut norms = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let b = format!("model.layers.{i}");
            blocks.push(Block {
                attn_norm: Tensor::zeros(1, DType::F32, &Device::Cpu)?,
                qkv: Qkv::Split(
                    Linear::Quant(q(&format!("{b}.self_attn.q_proj.weight"))?),
                    Linear::Quant(q(&format!("{b}.self_attn.k_proj.weight"))?),
                    Linear::Quant(q(&format!("{b}.self_attn.v_proj.weight"))?),
                ),
                w_o: Linear::Quant(q(&format!("{b}.self_attn.o_proj.weight"))?),
                ffn_norm: Tensor::zeros(1, DType::F32, &Device::Cpu)?,
                gate_up: GateUp::Split(
                    Linear::Quant(q(&format!("{b}.mlp.gate_proj.weight"))?),
                    Linear::Quant(q(&format!("{b}.mlp.up_proj.weight"))?),
                ),
                w_down: Linear::Quant(q(&format!("{b}.mlp.down_proj.weight"))?),
            });
            norms.push((
                format!("{b}.input_layernorm.weight"),
                format!("{b}.post_attention_layernorm.weight"),
            ));
        }
        // A tied head reads the f32 table the lookup needs anyway: no second copy, exact logits.
        let head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(q("lm_head.weight")?)
        };
        let mut f = |name: &str| -> crate::Result<Tensor> {
            let t = get_f32(name)?;
            n_params += t.elem_count();
            Ok(t)
        };
        for (b, (an, fnm)) in blocks.iter_mut().zip(norms) {
            b.attn_norm = f(&an)?;
            b.ffn_norm = f(&fnm)?;
        }
        let norm = f("model.norm.weight")?;
        let embed = f("model.embed_tokens.weight")?;
        let head = match head {
            // One row of logits: candle's QMatMul (Q8 activations) keeps the big head quantized.
            Some(q) => Head::Quant(QMatMul::QTensor(q)),
            None => Head::Dense(embed.clone()),
        };
        Ok(Self::assemble(
            cfg, embed, blocks, norm, head, n_params, source, dtype,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: &LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Head,
        n_params: usize,
        source: &str,
        dtype: &str,
    ) -> Self {
        let (h, kv, hd, d) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.hidden_size,
        );
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0 / (cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let info = ModelInfo {
            arch: Arch::Llama,
            n_layers: cfg.num_hidden_layers,
            n_heads: h,
            n_kv_heads: kv,
            d_model: d,
            head_dim: hd,
            vocab_size: cfg.vocab_size,
            max_positions: None,
            n_params,
            dtype: dtype.to_string(),
            source: source.to_string(),
        };
        Llama {
            cfg: cfg.clone(),
            info,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
            rope_cache: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// cos/sin tables `(t, hd/2)` for positions `start..start + t`, from the cache.
    fn rope_tables(&self, start: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let end = start + t;
        let mut cache = self
            .rope_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let have = cache.as_ref().map_or(0, |(c, _)| c.dim(0).unwrap_or(0));
        if have < end {
            *cache = Some(self.compute_rope_tables(end.max(2 * have).max(256))?);
        }
        let Some((cos, sin)) = cache.as_ref() else {
            candle_core::bail!("RoPE table cache is empty after filling it");
        };
        Ok((cos.narrow(0, start, t)?, sin.narrow(0, start, t)?))
    }

    /// cos/sin tables `(len, hd/2)` for positions `0..len`.
    fn compute_rope_tables(&self, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for &f in &self.inv_freq {
                // Angles in f64 so long positions keep their precision, then f32 like the reference.
                let a = pos as f64 * f as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (len, half), &Device::Cpu)?,
        ))
    }

    /// `(t, n*hd)` -> `(n, t, hd)`.
    fn heads(x: &Tensor, n: usize, hd: usize) -> candle_core::Result<Tensor> {
        let t = x.dim(0)?;
        x.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()
    }

    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::rotary_emb::rope(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)
    }

    fn run(&self, ids: &[u32], prefix: Option<&Prefix>, sel: &LayerSel) -> Result<Run> {
        let positions = ids.len() + prefix.map_or(0, |p| p.len());
        crate::incremental::on_compute_pool(self, positions, || {
            crate::incremental::full_run(self, ids, prefix, sel)
        })
    }
}

impl Stepper for Llama {
    fn embed_input(&self, ids: &[u32], prefix: Option<&Prefix>) -> Result<(Tensor, usize)> {
        let n = ids.len();
        let ids_t = Tensor::from_slice(ids, n, &Device::Cpu)?;
        let content = self.embed.index_select(&ids_t, 0)?;
        let p = prefix.map_or(0, |x| x.len());
        // The residual stream holds the soft prompt rows too; the other kinds enter per layer as
        // key/value columns, with the content at positions p..p+n.
        Ok(match prefix {
            Some(Prefix::SoftPrompt(a)) => (Tensor::cat(&[&a.to_tensor()?, &content], 0)?, 0),
            Some(_) => (content, p),
            None => (content, 0),
        })
    }

    fn layer_content(&self, l: usize, x: &Tensor, pos0: usize) -> Result<ContentKv> {
        let (h, kv, hd) = (self.info.n_heads, self.info.n_kv_heads, self.info.head_dim);
        let b = &self.blocks[l];
        let t_len = x.dim(0)?;
        let (cos, sin) = self.rope_tables(pos0, t_len)?;
        let xn = candle_nn::ops::rms_norm(x, &b.attn_norm, self.cfg.rms_norm_eps as f32)?;
        let (q, k, v) = b.qkv(&xn, h, kv, hd)?;
        let q = Self::rope(&Self::heads(&q, h, hd)?, &cos, &sin)?;
        let k = Self::rope(&Self::heads(&k, kv, hd)?, &cos, &sin)?;
        let v = Self::heads(&v, kv, hd)?;
        ContentKv::new(q, k, v, 1.0 / (hd as f64).sqrt())
    }

    fn prefix_kv(&self, l: usize, prefix: Option<&Prefix>) -> Result<Option<(Tensor, Tensor)>> {
        let (kv, hd) = (self.info.n_kv_heads, self.info.head_dim);
        let b = &self.blocks[l];
        let Some(pf) = prefix else { return Ok(None) };
        if let Some(s) = pf.hidden_layer(l)? {
            let p = s.dim(0)?;
            let sn = candle_nn::ops::rms_norm(&s, &b.attn_norm, self.cfg.rms_norm_eps as f32)?;
            let (pk, pv) = b.kv(&sn, self.info.n_heads, kv, hd)?;
            let (pk, pv) = (Self::heads(&pk, kv, hd)?, Self::heads(&pv, kv, hd)?);
            // The paper's form: prefix keys are rotated at their own positions 0..P.
            let (pc, ps) = self.rope_tables(0, p)?;
            return Ok(Some((Self::rope(&pk, &pc, &ps)?, pv)));
        }
        Ok(pf.key_value_layer(l)?)
    }

    fn layer_finish(&self, l: usize, x: &Tensor, z: &Tensor) -> Result<Tensor> {
        let b = &self.blocks[l];
        let eps = self.cfg.rms_norm_eps as f32;
        let x = (x + b.w_o.forward(&concat_heads(z)?)?)?;
        let xn = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
        Ok((&x + b.mlp(&xn)?)?)
    }

    fn logits_last(&self, x: &Tensor) -> Result<Tensor> {
        let t_len = x.dim(0)?;
        let last = x.narrow(0, t_len - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.cfg.rms_norm_eps as f32)?;
        let logits = match &self.lm_head {
            Head::Dense(w) => last.matmul(&w.t()?)?,
            Head::Quant(q) => q.forward(&last)?,
        };
        Ok(logits.squeeze(0)?)
    }

    fn n_layers(&self) -> usize {
        self.blocks.len()
    }
}

impl Transformer for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, ids: &[u32], prefix: Option<&Prefix>, layers: &LayerSel) -> Result<Run> {
        if let Some(pf) = prefix {
            pf.check(&self.info, std::path::Path::new("prefix"))?;
        }
        self.run(ids, prefix, layers)
    }

    fn pretrained(&self, ids: &[u32], _p: usize, layers: &LayerSel) -> Result<Run> {
        // RoPE scores depend only on i - j: the content alone at 0..n is the pretrained run.
        self.run(ids, None, layers)
    }

    fn stepper(&self) -> Option<&dyn Stepper> {
        Some(self)
    }

    fn blas_projections(&self) -> bool {
        // f32 and dequantized weights alike go through `blas::matmul`/`matmul_t`.
        super::blas::active()
    }

    fn attn_block_output(&self, layer: usize, z: &Tensor) -> Result<Tensor> {
        let b = self.blocks.get(layer).ok_or_else(|| {
            Error::input(
                "layer",
                format!("below {}", self.blocks.len()),
                layer.to_string(),
            )
        })?;
        Ok(b.w_o.forward(&concat_heads(z)?)?)
    }

    fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        if id as usize >= self.info.vocab_size {
            return Err(Error::input(
                "token id",
                format!("below {}", self.info.vocab_size),
                id.to_string(),
            ));
        }
        Ok(self.embed.get(id as usize)?.to_vec1::<f32>()?)
    }
}
