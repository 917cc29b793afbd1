//! The conformance suite: a tiny random checkpoint of every model family, as a Hugging Face folder
//! (transformers 5.x config and the same config in 4.x spelling) and as a GGUF written the way
//! llama.cpp's converter writes it, against reference attention and logits from transformers (eager,
//! float64) in tests/fixtures/conformance/<variant>/ (made by scripts/make_conformance.py; see the
//! README there). Attention must match to 1e-5 at every layer and the last position's logits to 1e-4,
//! with no prefix, with a soft prompt and with a key/value prefix.
//!
//! For every feature that changes the numbers (bias, RoPE scaling and base, q/k norm, Gemma's embedding
//! scale and local RoPE, partial rotary) the fixtures also hold the model computed *without* it; the
//! last test checks those are far outside the tolerance, so each comparison can catch that bug.

mod common;

use prefixscope::capture::capture;
use prefixscope::load::load;
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The variants checked: those whose family the loaders implement.
const VARIANTS: &[&str] = &[
    "llama",
    "llama_bias",
    "llama3_scaling",
    "llama_linear",
    "llama_yarn",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma3",
    "phi3",
];

const ATTN_TOL: f32 = 1e-5;
const LOGIT_TOL: f32 = 1e-4;

type Arrays = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn dir(variant: &str) -> PathBuf {
    common::repo_path("tests/fixtures/conformance").join(variant)
}

fn meta(variant: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir(variant).join("meta.json")).unwrap()).unwrap()
}

fn references(variant: &str) -> Arrays {
    common::npz_f32(&dir(variant).join("reference.npz"))
}

/// Compare one loaded checkpoint with the references of `variant`, every case and layer; the
/// failures, one line each.
fn check(variant: &str, model_path: &Path) -> Vec<String> {
    let m = meta(variant);
    let refs = references(variant);
    let loaded = match load(model_path) {
        Ok(l) => l,
        Err(e) => return vec![format!("{variant}: load failed: {}", e.one_line())],
    };
    let model = loaded.model.as_ref();
    let ids: Vec<u32> = m["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let layers = m["layers"].as_u64().unwrap() as usize;
    let d = dir(variant);
    let mut bad = Vec::new();
    let (mut worst_attn, mut worst_logit) = (0.0f32, 0.0f32);
    for case in ["none", "soft", "kv"] {
        let prefix = match case {
            "soft" => Some(
                Prefix::load_for(
                    &d.join("soft_prompt.npy"),
                    PrefixKind::SoftPrompt,
                    model.info(),
                )
                .unwrap(),
            ),
            "kv" => Some(
                Prefix::load_for(&d.join("prefix_kv.npz"), PrefixKind::KeyValue, model.info())
                    .unwrap(),
            ),
            _ => None,
        };
        let cap = match capture(model, &ids, prefix.as_ref(), &LayerSel::All) {
            Ok(c) => c,
            Err(e) => {
                bad.push(format!("{variant} {case}: {}", e.one_line()));
                continue;
            }
        };
        for l in 0..layers {
            let lc = cap.layer(l).unwrap();
            let got = match case {
                "none" => &lc.pretrained,
                _ => lc.with_prefix.as_ref().unwrap(),
            };
            let (shape, want) = &refs[&format!("{case}_attn_L{l}")];
            if &got.shape != shape {
                bad.push(format!(
                    "{variant} {case} L{l}: shape {:?}, expected {shape:?}",
                    got.shape
                ));
                continue;
            }
            let err = common::max_abs_diff(&got.data, want);
            worst_attn = worst_attn.max(err);
            if err.is_nan() || err > ATTN_TOL {
                bad.push(format!("{variant} {case} L{l}: attention max abs {err:e}"));
            }
        }
        let logits = match case {
            "none" => &cap.logits_last_pretrained,
            _ => cap.logits_last_prefixed.as_ref().unwrap(),
        };
        let err = common::max_abs_diff(logits, &refs[&format!("{case}_logits_last")].1);
        worst_logit = worst_logit.max(err);
        if err.is_nan() || err > LOGIT_TOL {
            bad.push(format!("{variant} {case}: logits max abs {err:e}"));
        }
    }
    eprintln!(
        "{variant} {}: worst attention {worst_attn:.1e}, logits {worst_logit:.1e}",
        model_path.display()
    );
    bad
}

fn run_all(path_of: impl Fn(&str) -> PathBuf) {
    let mut bad = Vec::new();
    for v in VARIANTS {
        bad.extend(check(v, &path_of(v)));
    }
    assert!(
        bad.is_empty(),
        "{} failures:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn hf_folders_with_transformers_5_configs_match_transformers() {
    run_all(|v| dir(v).join("hf"));
}

#[test]
fn hf_folders_with_transformers_4_configs_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    run_all(|v| {
        let d = tmp.path().join(v);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(dir(v).join("hf").join(f), d.join(f)).unwrap();
        }
        std::fs::copy(dir(v).join("config_4x.json"), d.join("config.json")).unwrap();
        d
    });
}

#[test]
fn gguf_files_match_transformers() {
    run_all(|v| dir(v).join("model.gguf"));
}

/// The numbers without each feature are far outside the tolerance: a loader that dropped the
/// feature would fail the tests above.
#[test]
fn ignoring_any_feature_would_fail_the_tolerance() {
    let mut seen = 0;
    for v in VARIANTS {
        let refs = references(v);
        let layers = meta(v)["layers"].as_u64().unwrap() as usize;
        let feats: Vec<String> = meta(v)["features_ignored"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for f in feats {
            let gap = (0..layers)
                .map(|l| {
                    common::max_abs_diff(
                        &refs[&format!("ignored_{f}_none_attn_L{l}")].1,
                        &refs[&format!("none_attn_L{l}")].1,
                    )
                })
                .fold(0.0, f32::max);
            assert!(
                gap > 1000.0 * ATTN_TOL,
                "{v}: ignoring {f} moves attention by only {gap:e}"
            );
            seen += 1;
        }
    }
    // bias (2), RoPE base, three scalings, q/k norm (2), Gemma's embedding scale and local RoPE,
    // partial rotary.
    assert!(seen >= 11, "only {seen} features checked");
}
