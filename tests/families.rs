//! Families and strict loading: both transformers spellings of a config give the same model, and a
//! config key, GGUF metadata key or tensor the model would not use is refused by name (each test
//! fails on the loader that silently dropped it). Numbers against transformers itself are in the
//! conformance suite; here the expected values come from equivalences that hold by construction
//! (GGUF `rope_freqs` of all 4 is linear scaling by 4) or from the bug each test is for.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use prefixscope::capture::capture;
use prefixscope::load::gguf::{gguf_name, permute_rows, GgufFile};
use prefixscope::load::{load, LoadControl};
use prefixscope::model::llama::{Llama, LlamaConfig};
use prefixscope::model::{LayerSel, Transformer};
use serde_json::json;
use std::path::Path;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A word-level `tokenizer.json` of `vocab` tokens `t0`, `t1`, ... (the loader needs one).
fn write_tokenizer(dir: &Path, vocab: usize) {
    let v: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    let t = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": v, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
}

fn folder(dir: &Path, cfg: serde_json::Value) {
    tiny_llama_folder(dir, cfg, |_| {});
    write_tokenizer(dir, 50);
}

/// Every pretrained attention value of a run over fixed ids, all layers.
fn attention(model: &dyn Transformer) -> Vec<f32> {
    let ids = [3u32, 17, 5, 42, 8, 1, 29];
    let c = capture(model, &ids, None, &LayerSel::All).unwrap();
    c.layers
        .iter()
        .flat_map(|l| l.pretrained.data.iter().copied())
        .collect()
}

/// The bug: transformers 5 writes RoPE's base only as `rope_parameters.rope_theta`, and it was read
/// as the 10000 default. Both spellings now give the same model, and it is not the default's.
#[test]
fn a_transformers_5_config_gives_the_model_its_4x_spelling_gives() {
    let d = tempfile::tempdir().unwrap();
    let mut v4 = tiny_llama_config();
    v4["rope_theta"] = 500.0.into();
    v4["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
    let mut v5 = tiny_llama_config();
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5["rope_parameters"] = json!({"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0});
    let mut plain = tiny_llama_config();
    plain.as_object_mut().unwrap().remove("rope_theta");
    let mut runs = Vec::new();
    for (name, cfg) in [("v4", v4), ("v5", v5), ("plain", plain)] {
        let dir = d.path().join(name);
        folder(&dir, cfg);
        runs.push(attention(load(&dir).unwrap().model.as_ref()));
    }
    assert_eq!(
        common::max_abs_diff(&runs[0], &runs[1]),
        0.0,
        "4.x and 5.x spellings"
    );
    let off = common::max_abs_diff(&runs[1], &runs[2]);
    // The tiny model's scores are small, so RoPE moves attention by ~2e-4: far above rounding.
    assert!(
        off > 1e-5,
        "the 5.x base and scaling must change attention: {off:e}"
    );
}

/// SmolLM2 written as transformers 5 writes it (`rope_parameters`) equals its GGUF: with the old
/// loader this folder ran at base 10000 instead of 100000 and attention was off by 0.46.
#[test]
fn smollm2_saved_by_transformers_5_matches_its_gguf() {
    let g = smollm2();
    let d = tempfile::tempdir().unwrap();
    let (cfg, weights, _content, _) =
        prefixscope::load::gguf::read_weights(&g, &LoadControl::default()).unwrap();
    candle_core::safetensors::save(&weights, d.path().join("model.safetensors")).unwrap();
    drop(weights);
    let mut v = serde_json::to_value(&cfg).unwrap();
    let theta = v.as_object_mut().unwrap().remove("rope_theta").unwrap();
    assert_eq!(theta, json!(100000.0));
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": theta});
    v["architectures"] = json!(["LlamaForCausalLM"]);
    v["transformers_version"] = "5.23.0".into();
    v["dtype"] = "float32".into();
    std::fs::write(d.path().join("config.json"), v.to_string()).unwrap();
    let from_gguf = load(&g).unwrap();
    from_gguf
        .tokenizer
        .save_json(&d.path().join("tokenizer.json"))
        .unwrap();
    let from_hf = load(d.path()).unwrap();
    let ids = [504u32, 2088, 28, 253, 3543, 314, 4536, 30];
    let sel = LayerSel::Only(vec![0, 29]);
    let a = capture(from_gguf.model.as_ref(), &ids, None, &sel).unwrap();
    let b = capture(from_hf.model.as_ref(), &ids, None, &sel).unwrap();
    for (x, y) in a.layers.iter().zip(&b.layers) {
        let err = common::max_abs_diff(&x.pretrained.data, &y.pretrained.data);
        assert!(err < 1e-6, "layer {}: {err:e}", x.layer);
    }
}

#[test]
fn a_config_key_we_do_not_implement_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    folder(d.path(), tiny_llama_config());
    let mut cfg = tiny_llama_config();
    cfg["logit_scale"] = 0.5.into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["config.json", "config key 'logit_scale'", "0.5"],
    );
    // A RoPE type we do not implement, in either spelling.
    let mut cfg = tiny_llama_config();
    cfg["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 1e4,
        "short_factor": [1.0], "long_factor": [1.0]});
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["config.json", "rope_type", "'longrope'", "llama3, yarn"],
    );
    // A key that is harmless only at some values (Gemma's attention soft cap is not implemented).
    let mut cfg = tiny_llama_config();
    cfg["model_type"] = "gemma3_text".into();
    cfg["attn_logit_softcapping"] = 50.0.into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["config key 'attn_logit_softcapping'", "50"],
    );
}

