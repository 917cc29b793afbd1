//! LLaMA-style family: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, tied or untied output.
//!
//! Weights are held in Hugging Face layout (query/key rows in rotate-half order), whichever file they
//! came from: the GGUF loader undoes llama.cpp's row permutation, so one forward serves both.

use super::{Arch, LayerSel, ModelInfo, Run, Transformer};
use crate::error::{Error, Result};
use crate::incremental::{ContentKv, Stepper};
use crate::prefix::Prefix;
use candle_core::{DType, Device, Tensor};
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

struct Block {
    attn_norm: Tensor,
    /// `(d, (H + 2 KV) hd)`: q, k, v projections fused and transposed for one matmul. The prefix path
    /// reads the k and v column blocks of it as views, so no weight is stored twice.
    w_qkv: Tensor,
    w_o: Tensor,
    ffn_norm: Tensor,
    /// `(d, 2 ffn)`: gate and up fused and transposed.
    w_gate_up: Tensor,
    w_down: Tensor,
}

pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `(vocab, d)`: the embedding itself when tied (used through a transposed view, not copied).
    lm_head: Tensor,
    /// RoPE inverse frequencies, `(hd / 2,)`.
    inv_freq: Vec<f32>,
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
                w_qkv: Tensor::cat(&[&t(wq)?, &t(wk)?, &t(wv)?], 1)?,
                w_o: t(wo)?,
                ffn_norm: get(&b, "post_attention_layernorm.weight", &[d])?,
                w_gate_up: Tensor::cat(&[&t(wg)?, &t(wu)?], 1)?,
                w_down: t(wd)?,
            });
        }
        let norm = get(&m, "norm.weight", &[d])?;
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            embed.clone()
        } else {
            get(&vb, "lm_head.weight", &[cfg.vocab_size, d])?
        };
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
        Ok(Llama {
            cfg: cfg.clone(),
            info,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// cos/sin tables `(t, hd/2)` for positions `start..start + t`.
    fn rope_tables(&self, start: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in start..start + t {
            for &f in &self.inv_freq {
                // Angles in f64 so long positions keep their precision, then f32 like the reference.
                let a = pos as f64 * f as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (t, half), &Device::Cpu)?,
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
        crate::incremental::full_run(self, ids, prefix, sel)
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
        let qkv = xn.matmul(&b.w_qkv)?;
        let q = Self::rope(&Self::heads(&qkv.narrow(1, 0, h * hd)?, h, hd)?, &cos, &sin)?;
        let k = Self::rope(
            &Self::heads(&qkv.narrow(1, h * hd, kv * hd)?, kv, hd)?,
            &cos,
            &sin,
        )?;
        let v = Self::heads(&qkv.narrow(1, (h + kv) * hd, kv * hd)?, kv, hd)?;
        ContentKv::new(q, k, v, 1.0 / (hd as f64).sqrt())
    }

    fn prefix_kv(&self, l: usize, prefix: Option<&Prefix>) -> Result<Option<(Tensor, Tensor)>> {
        let (kv, hd) = (self.info.n_kv_heads, self.info.head_dim);
        let b = &self.blocks[l];
        Ok(match prefix {
            Some(Prefix::Hidden(a)) => {
                let p = a.shape[1];
                let s = Tensor::from_slice(
                    &a.data[l * p * a.shape[2]..(l + 1) * p * a.shape[2]],
                    (p, a.shape[2]),
                    &Device::Cpu,
                )?;
                let sn = candle_nn::ops::rms_norm(&s, &b.attn_norm, self.cfg.rms_norm_eps as f32)?;
                let h = self.info.n_heads;
                let pk = Self::heads(&sn.matmul(&b.w_qkv.narrow(1, h * hd, kv * hd)?)?, kv, hd)?;
                let pv = Self::heads(
                    &sn.matmul(&b.w_qkv.narrow(1, (h + kv) * hd, kv * hd)?)?,
                    kv,
                    hd,
                )?;
                // The paper's form: prefix keys are rotated at their own positions 0..P.
                let (pc, ps) = self.rope_tables(0, p)?;
                Some((Self::rope(&pk, &pc, &ps)?, pv))
            }
            Some(Prefix::KeyValue { keys, values }) => {
                let per = keys.shape[1] * keys.shape[2] * keys.shape[3];
                let shape = (keys.shape[1], keys.shape[2], keys.shape[3]);
                Some((
                    Tensor::from_slice(&keys.data[l * per..(l + 1) * per], shape, &Device::Cpu)?,
                    Tensor::from_slice(&values.data[l * per..(l + 1) * per], shape, &Device::Cpu)?,
                ))
            }
            _ => None,
        })
    }

    fn layer_finish(&self, l: usize, x: &Tensor, z: &Tensor) -> Result<Tensor> {
        let b = &self.blocks[l];
        let eps = self.cfg.rms_norm_eps as f32;
        let (h, t_len, hd) = z.dims3()?;
        let attn = z
            .transpose(0, 1)?
            .reshape((t_len, h * hd))?
            .matmul(&b.w_o)?;
        let x = (x + attn)?;
        let xn = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
        let gu = xn.matmul(&b.w_gate_up)?;
        let ffn = gu.dim(1)? / 2;
        let act = (candle_nn::ops::silu(&gu.narrow(1, 0, ffn)?)? * gu.narrow(1, ffn, ffn)?)?;
        Ok((x + act.matmul(&b.w_down)?)?)
    }

    fn logits_last(&self, x: &Tensor) -> Result<Tensor> {
        let t_len = x.dim(0)?;
        let last = x.narrow(0, t_len - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.cfg.rms_norm_eps as f32)?;
        Ok(last.matmul(&self.lm_head.t()?)?.squeeze(0)?)
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
