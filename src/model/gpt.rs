//! GPT-style family: learned absolute positions, LayerNorm, GELU (tanh) MLP.
//!
//! The layout is minGPT's (the paper's toys) and GPT-2's: pre-LN blocks, one fused `c_attn` with
//! biases, a 4x MLP, a final `ln_f` and an `lm_head` without bias. Weights are held as `nn.Linear`
//! stores them, `(out, in)`, under minGPT's names (`transformer.h.{i}.attn.c_attn.weight`, ...); the
//! GPT-2 loader transposes Hugging Face's `Conv1D` weights into that layout.
//!
//! One block function serves both the capture forward (one sequence, the [`Transformer`] trait) and the
//! batched, differentiable training forward ([`Gpt::logits`]), so what is trained is what is shown.

use super::attention::{attend, concat_heads, content_rows};
use super::stepper::{ContentKv, Stepper};
use super::{Arch, LayerRun, LayerSel, ModelInfo, Run, Transformer};
use crate::error::{Error, Result};
use crate::prefix::Prefix;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

/// Sizes of a GPT-style model (minGPT's `GPT.get_default_config` fields plus the paper's switch).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// Block size: the longest sequence (prefix + content) the learned positions cover.
    pub n_positions: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// The paper's 1-layer 4-head toy has no LayerNorm before attention (`skip_layer_norm=True`), so a
    /// prefix enters `W_K`/`W_V` raw.
    #[serde(default)]
    pub skip_attn_layernorm: bool,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `lm_head` shares the token embedding (GPT-2); minGPT keeps a separate one.
    #[serde(default)]
    pub tied_head: bool,
}

fn default_eps() -> f64 {
    1e-5
}

impl GptConfig {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Every tensor the model needs with its shape, in minGPT names and `(out, in)` layout.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let c = self.n_embd;
        let mut v = vec![
            (
                "transformer.wte.weight".to_string(),
                vec![self.vocab_size, c],
            ),
            (
                "transformer.wpe.weight".to_string(),
                vec![self.n_positions, c],
            ),
        ];
        for i in 0..self.n_layer {
            let b = format!("transformer.h.{i}");
            if !self.skip_attn_layernorm {
                v.push((format!("{b}.ln_1.weight"), vec![c]));
                v.push((format!("{b}.ln_1.bias"), vec![c]));
            }
            v.push((format!("{b}.attn.c_attn.weight"), vec![3 * c, c]));
            v.push((format!("{b}.attn.c_attn.bias"), vec![3 * c]));
            v.push((format!("{b}.attn.c_proj.weight"), vec![c, c]));
            v.push((format!("{b}.attn.c_proj.bias"), vec![c]));
            v.push((format!("{b}.ln_2.weight"), vec![c]));
            v.push((format!("{b}.ln_2.bias"), vec![c]));
            v.push((format!("{b}.mlp.c_fc.weight"), vec![4 * c, c]));
            v.push((format!("{b}.mlp.c_fc.bias"), vec![4 * c]));
            v.push((format!("{b}.mlp.c_proj.weight"), vec![c, 4 * c]));
            v.push((format!("{b}.mlp.c_proj.bias"), vec![c]));
        }
        v.push(("transformer.ln_f.weight".to_string(), vec![c]));
        v.push(("transformer.ln_f.bias".to_string(), vec![c]));
        if !self.tied_head {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, c]));
        }
        v
    }

    /// Sizes that must agree before any tensor is read.
    pub fn validate(&self, file: &std::path::Path) -> Result<()> {
        if self.n_layer == 0
            || self.n_head == 0
            || self.n_embd == 0
            || self.vocab_size == 0
            || self.n_positions == 0
        {
            return Err(Error::format(
                file,
                "GPT config",
                "non-zero layers, heads, width, vocabulary and positions",
                format!("{self:?}"),
            ));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::format(
                file,
                "n_embd",
                format!("a multiple of n_head = {}", self.n_head),
                self.n_embd.to_string(),
            ));
        }
        Ok(())
    }
}

/// LayerNorm weight and bias.
#[derive(Clone)]
struct Ln {
    w: Tensor,
    b: Tensor,
}

