//! GGUF files of every registered family ([`crate::model::family`]): metadata mapped onto [`LlamaConfig`]
//! by the family reading `general.architecture` (every `{arch}.*` key implemented or refused by name),
//! every tensor of the file read or refused by name, tensors dequantized to f32 (or kept in their blocks),
//! and llama.cpp's query/key row permutation undone for the families whose converter applied it, so
//! that GGUF and Hugging Face checkpoints share one internal layout (rotate-half RoPE).

use super::{LoadControl, Loaded};
use crate::error::{Error, Result};
use crate::model::family::{self, Family, GgufKeys, GgufTensors};
use crate::model::llama::{Llama, LlamaConfig};
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

/// Quantizations we dequantize (candle implements each; listed for the error message).
const SUPPORTED: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

pub fn read_content(path: &Path) -> Result<(Content, std::fs::File)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut f).map_err(|e| {
        Error::format(
            path,
            "GGUF header",
            "a complete GGUF file (magic 'GGUF', metadata, tensor table)",
            e.to_string(),
        )
    })?;
    Ok((content, f))
}

/// The model config as the GGUF metadata states it, by the family that reads `general.architecture`,
/// every `{arch}.*` key implemented or on the neutral list (else refused by name). Returns the config
/// and the family (for its tensor layout).
pub fn config_from_gguf(
    c: &Content,
    path: &Path,
    file: &mut std::fs::File,
) -> Result<(LlamaConfig, &'static dyn Family)> {
    let arch = match c.metadata.get("general.architecture") {
        None => {
            return Err(Error::format(
                path,
                "metadata 'general.architecture'",
                "present",
                "missing",
            ))
        }
        Some(v) => v.to_string().map_err(|_| {
            Error::format(
                path,
                "metadata 'general.architecture'",
                "a string",
                "another type",
            )
        })?,
    };
    let fam = family::by_gguf_arch(arch).ok_or_else(|| {
        Error::unsupported(
            path,
            "architecture",
            format!("'{arch}'"),
            family::all_gguf_archs(),
        )
    })?;
    let shapes: HashMap<String, Vec<usize>> = c
        .tensor_infos
        .iter()
        // candle reports GGUF dimensions rows first, like Hugging Face.
        .map(|(k, t)| (k.clone(), t.shape.dims().to_vec()))
        .collect();
    let rope_freqs = match c.tensor_infos.get(ROPE_FREQS) {
        None => None,
        Some(info) => {
            if info.ggml_dtype != GgmlDType::F32 || info.shape.rank() != 1 {
                return Err(Error::unsupported(
                    path,
                    format!("tensor '{ROPE_FREQS}'"),
                    format!("{:?} of shape {:?}", info.ggml_dtype, info.shape.dims()),
                    "a 1-D F32 tensor",
                ));
            }
            check_in_file(path, c, ROPE_FREQS, file)?;
            let t = info
                .read(file, c.tensor_data_offset, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| {
                    Error::format(
                        path,
                        format!("tensor '{ROPE_FREQS}'"),
                        "its data",
                        e.to_string(),
                    )
                })?;
            if let Some(bad) = t.iter().find(|x| !x.is_finite() || **x <= 0.0) {
                return Err(Error::format(
                    path,
                    format!("tensor '{ROPE_FREQS}'"),
                    "positive finite factors",
                    bad.to_string(),
                ));
            }
            Some(t)
        }
    };
    let tensors = GgufTensors { shapes, rope_freqs };
    let mut keys = GgufKeys::new(path, arch, &c.metadata);
    let cfg = fam.from_gguf(&mut keys, &tensors)?;
    keys.finish()?;
    cfg.validate(path)?;
    cfg.check_layers_against_file(path, c.tensor_infos.len())?;
    Ok((cfg, fam))
}

/// llama.cpp's tensor of RoPE frequency factors (Llama 3.1/3.2), read into the config.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Refuse a tensor whose data would end past the end of the file.
fn check_in_file(path: &Path, c: &Content, g: &str, file: &mut std::fs::File) -> Result<()> {
    let file_size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io(path, e))?;
    let Some(info) = c.tensor_infos.get(g) else {
        return Err(Error::missing(path, g));
    };
    let bytes = (info.shape.elem_count() / info.ggml_dtype.block_size()
        * info.ggml_dtype.type_size()) as u64;
    let end = c
        .tensor_data_offset
        .saturating_add(info.offset)
        .saturating_add(bytes);
    if end > file_size {
        return Err(Error::format(
            path,
            format!("tensor '{g}'"),
            format!("its full data ({bytes} bytes ending at byte {end})"),
            format!("a file of {file_size} bytes (truncated?)"),
        ));
    }
    Ok(())
}