#[test]
fn a_tensor_the_model_would_not_read_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    // q_proj.bias without attention_bias: the old loader dropped it (attention off by 0.99).
    tiny_llama_folder(d.path(), tiny_llama_config(), |m| {
        m.insert(
            "model.layers.1.self_attn.q_proj.bias".into(),
            Tensor::ones(16, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["tensor 'model.layers.1.self_attn.q_proj.bias'", "not read"],
    );
    // With attention_bias the same biases are read (and o_proj.bias is then required).
    let mut cfg = tiny_llama_config();
    cfg["attention_bias"] = true.into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["missing tensor 'model.layers.0.self_attn.q_proj.bias'"],
    );
    // GGUF: a mixture-of-experts router in a llama file.
    let f = d.path().join("extra.gguf");
    tiny_gguf(
        &f,
        &[],
        Some(("blk.0.ffn_gate_inp.weight", vec![16, 4])),
        None,
    );
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "tensor 'blk.0.ffn_gate_inp.weight'", "not read"],
    );
}

#[test]
fn a_gguf_metadata_key_we_do_not_implement_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("scaled.gguf");
    tiny_gguf(
        &f,
        &[("llama.attention.scale", GgufVal::F32(0.5))],
        None,
        None,
    );
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "metadata 'llama.attention.scale'", "0.5"],
    );
    let f = d.path().join("dynamic.gguf");
    tiny_gguf(
        &f,
        &[
            ("llama.rope.scaling.type", GgufVal::Str("longrope")),
            ("llama.rope.scaling.factor", GgufVal::F32(4.0)),
        ],
        None,
        None,
    );
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[
            p(&f),
            "llama.rope.scaling.type",
            "'longrope'",
            "linear, yarn",
        ],
    );
}

/// llama.cpp divides each RoPE frequency by its `rope_freqs.weight` factor: factors all 4 are linear
/// scaling by 4, which the file can also state as `rope.scaling.type = linear`. Ignoring the tensor
/// (the old loader) gives the unscaled model instead.
#[test]
fn gguf_rope_freqs_divide_each_frequency() {
    let d = tempfile::tempdir().unwrap();
    let load_f32 = |f: &Path| -> Llama {
        let g = GgufFile::open(f, &LoadControl::default()).unwrap();
        let cfg = g.cfg.clone();
        let vb = candle_nn::VarBuilder::from_backend(Box::new(g), DType::F32, Device::Cpu);
        Llama::load(vb, &cfg, "gguf", "f32").unwrap()
    };
    let (freqs, linear, plain) = (
        d.path().join("freqs.gguf"),
        d.path().join("linear.gguf"),
        d.path().join("plain.gguf"),
    );
    tiny_gguf(&freqs, &[], None, Some(vec![4.0; 2]));
    tiny_gguf(
        &linear,
        &[
            ("llama.rope.scaling.type", GgufVal::Str("linear")),
            ("llama.rope.scaling.factor", GgufVal::F32(4.0)),
        ],
        None,
        None,
    );
    tiny_gguf(&plain, &[], None, None);
    let (a, b, c) = (
        attention(&load_f32(&freqs)),
        attention(&load_f32(&linear)),
        attention(&load_f32(&plain)),
    );
    assert!(
        common::max_abs_diff(&a, &b) < 1e-7,
        "rope_freqs 4 against linear 4"
    );
    let off = common::max_abs_diff(&a, &c);
    assert!(off > 1e-5, "rope_freqs must change attention: {off:e}");
}