impl Ln {
    fn forward(&self, x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        // candle's fused kernel has no backward pass; tracked (training) inputs take ours.
        if x.dtype() != DType::F32 {
            // The fused kernels are f32; float64 (the gradient checks) takes the composition.
            candle_nn::ops::layer_norm_slow(x, &self.w, &self.b, eps as f32)
        } else if x.track_op() || self.w.track_op() {
            super::train_ops::layer_norm(x, &self.w, &self.b, eps as f32)
        } else {
            candle_nn::ops::layer_norm(&x.contiguous()?, &self.w, &self.b, eps as f32)
        }
    }
}

/// `nn.Linear`: weight `(out, in)` and bias `(out,)`.
#[derive(Clone)]
struct Linear {
    w: Tensor,
    b: Tensor,
    /// A frozen weight is kept transposed, `(in, out)` contiguous (and `w` is a view of it): `x @ wt`
    /// is then a plain matmul, where `x @ w^T` made the matmul repack the weight on every call (a
    /// quarter of a toy slider update). Trainable weights (`Var`s) keep `w` alone.
    wt: Option<Tensor>,
}

impl Linear {
    fn new(w: Tensor, b: Tensor) -> candle_core::Result<Self> {
        if w.track_op() {
            return Ok(Linear { w, b, wt: None });
        }
        let wt = w.t()?.contiguous()?;
        Ok(Linear {
            w: wt.t()?,
            b,
            wt: Some(wt),
        })
    }

    /// `x`: `(rows, in)` -> `(rows, out)`, plus a LoRA update `(x A^T) B^T` when given.
    fn forward(&self, x: &Tensor, lora: Option<&LoraPair>) -> candle_core::Result<Tensor> {
        let training = x.track_op() || self.w.track_op();
        let y = match &self.wt {
            Some(wt) if training => super::blas::matmul_train(x, wt, false)?,
            Some(wt) if x.rank() == 2 => super::blas::matmul(&x.contiguous()?, wt)?,
            _ if training => super::blas::matmul_train(x, &self.w, true)?,
            _ => x.matmul(&self.w.t()?)?,
        }
        .broadcast_add(&self.b)?;
        match lora {
            Some(l) => y + x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?,
            None => Ok(y),
        }
    }
}

/// GELU with the tanh approximation (minGPT's `NewGELU`, candle's `gelu`). An untracked tensor goes
/// through a serial loop with a rational tanh: candle sends every element through libm's `tanhf` on
/// the thread pool, which was a fifth of a toy slider update. Training takes the fused op with its
/// backward pass.
fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 {
        return x.gelu();
    }
    if x.track_op() {
        return super::train_ops::gelu(x);
    }
    let out: Vec<f32> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| 0.5 * v * (1.0 + tanh_fast(0.797_884_6 * v * (1.0 + 0.044715 * v * v))))
        .collect();
    Tensor::from_vec(out, x.shape(), x.device())
}

/// tanh as Eigen's `generic_fast_tanh_float`: a 13/6 rational minimax fit on the clamped range,
/// within 2e-6 of libm's `tanhf` (the unit test below), and free of calls so the loop vectorizes.
pub(crate) fn tanh_fast(x: f32) -> f32 {
    const A: [f32; 7] = [
        4.893_524_6e-3,
        6.372_619_3e-4,
        1.485_722_4e-5,
        5.122_297e-8,
        -8.604_672e-11,
        2.000_188e-13,
        -2.760_768_5e-16,
    ];
    const B: [f32; 4] = [4.893_525e-3, 2.268_434_6e-3, 1.185_347e-4, 1.198_258_4e-6];
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let p = x
        * ((((((A[6] * x2 + A[5]) * x2 + A[4]) * x2 + A[3]) * x2 + A[2]) * x2 + A[1]) * x2 + A[0]);
    let q = ((B[3] * x2 + B[2]) * x2 + B[1]) * x2 + B[0];
    // Near 0 this is x * (A0 / B0) = x (1 - 1.3e-7): no branch needed, so the loop vectorizes.
    p / q
}