/// GGUF tensor name for a Hugging Face name, as llama.cpp's converter names it
/// (`gguf-py/gguf/tensor_mapping.py`). `sandwich`: Gemma's layout, where
/// `post_attention_layernorm` normalizes the attention output (`post_attention_norm`) and
/// `pre_feedforward_layernorm` is the MLP's input norm (`ffn_norm`).
pub fn gguf_name(hf: &str, sandwich: bool) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((i, tail)) = rest.split_once('.') {
            let (stem, kind) = match tail.rsplit_once('.') {
                Some((s, k @ ("weight" | "bias"))) => (s, k),
                _ => return hf.to_string(),
            };
            let t = match stem {
                "input_layernorm" => "attn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.qkv_proj" => "attn_qkv",
                "self_attn.o_proj" => "attn_output",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "post_attention_layernorm" if sandwich => "post_attention_norm",
                "post_attention_layernorm" => "ffn_norm",
                "pre_feedforward_layernorm" => "ffn_norm",
                "post_feedforward_layernorm" => "post_ffw_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.gate_up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return hf.to_string(),
            };
            return format!("blk.{i}.{t}.{kind}");
        }
    }
    hf.to_string()
}

/// Undo llama.cpp's query/key row permutation inside each head: GGUF row `2j + s` is HF row
/// `half * s + j`. (Keeping GGUF order would need interleaved RoPE instead; mixing the two gives
/// plausible text and wrong attention.)
pub fn unpermute_rows(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let rows = w.dim(0)?;
    let idx: Vec<u32> = (0..rows)
        .map(|hf| gguf_row(hf, rows, n_heads) as u32)
        .collect();
    w.index_select(&Tensor::new(idx, w.device())?, 0)
}

/// The inverse of [`unpermute_rows`] (HF -> GGUF order), used to write GGUF-ordered keys.
pub fn permute_rows(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let rows = w.dim(0)?;
    let mut idx = vec![0u32; rows];
    for hf in 0..rows {
        idx[gguf_row(hf, rows, n_heads)] = hf as u32;
    }
    w.index_select(&Tensor::new(idx, w.device())?, 0)
}

/// The GGUF row that holds Hugging Face row `hf` of a query/key weight with `rows` rows over
/// `n_heads` heads: the converter interleaves each head's two rotary halves, so GGUF row `2j + s`
/// of a head is its HF row `s * hd/2 + j`. The one mapping behind the f32 and the quantized loads.
pub fn gguf_row(hf: usize, rows: usize, n_heads: usize) -> usize {
    let hd = rows / n_heads;
    let (head, r) = (hf / hd, hf % hd);
    let (s, j) = (r / (hd / 2), r % (hd / 2));
    head * hd + 2 * j + s
}

/// An opened, checked GGUF file: every tensor the model needs is present, of the right shape and a
/// supported type, and lies inside the file, and every tensor the file holds is one the model reads
/// (or `rope_freqs.weight`, read into the config). Tensors are dequantized one at a time on request,
/// so loading never holds the file's weights twice.
pub struct GgufFile {
    path: std::path::PathBuf,
    content: Content,
    file: Mutex<std::fs::File>,
    pub cfg: LlamaConfig,
    family: &'static dyn Family,
    /// The ggml types found, for `inspect`.
    pub dtypes: Vec<String>,
    ctl: LoadControl,
    done: std::sync::atomic::AtomicUsize,
}

