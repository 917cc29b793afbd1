//! Open a checkpoint: detect its format from the path, load weights and tokenizer.
//!
//! - a directory: a Hugging Face folder (`config.json`, `model.safetensors` or a sharded index,
//!   `tokenizer.json`) of a registered family ([`crate::model::family`]) or `gpt2`;
//! - `*.gguf`: a GGUF file of a registered family, dequantized to f32 (or kept quantized);
//! - `*.safetensors`: one of our own files (toy GPT or construction), told apart by its metadata key
//!   `prefixscope.kind`.

pub mod gguf;
pub mod gguf_check;
pub mod guard;
pub mod hf;
pub mod hf_gpt2;
pub mod limits;
pub mod safetensors_check;
pub mod tokenizer_check;
pub mod toy;

use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A loaded checkpoint.
pub struct Loaded {
    pub model: Box<dyn Transformer>,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
}

/// Progress reporting and cancellation for long loads (the GUI loads off the UI thread).
#[derive(Clone, Default)]
pub struct LoadControl {
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called with a fraction in 0..=1.
    pub progress: Option<Arc<dyn Fn(f32) + Send + Sync>>,
    /// Keep GGUF weights in their quantized blocks instead of dequantizing them all to f32 at load:
    /// each product dequantizes its weight and multiplies in f32, so the numbers are the f32 mode's
    /// at about half its memory (SmolLM2: 292 MB against 658 MB). A GGUF file whose f32 weights would
    /// not fit in 80% of the available memory is loaded this way without being asked.
    pub quantized: bool,
}

impl LoadControl {
    pub fn step(&self, frac: f32) -> Result<()> {
        if let Some(p) = &self.progress {
            p(frac);
        }
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

/// Load whatever `path` holds.
pub fn load(path: &Path) -> Result<Loaded> {
    load_with(path, &LoadControl::default())
}

/// Load `path` with progress and cancellation. Every size the files state is bounded before the
/// family loaders build anything from it ([`limits::check_hf_folder`], [`gguf_check::check`]; our
/// own files in [`toy::read`]), and a panic inside any reader becomes a one-line error naming the
/// file ([`guard::catch`]).
pub fn load_with(path: &Path, ctl: &LoadControl) -> Result<Loaded> {
    let loaded = guard::catch(path, "checkpoint", || load_checked(path, ctl));
    release_load_temporaries();
    loaded
}

/// Give the pages of the loader's freed temporaries (each weight's file copy, the halves of a fused
/// projection, a dequantized block) back to the kernel. The binary keeps freed blocks under 32 MB in
/// the heap for the forward passes to reuse (`keep_freed_memory` in `main.rs`), and those the load
/// left between live weights would otherwise stay resident: 420 MB after loading SmolLM2 in f32.
fn release_load_temporaries() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn load_checked(path: &Path, ctl: &LoadControl) -> Result<Loaded> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        limits::check_hf_folder(path)?;
        return hf::load(path, ctl);
    }
    match crate::arrays::extension(path).as_str() {
        "gguf" => {
            gguf_check::check(path)?;
            gguf::load(path, ctl)
        }
        "safetensors" => toy::load(path, ctl),
        other => Err(Error::unsupported(
            path,
            "checkpoint format",
            if other.is_empty() {
                "a file without extension".to_string()
            } else {
                format!("'.{other}'")
            },
            "a Hugging Face folder, .gguf, or a prefixscope .safetensors",
        )),
    }
}