#[derive(Clone)]
struct Block {
    /// `None` when the config skips the pre-attention LayerNorm.
    ln_1: Option<Ln>,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: Ln,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// One LoRA adapter `W + B A` (minLoRA, scaling alpha / rank = 1): `a` `(r, in)`, `b` `(out, r)`.
#[derive(Clone, Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// Rank-r LoRA on the modules the authors' `LoRATrainer` wraps: `attn.c_proj`, `mlp.c_fc` and
/// `mlp.c_proj` of every layer.
#[derive(Clone, Debug)]
pub struct Lora {
    pub rank: usize,
    /// Per layer: `(attn.c_proj, mlp.c_fc, mlp.c_proj)`.
    pub layers: Vec<[LoraPair; 3]>,
}

impl Lora {
    /// The module names, in the order of a layer's three pairs.
    pub const MODULES: [&'static str; 3] = ["attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

    /// Tensor names as stored in a file: `transformer.h.{i}.attn.c_proj.lora_A`, ...
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, pairs) in self.layers.iter().enumerate() {
            for (m, p) in Self::MODULES.iter().zip(pairs) {
                out.push((format!("transformer.h.{i}.{m}.lora_A"), p.a.clone()));
                out.push((format!("transformer.h.{i}.{m}.lora_B"), p.b.clone()));
            }
        }
        out
    }

    /// Expected `(name, shape)` pairs for a model of `cfg`.
    pub fn expected(cfg: &GptConfig, rank: usize) -> Vec<(String, Vec<usize>)> {
        let c = cfg.n_embd;
        let dims = [(c, c), (c, 4 * c), (4 * c, c)]; // (in, out) of each module
        let mut out = Vec::new();
        for i in 0..cfg.n_layer {
            for (m, (din, dout)) in Self::MODULES.iter().zip(dims) {
                out.push((format!("transformer.h.{i}.{m}.lora_A"), vec![rank, din]));
                out.push((format!("transformer.h.{i}.{m}.lora_B"), vec![dout, rank]));
            }
        }
        out
    }

    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.iter())
            .map(|p| p.a.elem_count() + p.b.elem_count())
            .sum()
    }
}

/// A prefix as tensors (possibly trainable `Var`s), in the shapes of [`Prefix`].
#[derive(Clone, Debug)]
pub enum PrefixTensors {
    /// `(P, n_embd)` input embeddings at positions `0..P` (position embeddings are added to them).
    SoftPrompt(Tensor),
    /// `(n_layer, P, n_embd)`: the paper's per-layer hidden states, replacing the attention input at
    /// positions `0..P` before `ln_1`.
    Hidden(Tensor),
    /// `(n_layer, n_head, P, head_dim)` each.
    KeyValue { keys: Tensor, values: Tensor },
}

impl PrefixTensors {
    pub fn from_prefix(p: &Prefix) -> candle_core::Result<Self> {
        Ok(match p {
            Prefix::SoftPrompt(a) => PrefixTensors::SoftPrompt(a.to_tensor()?),
            Prefix::Hidden(a) => PrefixTensors::Hidden(a.to_tensor()?),
            Prefix::KeyValue { keys, values } => PrefixTensors::KeyValue {
                keys: keys.to_tensor()?,
                values: values.to_tensor()?,
            },
        })
    }

    pub fn len(&self) -> candle_core::Result<usize> {
        match self {
            PrefixTensors::SoftPrompt(t) => t.dim(0),
            PrefixTensors::Hidden(t) => t.dim(1),
            PrefixTensors::KeyValue { keys, .. } => keys.dim(2),
        }
    }

    pub fn is_empty(&self) -> candle_core::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The weight getter `load` threads through its helpers: `(vb, name, shape, init) -> tensor`.
type WeightGetter<'a> =
    dyn FnMut(&VarBuilder, &str, &[usize], candle_nn::Init) -> candle_core::Result<Tensor> + 'a;

/// Per-layer results of a batched forward kept for capture: `(layer, probs (B, H, T, P+T),
/// values (B, H, P+T, hd), z (B, H, T, hd))`.
type KeptLayers = Vec<(usize, Tensor, Tensor, Tensor)>;

#[derive(Clone)]
pub struct Gpt {
    cfg: GptConfig,
    info: ModelInfo,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Ln,
    lm_head: Tensor,
}

impl Gpt {
    /// Load from a `VarBuilder` with minGPT names and `(out, in)` weights. A `VarBuilder` over a
    /// `VarMap` creates trainable variables (pretraining, full fine-tuning) with minGPT's init.
    pub fn load(vb: VarBuilder, cfg: &GptConfig) -> candle_core::Result<Self> {
        Self::load_with_source(vb, cfg, "toy-safetensors", "f32")
    }