impl GgufFile {
    pub fn open(path: &Path, ctl: &LoadControl) -> Result<Self> {
        let (content, mut file) = read_content(path)?;
        let (cfg, family) = config_from_gguf(&content, path, &mut file)?;
        let mut dtypes = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for (hf, shape) in cfg.expected_tensors() {
            let g = gguf_name(&hf, cfg.sandwich_norms);
            let info = content
                .tensor_infos
                .get(&g)
                .ok_or_else(|| Error::missing(path, &g))?;
            if info.shape.dims() != shape.as_slice() {
                return Err(Error::shape(path, &g, &shape, info.shape.dims()));
            }
            if !SUPPORTED.contains(&info.ggml_dtype) {
                return Err(Error::unsupported(
                    path,
                    format!("quantization of tensor '{g}'"),
                    format!("{:?}", info.ggml_dtype),
                    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K",
                ));
            }
            check_in_file(path, &content, &g, &mut file)?;
            let dt = format!("{:?}", info.ggml_dtype);
            if !dtypes.contains(&dt) {
                dtypes.push(dt);
            }
            wanted.insert(g);
        }
        // Strict: a tensor the model would not read is a feature we do not implement.
        let mut extra: Vec<&String> = content
            .tensor_infos
            .keys()
            .filter(|k| !wanted.contains(*k) && k.as_str() != ROPE_FREQS)
            .collect();
        extra.sort();
        if let Some(x) = extra.first() {
            return Err(Error::unsupported(
                path,
                format!("tensor '{x}'"),
                format!(
                    "present in the file, not read by family '{}' with this metadata",
                    cfg.family
                ),
                "only the tensors the family reads (an unread tensor would be a silently dropped feature)",
            ));
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            cfg,
            family,
            dtypes,
            ctl: ctl.clone(),
            done: Default::default(),
        })
    }

    /// The raw (possibly quantized) tensor stored for a Hugging Face name, and the progress tick.
    fn read_raw(&self, hf: &str) -> Result<(candle_core::quantized::QTensor, GgmlDType)> {
        let g = gguf_name(hf, self.cfg.sandwich_norms);
        let info = self
            .content
            .tensor_infos
            .get(&g)
            .ok_or_else(|| Error::missing(&self.path, &g))?;
        let q = {
            let mut f = self
                .file
                .lock()
                .map_err(|_| Error::Internal("GGUF file lock poisoned"))?;
            info.read(&mut *f, self.content.tensor_data_offset, &Device::Cpu)
                .map_err(|e| {
                    Error::format(
                        &self.path,
                        format!("tensor '{g}'"),
                        "its full data",
                        e.to_string(),
                    )
                })?
        };
        let total = self.cfg.expected_tensors().len().max(1);
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.ctl.step(done as f32 / total as f32)?;
        Ok((q, info.ggml_dtype))
    }

    /// Heads whose rows llama.cpp's converter permuted, for a query or key projection.
    fn permuted_heads(&self, hf: &str) -> Option<usize> {
        if !self.family.gguf_permutes_qk() {
            None
        } else if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
            // The converter permutes biases with their weights (`LlamaModel.modify_tensors`).
            Some(self.cfg.num_attention_heads)
        } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
            Some(self.cfg.n_kv_heads())
        } else {
            None
        }
    }

    /// Read and dequantize one tensor by its Hugging Face name, query/key rows in HF order.
    pub fn dequantize(&self, hf: &str) -> Result<Tensor> {
        let (q, _) = self.read_raw(hf)?;
        let w = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(match self.permuted_heads(hf) {
            Some(n_heads) => unpermute_rows(&w, n_heads)?,
            None => w,
        })
    }

    /// One weight kept quantized, by Hugging Face name; query/key rows reordered to HF order in the
    /// raw blocks (a row is a whole number of blocks, so whole rows move).
    pub fn quantized(&self, hf: &str) -> Result<candle_core::quantized::QTensor> {
        let (q, ggml_dtype) = self.read_raw(hf)?;
        Ok(match self.permuted_heads(hf) {
            None => q,
            Some(n_heads) => {
                let dims = q.shape().dims().to_vec();
                let (rows, cols) = (dims[0], dims[1]);
                let row_bytes = cols / ggml_dtype.block_size() * ggml_dtype.type_size();
                let data = q.data()?;
                let mut out = vec![0u8; data.len()];
                // Whole quantized rows move: a row's blocks never straddle two rows.
                for (hf_row, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
                    let src = gguf_row(hf_row, rows, n_heads) * row_bytes;
                    dst.copy_from_slice(&data[src..src + row_bytes]);
                }
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    ggml_dtype,
                    &out,
                    dims,
                    &Device::Cpu,
                )?
            }
        })
    }

    pub fn dtype_label(&self) -> String {
        format!("f32 (dequantized from {})", self.dtypes.join(", "))
    }
}