#[test]
fn a_run_longer_than_the_sliding_window_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = tiny_llama_config();
    cfg["model_type"] = "mistral".into();
    cfg["sliding_window"] = 4.into();
    folder(d.path(), cfg);
    let dir = p(d.path());
    let out = d.path().join("o.npz");
    let o = p(&out);
    let (code, _, err) = run_bin(&["attention", "--model", dir, "--ids", "1,2,3,4", "--out", o]);
    assert_eq!(code, 0, "{err}");
    assert_clean_error(
        &[
            "attention",
            "--model",
            dir,
            "--ids",
            "1,2,3,4,5",
            "--out",
            o,
        ],
        &["sliding_window = 4", "at most 4 positions", "5 positions"],
    );
    // The prefix counts: 2 soft-prompt rows + 3 tokens.
    let soft = d.path().join("soft.npy");
    write_npy(&soft, &[2, 16], vec![0.1; 32]);
    assert_clean_error(
        &[
            "attention",
            "--model",
            dir,
            "--ids",
            "1,2,3",
            "--soft-prompt",
            p(&soft),
            "--out",
            o,
        ],
        &["sliding_window = 4", "5 positions"],
    );
    // `sliding_window: null` is no window.
    let mut cfg = tiny_llama_config();
    cfg["model_type"] = "mistral".into();
    cfg["sliding_window"] = serde_json::Value::Null;
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let (code, _, err) = run_bin(&[
        "attention",
        "--model",
        dir,
        "--ids",
        "1,2,3,4,5,6",
        "--out",
        o,
    ]);
    assert_eq!(code, 0, "{err}");
}

/// A tiny llama GGUF (the weights of [`tiny_llama_folder`], Q/K rows permuted as llama.cpp's
/// converter does, F32), with `extra_kv` metadata, an optional extra tensor (name, HF shape) and
/// optional `rope_freqs.weight` factors. No tokenizer: these tests use `--ids` paths or fail earlier.
fn tiny_gguf(
    path: &Path,
    extra_kv: &[(&'static str, GgufVal)],
    extra_tensor: Option<(&str, Vec<usize>)>,
    rope_freqs: Option<Vec<f32>>,
) {
    let dir = tempfile::tempdir().unwrap();
    tiny_llama_folder(dir.path(), tiny_llama_config(), |_| {});
    let st =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let cfg: LlamaConfig = serde_json::from_value(tiny_llama_config()).unwrap();
    let mut kv = vec![
        ("general.architecture", GgufVal::Str("llama")),
        ("llama.block_count", GgufVal::U32(2)),
        ("llama.embedding_length", GgufVal::U32(16)),
        ("llama.feed_forward_length", GgufVal::U32(32)),
        ("llama.attention.head_count", GgufVal::U32(4)),
        ("llama.attention.head_count_kv", GgufVal::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", GgufVal::F32(1e-5)),
        ("llama.rope.freq_base", GgufVal::F32(10000.0)),
        ("llama.vocab_size", GgufVal::U32(50)),
    ];
    kv.extend(extra_kv.iter().map(|(k, v)| {
        (
            *k,
            match v {
                GgufVal::U32(x) => GgufVal::U32(*x),
                GgufVal::F32(x) => GgufVal::F32(*x),
                GgufVal::Str(x) => GgufVal::Str(x),
            },
        )
    }));
    let bytes = |t: &Tensor| -> Vec<u8> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect()
    };
    let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = Vec::new();
    for (hf, _) in cfg.expected_tensors() {
        let mut w = st[&hf].clone();
        if hf.ends_with("q_proj.weight") {
            w = permute_rows(&w, 4).unwrap();
        } else if hf.ends_with("k_proj.weight") {
            w = permute_rows(&w, 2).unwrap();
        }
        let dims: Vec<u64> = w.dims().iter().rev().map(|&x| x as u64).collect();
        tensors.push((gguf_name(&hf, false), dims, 0, bytes(&w)));
    }
    if let Some((name, shape)) = extra_tensor {
        let n: usize = shape.iter().product();
        let dims = shape.iter().rev().map(|&x| x as u64).collect();
        tensors.push((name.to_string(), dims, 0, vec![0u8; 4 * n]));
    }
    if let Some(f) = rope_freqs {
        let t = Tensor::new(f.as_slice(), &Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            vec![f.len() as u64],
            0,
            bytes(&t),
        ));
    }
    let refs: Vec<(&str, Vec<u64>, u32, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, t, b)| (n.as_str(), d.clone(), *t, b.clone()))
        .collect();
    write_gguf(path, &kv, &refs);
}