    pub fn load_with_source(
        vb: VarBuilder,
        cfg: &GptConfig,
        source: &str,
        dtype: &str,
    ) -> candle_core::Result<Self> {
        use candle_nn::Init;
        let c = cfg.n_embd;
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        // minGPT scales the residual projections' init by 1/sqrt(2 n_layer).
        let proj_init = Init::Randn {
            mean: 0.0,
            stdev: 0.02 / (2.0 * cfg.n_layer as f64).sqrt(),
        };
        let mut n_params = 0usize;
        let mut get = |vb: &VarBuilder, name: &str, shape: &[usize], init: Init| {
            let w = vb.get_with_hints(shape, name, init)?.to_dtype(DType::F32)?;
            n_params += w.elem_count();
            Ok::<Tensor, candle_core::Error>(w)
        };
        let ln = |get: &mut WeightGetter, vb: &VarBuilder| -> candle_core::Result<Ln> {
            Ok(Ln {
                w: get(vb, "weight", &[c], Init::Const(1.0))?,
                b: get(vb, "bias", &[c], Init::Const(0.0))?,
            })
        };
        let lin = |get: &mut WeightGetter,
                   vb: &VarBuilder,
                   din: usize,
                   dout: usize,
                   init: Init|
         -> candle_core::Result<Linear> {
            Linear::new(
                get(vb, "weight", &[dout, din], init)?,
                get(vb, "bias", &[dout], Init::Const(0.0))?,
            )
        };
        let t = vb.pp("transformer");
        let wte = get(&t, "wte.weight", &[cfg.vocab_size, c], normal)?;
        let wpe = get(&t, "wpe.weight", &[cfg.n_positions, c], normal)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let b = t.pp(format!("h.{i}"));
            let ln_1 = if cfg.skip_attn_layernorm {
                None
            } else {
                Some(ln(&mut get, &b.pp("ln_1"))?)
            };
            blocks.push(Block {
                ln_1,
                c_attn: lin(&mut get, &b.pp("attn.c_attn"), c, 3 * c, normal)?,
                c_proj: lin(&mut get, &b.pp("attn.c_proj"), c, c, proj_init)?,
                ln_2: ln(&mut get, &b.pp("ln_2"))?,
                c_fc: lin(&mut get, &b.pp("mlp.c_fc"), c, 4 * c, normal)?,
                mlp_proj: lin(&mut get, &b.pp("mlp.c_proj"), 4 * c, c, proj_init)?,
            });
        }
        let ln_f = ln(&mut get, &t.pp("ln_f"))?;
        let lm_head = if cfg.tied_head {
            wte.clone()
        } else {
            get(&vb, "lm_head.weight", &[cfg.vocab_size, c], normal)?
        };
        let info = ModelInfo {
            arch: Arch::Gpt,
            n_layers: cfg.n_layer,
            n_heads: cfg.n_head,
            n_kv_heads: cfg.n_head,
            d_model: c,
            head_dim: cfg.head_dim(),
            vocab_size: cfg.vocab_size,
            max_positions: Some(cfg.n_positions),
            n_params,
            dtype: dtype.to_string(),
            source: source.to_string(),
        };
        Ok(Gpt {
            cfg: cfg.clone(),
            info,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// `(B, T, C)` -> `(B, H, T, hd)`.
    fn heads(x: &Tensor, h: usize) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        x.reshape((b, t, h, c / h))?.transpose(1, 2)?.contiguous()
    }

    /// Keys and values `(1, H, P, hd)` of the paper's per-layer prefix rows `s` `(P, C)` at one block.
    fn hidden_kv(&self, blk: &Block, s: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (h, c) = (self.cfg.n_head, self.cfg.n_embd);
        let p = s.dim(0)?;
        let sn = match &blk.ln_1 {
            Some(ln) => ln.forward(s, self.cfg.layer_norm_eps)?,
            None => s.clone(),
        };
        let qkv = blk.c_attn.forward(&sn, None)?; // (P, 3C)
        let k = Self::heads(&qkv.narrow(1, c, c)?.reshape((1, p, c))?, h)?;
        let v = Self::heads(&qkv.narrow(1, 2 * c, c)?.reshape((1, p, c))?, h)?;
        Ok((k, v))
    }

    /// The prefix keys and values of layer `l` for a batch of `b`: `(B, H, P, hd)` each, or `None`.
    /// The paper's per-layer prefix goes through the frozen `ln_1` and `c_attn` (with biases) and gets
    /// no position embedding, exactly as minGPT's replaced attention input does.
    fn prefix_kv(
        &self,
        l: usize,
        blk: &Block,
        prefix: Option<&PrefixTensors>,
        b: usize,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let h = self.cfg.n_head;
        let kv = match prefix {
            Some(PrefixTensors::Hidden(all)) => self.hidden_kv(blk, &all.get(l)?)?,
            Some(PrefixTensors::KeyValue { keys, values }) => {
                (keys.get(l)?.unsqueeze(0)?, values.get(l)?.unsqueeze(0)?)
            }
            _ => return Ok(None),
        };
        let (_, _, p, hd) = kv.0.dims4()?;
        Ok(Some((
            kv.0.broadcast_as((b, h, p, hd))?.contiguous()?,
            kv.1.broadcast_as((b, h, p, hd))?.contiguous()?,
        )))
    }

    /// The shared block stack. `ids` `(B, T)` sit at positions `pos0..pos0 + T`; a soft prompt is put in
    /// front of them (so the stream is `P + T` long), the other prefix kinds enter as extra key/value
    /// columns. Returns the final hidden states `(B, T', C)` and the kept layers.
    fn run_blocks(
        &self,
        ids: &Tensor,
        prefix: Option<&PrefixTensors>,
        lora: Option<&Lora>,
        keep: Option<&LayerSel>,
    ) -> candle_core::Result<(Tensor, KeptLayers)> {
        let (b, t_ids) = ids.dims2()?;
        let (h, c, hd) = (self.cfg.n_head, self.cfg.n_embd, self.cfg.head_dim());
        let eps = self.cfg.layer_norm_eps;
        let p = match prefix {
            Some(pf) => pf.len()?,
            None => 0,
        };
        let tok = self
            .wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t_ids, c))?;
        let mut x = match prefix {
            Some(PrefixTensors::SoftPrompt(s)) => {
                let s = s.unsqueeze(0)?.broadcast_as((b, p, c))?;
                Tensor::cat(&[&s, &tok], 1)?.broadcast_add(&self.wpe.narrow(0, 0, p + t_ids)?)?
            }
            Some(_) => tok.broadcast_add(&self.wpe.narrow(0, p, t_ids)?)?,
            None => tok.broadcast_add(&self.wpe.narrow(0, 0, t_ids)?)?,
        };
        let t = x.dim(1)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut kept = Vec::new();
        for (l, blk) in self.blocks.iter().enumerate() {
            let lp = lora.and_then(|lo| lo.layers.get(l));
            let xn = match &blk.ln_1 {
                Some(ln) => ln.forward(&x, eps)?,
                None => x.clone(),
            };
            let qkv = blk
                .c_attn
                .forward(&xn.reshape((b * t, c))?, None)?
                .reshape((b, t, 3 * c))?;
            let q = Self::heads(&qkv.narrow(2, 0, c)?, h)?;
            let k = Self::heads(&qkv.narrow(2, c, c)?, h)?;
            let v = Self::heads(&qkv.narrow(2, 2 * c, c)?, h)?;
            let (k, v, p_extra) = match self.prefix_kv(l, blk, prefix, b)? {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?, p),
                None => (k, v, 0),
            };
            let tk = p_extra + t;
            let (z, probs) = attend(
                &q.reshape((b * h, t, hd))?,
                &k.reshape((b * h, tk, hd))?,
                &v.reshape((b * h, tk, hd))?,
                p_extra,
                scale,
            )?;
            let z = z.reshape((b, h, t, hd))?;
            if keep.is_some_and(|s| s.contains(l)) {
                kept.push((l, probs.reshape((b, h, t, tk))?, v.clone(), z.clone()));
            }
            let zc = z.transpose(1, 2)?.reshape((b * t, c))?;
            let attn = blk.c_proj.forward(&zc, lp.map(|x| &x[0]))?;
            x = (x + attn.reshape((b, t, c))?)?;
            let xn = blk.ln_2.forward(&x, eps)?.reshape((b * t, c))?;
            let hid = gelu(&blk.c_fc.forward(&xn, lp.map(|x| &x[1]))?)?;
            let out = blk.mlp_proj.forward(&hid, lp.map(|x| &x[2]))?;
            x = (x + out.reshape((b, t, c))?)?;
        }
        Ok((x, kept))
    }

    /// The batched, differentiable training/evaluation forward: logits `(B, last, vocab)` of the last
    /// `last` positions. With a per-layer or key/value prefix, `ids` are the content only (positions
    /// `P..P+T`); with none, `ids` include the placeholder tokens the model was trained with.
    pub fn logits(
        &self,
        ids: &Tensor,
        prefix: Option<&PrefixTensors>,
        lora: Option<&Lora>,
        last: usize,
    ) -> candle_core::Result<Tensor> {
        let (x, _) = self.run_blocks(ids, prefix, lora, None)?;
        let (b, t, c) = x.dims3()?;
        let x = x.narrow(1, t - last, last)?;
        let x = self.ln_f.forward(&x, self.cfg.layer_norm_eps)?;
        x.reshape((b * last, c))?
            .matmul(&self.lm_head.t()?)?
            .reshape((b, last, self.cfg.vocab_size))
    }

    /// One sequence through the shared stack, kept layers turned into [`LayerRun`]s (content rows).
    fn run_one(
        &self,
        ids: &[u32],
        prefix: Option<&PrefixTensors>,
        p_run: usize,
        sel: &LayerSel,
    ) -> Result<Run> {
        let n_all = ids.len();
        let ids_t = Tensor::from_slice(ids, (1, n_all), &Device::Cpu)?;
        let (x, kept) = self.run_blocks(&ids_t, prefix, None, Some(sel))?;
        // Content: the last n rows (the placeholder rows of a pretrained run are not content).
        let n = n_all - if prefix.is_none() { p_run } else { 0 };
        let mut layers = Vec::new();
        for (l, probs, v, z) in kept {
            layers.push(LayerRun {
                layer: l,
                pattern: content_rows(&probs.squeeze(0)?, n)?,
                values: v.squeeze(0)?.contiguous()?,
                z: content_rows(&z.squeeze(0)?, n)?,
            });
        }
        let t = x.dim(1)?;
        let last = self
            .ln_f
            .forward(&x.narrow(1, t - 1, 1)?, self.cfg.layer_norm_eps)?
            .reshape((1, self.cfg.n_embd))?;
        let logits_last = last.matmul(&self.lm_head.t()?)?.squeeze(0)?;
        Ok(Run {
            p: p_run,
            n,
            layers,
            logits_last,
        })
    }

    fn block(&self, l: usize) -> Result<&Block> {
        self.blocks.get(l).ok_or_else(|| {
            Error::input(
                "layer",
                format!("below {}", self.blocks.len()),
                l.to_string(),
            )
        })
    }

    fn check_len(&self, what: &str, total: usize) -> Result<()> {
        if total > self.cfg.n_positions {
            return Err(Error::input(
                what,
                format!(
                    "prefix + content <= {} positions (the model's context)",
                    self.cfg.n_positions
                ),
                total.to_string(),
            ));
        }
        Ok(())
    }
}