/// Lets `Llama::load(vb, cfg)` pull tensors straight from the file, one at a time.
impl candle_nn::var_builder::SimpleBackend for GgufFile {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, _dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{}: tensor '{name}' has shape {:?}, expected {:?}",
                self.path.display(),
                t.dims(),
                s.dims()
            )
        }
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.dequantize(name)
            .map_err(|e| candle_core::Error::Msg(e.one_line()))?
            .to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.content
            .tensor_infos
            .contains_key(&gguf_name(name, self.cfg.sandwich_norms))
    }
}

/// Read, check and dequantize every tensor the model needs, keyed by Hugging Face name (for writing
/// a Hugging Face folder from a GGUF).
pub fn read_weights(
    path: &Path,
    ctl: &LoadControl,
) -> Result<(LlamaConfig, HashMap<String, Tensor>, Content, String)> {
    let g = GgufFile::open(path, ctl)?;
    let mut out = HashMap::new();
    // Norm weights as Hugging Face stores them (Gemma's converter stored 1 + w).
    let shift = g.family.gguf_norm_shift();
    for (hf, _) in g.cfg.expected_tensors() {
        let mut w = g.dequantize(&hf)?;
        if shift != 0.0 && LlamaConfig::is_norm(&hf) {
            w = w.affine(1.0, -(shift as f64))?;
        }
        out.insert(hf, w);
    }
    let dtype = g.dtype_label();
    let mut cfg = g.cfg;
    cfg.norm_weight_offset += shift;
    Ok((cfg, out, g.content, dtype))
}

/// Whether f32 weights of `f32_bytes` would take more than 80% of the `available` memory (unknown
/// memory: assume they fit).
fn too_big_for_f32(f32_bytes: u64, available: Option<u64>) -> bool {
    available.is_some_and(|a| f32_bytes > a / 5 * 4)
}

/// Memory the system can still give (Linux `MemAvailable`), in bytes.
fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn load(path: &Path, ctl: &LoadControl) -> Result<Loaded> {
    let g = GgufFile::open(path, ctl)?;
    let tokenizer = Tokenizer::from_gguf_or_ids_only(path, &g.content)?;
    // Quantized when asked, or when the f32 weights would take more than 80% of the memory left.
    let f32_bytes: u64 = g
        .content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64 * 4)
        .sum();
    let available = available_memory();
    let auto = !ctl.quantized && too_big_for_f32(f32_bytes, available);
    if ctl.quantized || auto {
        let why = if auto {
            format!(
                "; automatic: f32 needs {:.1} GB, {:.1} GB available",
                f32_bytes as f64 / 1e9,
                available.unwrap_or(0) as f64 / 1e9
            )
        } else {
            String::new()
        };
        if auto {
            tracing::warn!("{}: keeping the weights quantized{why}", path.display());
        }
        let dtype = format!(
            "quantized ({}, dequantized per product; norms and embedding lookup f32{why})",
            g.dtypes.join(", ")
        );
        let model = Llama::load_quantized(
            &g.cfg,
            |n| g.quantized(n),
            |n| g.dequantize(n),
            "gguf",
            &dtype,
        )?;
        ctl.step(1.0)?;
        return Ok(Loaded {
            model: Box::new(model),
            tokenizer,
            path: path.to_path_buf(),
        });
    }
    let (cfg, dtype) = (g.cfg.clone(), g.dtype_label());
    let vb = candle_nn::VarBuilder::from_backend(Box::new(g), DType::F32, Device::Cpu);
    let model = Llama::load(vb, &cfg, "gguf", &dtype).map_err(|e| {
        if ctl
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            Error::Cancelled
        } else {
            Error::format(path, "weights", "readable tensors", e.to_string())
        }
    })?;
    ctl.step(1.0)?;
    Ok(Loaded {
        model: Box::new(model),
        tokenizer,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_weights_that_would_not_fit_are_kept_quantized() {
        const GB: u64 = 1 << 30;
        // SmolLM2 (0.54 GB as f32) on this 24 GB machine: f32.
        assert!(!too_big_for_f32(GB / 2, Some(24 * GB)));
        // A 7B model (27 GB as f32) on the same machine: quantized.
        assert!(too_big_for_f32(27 * GB, Some(24 * GB)));
        // The 80% line, and unknown memory.
        assert!(too_big_for_f32(9 * GB, Some(10 * GB)));
        assert!(!too_big_for_f32(7 * GB, Some(10 * GB)));
        assert!(!too_big_for_f32(100 * GB, None));
        assert!(available_memory().is_some_and(|m| m > 0));
    }
}
