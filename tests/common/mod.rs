//! Shared helpers for the integration tests.
#![allow(dead_code)]

use prefixscope::arrays::Array;
use std::path::PathBuf;

/// The SmolLM2 GGUF that `scripts/fetch-smollm2.sh` caches. Tests that need it fail (not skip) when it
/// is absent, so CI can never pass without checking the real model: `.ci/run` fetches it first.
pub fn smollm2() -> PathBuf {
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
    let p = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/fetch-smollm2.sh` first",
        p.display()
    );
    p
}

/// `../shared/fixtures` beside the checkout.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
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