impl Transformer for Gpt {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, ids: &[u32], prefix: Option<&Prefix>, layers: &LayerSel) -> Result<Run> {
        let p = match prefix {
            Some(pf) => {
                pf.check(&self.info, std::path::Path::new("prefix"))?;
                pf.len()
            }
            None => 0,
        };
        self.check_len("prompt length", p + ids.len())?;
        let pt = prefix.map(PrefixTensors::from_prefix).transpose()?;
        super::stepper::on_compute_pool(self, p + ids.len(), || {
            self.run_one(ids, pt.as_ref(), p, layers)
        })
    }

    fn pretrained(&self, ids: &[u32], p: usize, layers: &LayerSel) -> Result<Run> {
        self.check_len("prompt length", p + ids.len())?;
        // The content stays at p..p+n with the placeholder token (id 0, as in training) before it.
        let mut all = vec![0u32; p];
        all.extend_from_slice(ids);
        super::stepper::on_compute_pool(self, all.len(), || self.run_one(&all, None, p, layers))
    }

    fn blas_projections(&self) -> bool {
        // Frozen weights go through `blas::matmul` (trainable ones through candle's matmul).
        super::blas::active() && self.blocks.first().is_some_and(|b| b.c_attn.wt.is_some())
    }

    fn stepper(&self) -> Option<&dyn Stepper> {
        Some(self)
    }

    fn attn_block_output(&self, layer: usize, z: &Tensor) -> Result<Tensor> {
        Ok(self.block(layer)?.c_proj.forward(&concat_heads(z)?, None)?)
    }

    fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        if id as usize >= self.cfg.vocab_size {
            return Err(Error::input(
                "token id",
                format!("below {}", self.cfg.vocab_size),
                id.to_string(),
            ));
        }
        Ok(self.wte.get(id as usize)?.to_vec1::<f32>()?)
    }
}

