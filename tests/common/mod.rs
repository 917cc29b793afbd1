//! Shared helpers for the integration tests.
#![allow(dead_code)]

#[cfg(feature = "gui")]
pub mod gui;

use prefixscope::arrays::Array;
use std::path::PathBuf;

mod scratch;
#[allow(unused_imports)]
pub use scratch::{temp_dir, Scratch};

/// Every text string in a parsed SVG tree.
pub fn svg_texts(tree: &resvg::usvg::Tree) -> Vec<String> {
    fn walk(g: &resvg::usvg::Group, out: &mut Vec<String>) {
        for n in g.children() {
            match n {
                resvg::usvg::Node::Group(g) => walk(g, out),
                resvg::usvg::Node::Text(t) => {
                    out.push(t.chunks().iter().map(|c| c.text()).collect())
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(tree.root(), &mut out);
    out
}

/// The SmolLM2 GGUF that `.ci/fetch-smollm2.sh` caches. Tests that need it fail (not skip) when it
/// is absent, so CI can never pass without checking the real model: `.ci/run` fetches it first.
pub fn smollm2() -> PathBuf {
    let p = smollm2_path();
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/fetch-smollm2.sh` first",
        p.display()
    );
    p
}

/// Whether this is a CI run (`CI` set to anything but "", "0" or "false", as CI services set it and
/// `.ci/run` exports it). There a test whose file or tool is missing fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// For tests that may skip on a developer machine: `true` when `what` is available; otherwise a
/// notice and `false`, or, under CI, a failure naming `what` and `how` to get it.
pub fn available_or_skip(available: bool, what: &str, how: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_ci(),
        "{what} is missing and CI is set: a skipped test would pass without checking ({how})"
    );
    eprintln!("SKIPPED: {what} is missing ({how})");
    false
}

/// The cached SmolLM2 for tests that skip without it outside CI (see [`available_or_skip`]).
pub fn smollm2_or_skip() -> Option<PathBuf> {
    let p = smollm2_path();
    available_or_skip(
        p.exists(),
        &p.display().to_string(),
        "run `bash .ci/fetch-smollm2.sh`; .ci/run does",
    )
    .then_some(p)
}

/// Where the SmolLM2 GGUF is expected (`PREFIXSCOPE_SMOLLM2`, else the fetch script's cache).
pub fn smollm2_path() -> PathBuf {
    if let Ok(p) = std::env::var("PREFIXSCOPE_SMOLLM2") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("PREFIXSCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let base = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
                });
            base.join("prefixscope")
        });
    cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The Gemma 3 270M GGUF that `.ci/fetch-gemma3.sh` caches (`PREFIXSCOPE_GEMMA3`, else the fetch
/// script's cache). Tests that need it fail when it is absent, as for SmolLM2.
pub fn gemma3() -> PathBuf {
    let p = match std::env::var("PREFIXSCOPE_GEMMA3") {
        Ok(p) => PathBuf::from(p),
        Err(_) => smollm2_path().with_file_name("gemma-3-270m-q4_k_m.gguf"),
    };
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/fetch-gemma3.sh` first",
        p.display()
    );
    p
}

/// A file of this repository (`models/...`).
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The SmolLM2 float64 reference fixtures kept in the repository (`tests/fixtures/smollm2`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2")
}

/// Every array of `fixtures.npz`, as f64.
pub fn fixtures() -> std::collections::HashMap<String, (Vec<usize>, Vec<f64>)> {
    let path = fixtures_dir().join("fixtures.npz");
    let all = candle_core::Tensor::read_npz(&path).expect("read fixtures.npz");
    all.into_iter()
        .map(|(n, t)| {
            let shape = t.dims().to_vec();
            let data = t
                .to_dtype(candle_core::DType::F64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f64>())
                .expect("f64 fixture");
            (n, (shape, data))
        })
        .collect()
}

/// Every array of an `.npz` reference file as `(shape, f32 data)`.
pub fn npz_f32(
    path: &std::path::Path,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    candle_core::Tensor::read_npz(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .into_iter()
        .map(|(n, t)| {
            let shape = t.dims().to_vec();
            let data = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32 data");
            (n, (shape, data))
        })
        .collect()
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn array_f32(shape: &[usize], data: &[f64]) -> Array {
    Array {
        shape: shape.to_vec(),
        data: data.iter().map(|&x| x as f32).collect(),
    }
}

pub fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

pub fn argmax64(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// The path of the built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_prefixscope")
}

/// Run the binary; returns (status code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run prefixscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Assert the binary failed cleanly: exit status 2, one line on stderr starting with "error:",
/// containing every `needle`, and no panic.
pub fn assert_clean_error(args: &[&str], needles: &[&str]) -> String {
    let (code, _out, err) = run_bin(args);
    assert_eq!(code, 2, "exit status for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line for {args:?}, got: {err}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {}", lines[0]);
    }
    lines[0].to_string()
}

/// A tiny LLaMA-style Hugging Face folder with deterministic weights. `edit` may drop or replace
/// tensors (by HF name) before they are written, to make broken checkpoints.
pub fn tiny_llama_folder(
    dir: &std::path::Path,
    config: serde_json::Value,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    use prefixscope::model::llama::LlamaConfig;
    std::fs::create_dir_all(dir).unwrap();
    // A model_type no family reads (to test its refusal) still gets Llama's tensors.
    let mut known = config.clone();
    let t = known["model_type"].as_str().unwrap_or("");
    if prefixscope::model::family::by_model_type(t).is_none() {
        known["model_type"] = "llama".into();
    }
    let cfg: LlamaConfig = serde_json::from_value(known).unwrap();
    let mut map = std::collections::HashMap::new();
    for (i, (name, shape)) in cfg.expected_tensors().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|k| (((k * 31 + i * 17) % 97) as f32 / 97.0 - 0.5) * 0.2)
            .collect();
        map.insert(
            name,
            candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap(),
        );
    }
    edit(&mut map);
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

pub fn tiny_llama_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true
    })
}

/// A minimal GGUF v3 file written byte by byte, so tests can make files candle would refuse to write
/// (other architectures, unsupported quantizations). `tensors`: (name, dims in GGUF order, ggml type id,
/// raw data bytes).
pub fn write_gguf(
    path: &std::path::Path,
    kv: &[(&str, GgufVal)],
    tensors: &[(&str, Vec<u64>, u32, Vec<u8>)],
) {
    fn s(out: &mut Vec<u8>, x: &str) {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        s(&mut out, k);
        match v {
            GgufVal::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            GgufVal::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            GgufVal::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(&mut out, x);
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, _, _, data) in tensors {
        out.extend(data);
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    std::fs::write(path, out).unwrap();
}

pub enum GgufVal {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

/// Write one f32 array as .npy.
pub fn write_npy(path: &std::path::Path, shape: &[usize], data: Vec<f32>) {
    candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
        .unwrap()
        .write_npy(path)
        .unwrap();
}
