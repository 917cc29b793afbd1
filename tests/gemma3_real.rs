//! The real Gemma 3 270M (Q4_K_M GGUF, `.ci/fetch-gemma3.sh`) against transformers loading the same
//! file (`gguf_file=`, float64 run; tests/fixtures/gemma3_270m, made by
//! `scripts/make_conformance.py --gemma3-real`): llama.cpp's token ids for the prompt, attention at every
//! layer and the reference's top-64 logits, with no prefix, a soft prompt and a key/value prefix.

mod common;

use prefixscope::capture::capture;
use prefixscope::load::load;
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};
use std::collections::HashMap;

type Arrays = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The same tolerances as the conformance suite (measured: attention 2.6e-6, logits 1.5e-5).
const ATTN_TOL: f32 = 1e-5;
const LOGIT_TOL: f32 = 1e-4;

fn fixtures() -> std::path::PathBuf {
    common::repo_path("tests/fixtures/gemma3_270m")
}

fn references() -> Arrays {
    common::npz_f32(&fixtures().join("reference.npz"))
}

#[test]
fn gemma3_270m_matches_transformers_on_the_same_gguf() {
    let path = common::gemma3();
    let loaded = load(&path).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap())
            .unwrap();
    let refs = references();
    let ids: Vec<u32> = refs["token_ids"].1.iter().map(|&x| x as u32).collect();
    // Our tokenizer gives llama.cpp's ids (BOS asked for).
    let prompt = meta["prompt"].as_str().unwrap();
    assert_eq!(loaded.tokenizer.encode(prompt, true).unwrap(), ids);
    let model = loaded.model.as_ref();
    let layers = meta["layers"].as_u64().unwrap() as usize;
    let top: Vec<usize> = refs["logits_top_ids"]
        .1
        .iter()
        .map(|&x| x as usize)
        .collect();
    let mut bad = Vec::new();
    for case in ["none", "soft", "kv"] {
        let prefix = match case {
            "soft" => Some(
                Prefix::load_for(
                    &fixtures().join("soft_prompt.npy"),
                    PrefixKind::SoftPrompt,
                    model.info(),
                )
                .unwrap(),
            ),
            "kv" => Some(
                Prefix::load_for(
                    &fixtures().join("prefix_kv.npz"),
                    PrefixKind::KeyValue,
                    model.info(),
                )
                .unwrap(),
            ),
            _ => None,
        };
        let cap = capture(model, &ids, prefix.as_ref(), &LayerSel::All).unwrap();
        let mut worst = 0.0f32;
        for l in 0..layers {
            let lc = cap.layer(l).unwrap();
            let got = match case {
                "none" => &lc.pretrained,
                _ => lc.with_prefix.as_ref().unwrap(),
            };
            let (shape, want) = &refs[&format!("{case}_attn_L{l}")];
            assert_eq!(&got.shape, shape, "{case} L{l}");
            let err = common::max_abs_diff(&got.data, want);
            worst = worst.max(err);
            if err.is_nan() || err > ATTN_TOL {
                bad.push(format!("{case} L{l}: attention max abs {err:e}"));
            }
        }
        let logits = match case {
            "none" => &cap.logits_last_pretrained,
            _ => cap.logits_last_prefixed.as_ref().unwrap(),
        };
        let got: Vec<f32> = top.iter().map(|&i| logits[i]).collect();
        let lerr = common::max_abs_diff(&got, &refs[&format!("{case}_logits_top")].1);
        eprintln!("gemma3 270M {case}: worst attention {worst:.1e}, top-64 logits {lerr:.1e}");
        if lerr.is_nan() || lerr > LOGIT_TOL {
            bad.push(format!("{case}: logits max abs {lerr:e}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