impl Gpt {
    /// The stream entering layer 0 for content `ids` behind a prefix of `p` positions, `soft` `(P, C)`
    /// being a soft prompt (in the stream itself); one body for file and tuned prefixes.
    fn embed_with(&self, ids: &[u32], soft: Option<&Tensor>, p: usize) -> Result<(Tensor, usize)> {
        let n = ids.len();
        self.check_len("prompt length", p + n)?;
        let tok = self
            .wte
            .index_select(&Tensor::from_slice(ids, n, &Device::Cpu)?, 0)?;
        // Learned positions are added here, once: a soft prompt takes positions 0..P in the stream;
        // with the other kinds the content sits at P..P+n behind the per-layer key/value columns.
        Ok(match (soft, p) {
            (Some(s), _) => (
                Tensor::cat(&[s, &tok], 0)?.broadcast_add(&self.wpe.narrow(0, 0, p + n)?)?,
                0,
            ),
            (None, 0) => (tok.broadcast_add(&self.wpe.narrow(0, 0, n)?)?, 0),
            (None, _) => (tok.broadcast_add(&self.wpe.narrow(0, p, n)?)?, p),
        })
    }

    /// A copy with every weight in `dtype` (float64 for the finite-difference gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let c = |t: &Tensor| t.to_dtype(dtype);
        let ln = |l: &Ln| -> candle_core::Result<Ln> {
            Ok(Ln {
                w: c(&l.w)?,
                b: c(&l.b)?,
            })
        };
        let lin = |l: &Linear| Linear::new(c(&l.w)?, c(&l.b)?);
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    ln_1: b.ln_1.as_ref().map(ln).transpose()?,
                    c_attn: lin(&b.c_attn)?,
                    c_proj: lin(&b.c_proj)?,
                    ln_2: ln(&b.ln_2)?,
                    c_fc: lin(&b.c_fc)?,
                    mlp_proj: lin(&b.mlp_proj)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let wte = c(&self.wte)?;
        Ok(Gpt {
            cfg: self.cfg.clone(),
            info: ModelInfo {
                dtype: format!("{dtype:?}").to_lowercase(),
                ..self.info.clone()
            },
            lm_head: if self.cfg.tied_head {
                wte.clone()
            } else {
                c(&self.lm_head)?
            },
            wte,
            wpe: c(&self.wpe)?,
            blocks,
            ln_f: ln(&self.ln_f)?,
        })
    }
}

/// Layer by layer access for the incremental evaluator: the same block as [`Gpt::run_blocks`] with a
/// batch of one, split where a prefix edit enters, so that a slider edit recomputes only the layers
/// it can change.
impl Stepper for Gpt {
    fn embed_with(&self, ids: &[u32], soft: Option<&Tensor>, p: usize) -> Result<(Tensor, usize)> {
        Gpt::embed_with(self, ids, soft, p)
    }

    fn prefix_kv_t(
        &self,
        l: usize,
        prefix: Option<&PrefixTensors>,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let blk = self.block(l)?;
        Ok(self
            .prefix_kv(l, blk, prefix, 1)?
            .map(|(k, v)| Ok::<_, candle_core::Error>((k.squeeze(0)?, v.squeeze(0)?)))
            .transpose()?)
    }

    fn logits_rows(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln_f.forward(x, self.cfg.layer_norm_eps)?;
        Ok(if x.track_op() {
            super::blas::matmul_train(&x, &self.lm_head, true)?
        } else {
            x.matmul(&self.lm_head.t()?)?
        })
    }

    fn layer_content(&self, l: usize, x: &Tensor, _pos0: usize) -> Result<ContentKv> {
        let blk = self.block(l)?;
        let (h, c, hd) = (self.cfg.n_head, self.cfg.n_embd, self.cfg.head_dim());
        let xn = match &blk.ln_1 {
            Some(ln) => ln.forward(x, self.cfg.layer_norm_eps)?,
            None => x.clone(),
        };
        let qkv = blk.c_attn.forward(&xn, None)?.unsqueeze(0)?; // (1, T, 3C)
        let part = |i: usize| -> candle_core::Result<Tensor> {
            Self::heads(&qkv.narrow(2, i * c, c)?, h)?.squeeze(0)
        };
        ContentKv::new(part(0)?, part(1)?, part(2)?, 1.0 / (hd as f64).sqrt())
    }

    fn prefix_kv(&self, l: usize, prefix: Option<&Prefix>) -> Result<Option<(Tensor, Tensor)>> {
        let blk = self.block(l)?;
        let Some(pf) = prefix else { return Ok(None) };
        if let Some(s) = pf.hidden_layer(l)? {
            let (k, v) = self.hidden_kv(blk, &s)?;
            return Ok(Some((k.squeeze(0)?, v.squeeze(0)?)));
        }
        Ok(pf.key_value_layer(l)?)
    }

    fn layer_finish(&self, l: usize, x: &Tensor, z: &Tensor) -> Result<Tensor> {
        let blk = self.block(l)?;
        let eps = self.cfg.layer_norm_eps;
        let x = (x + blk.c_proj.forward(&concat_heads(z)?, None)?)?;
        let hid = gelu(&blk.c_fc.forward(&blk.ln_2.forward(&x, eps)?, None)?)?;
        Ok((&x + blk.mlp_proj.forward(&hid, None)?)?)
    }

    fn logits_last(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(0)?;
        let last = self
            .ln_f
            .forward(&x.narrow(0, t - 1, 1)?, self.cfg.layer_norm_eps)?;
        Ok(last.matmul(&self.lm_head.t()?)?.squeeze(0)?)
    }

    fn n_layers(&self) -> usize {
        self.blocks.len()
    }
}

/// Row-wise argmax of `(B, V)` logits.
pub fn argmax_rows(logits: &Tensor) -> candle_core::Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::max_abs_diff;
    use super::*;

    #[test]
    fn fast_tanh_and_gelu_match_libm_and_candle() {
        let mut worst = 0f32;
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((tanh_fast(x) - x.tanh()).abs());
        }
        assert!(worst < 2e-6, "tanh off by {worst:e}");
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 2.5e-3).collect();
        let t = Tensor::from_vec(xs, (80, 100), &Device::Cpu).unwrap();
        let d = max_abs_diff(&gelu(&t).unwrap(), &t.gelu().unwrap());
        assert!(d < 1e-5, "gelu off by {d:e}");
        assert_eq!(gelu(&t).unwrap().dims(), &[80, 100]);
    }
}
