//! A Hugging Face folder written from the GGUF's dequantized weights (two shards and an index) gives
//! the independent float64 reference's attention (so the Q/K un-permutation, the sharded loader and
//! the HF path are right, not only consistent with the GGUF path), and the `attention` command writes
//! the documented arrays.

mod common;

use common::*;
use prefixscope::capture::capture;
use prefixscope::load::{gguf, load, LoadControl};
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};

#[test]
fn hf_folder_written_from_the_gguf_matches_the_float64_reference() {
    let g = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, weights, _content, _) = gguf::read_weights(&g, &LoadControl::default()).unwrap();
    // Two shards plus an index, the layout large checkpoints use.
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut index = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), weights[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
        for n in part {
            index.insert((*n).clone(), file.into());
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": index }).to_string(),
    )
    .unwrap();
    let mut cfg_json = serde_json::to_value(&cfg).unwrap();
    cfg_json["model_type"] = "llama".into();
    std::fs::write(dir.path().join("config.json"), cfg_json.to_string()).unwrap();
    let from_gguf = load(&g).unwrap();
    from_gguf
        .tokenizer
        .save_json(&dir.path().join("tokenizer.json"))
        .unwrap();
    drop(weights);
    let from_hf = load(dir.path()).unwrap();
    assert_eq!(
        from_hf.model.info().n_params,
        from_gguf.model.info().n_params
    );
    assert_eq!(from_hf.model.info().source, "hf-folder");

    let text = "The capital of France is Paris, and 12 + 30 = 42.";
    assert_eq!(
        from_hf.tokenizer.encode(text, false).unwrap(),
        from_gguf.tokenizer.encode(text, false).unwrap()
    );
    drop(from_gguf);

    // The folder's numbers against the independent float64 reference (tests/fixtures/smollm2), not
    // against the GGUF path it was written from: a wrong un-permutation or dequantization in
    // `read_weights` would be carried into the folder and agree with the GGUF path.
    let fx = fixtures();
    let ids: Vec<u32> = fx["token_ids"].1.iter().map(|&x| x as u32).collect();
    let (shape, data) = &fx["soft_prompt"];
    let soft = Prefix::SoftPrompt(array_f32(shape, data));
    let layers = [0usize, 1, 15, 29];
    let cap = capture(
        from_hf.model.as_ref(),
        &ids,
        Some(&soft),
        &LayerSel::Only(layers.to_vec()),
    )
    .unwrap();
    for l in layers {
        // docs/conventions.md: f32 against float64, 1e-4 in layer 0 and 1e-3 elsewhere.
        let tol = if l == 0 { 1e-4 } else { 1e-3 };
        let lc = cap.layer(l).unwrap();
        for (name, got) in [
            (format!("pretrained_L{l}"), &lc.pretrained),
            (
                format!("soft_with_prefix_L{l}"),
                lc.with_prefix.as_ref().unwrap(),
            ),
            (
                format!("soft_renorm_L{l}"),
                lc.renormalized.as_ref().unwrap(),
            ),
        ] {
            let (shape, want) = &fx[&name];
            assert_eq!(&got.shape, shape, "{name}");
            let err = max_abs(&got.data, want);
            assert!(
                err < tol,
                "HF folder, {name}: max abs {err:e} against the reference"
            );
        }
    }
    let (_, want) = &fx["logits_last_soft"];
    let got = cap.logits_last_prefixed.as_ref().unwrap();
    let err = max_abs(got, want);
    assert!(err < 1e-2, "HF folder, final logits: max abs {err:e}");
    assert_eq!(argmax(got), argmax64(want));
}

#[test]
fn attention_command_writes_the_documented_arrays() {
    let g = smollm2();
    let d = tempfile::tempdir().unwrap();
    let kv = d.path().join("kv.npz");
    let loaded = load(&g).unwrap();
    let info = loaded.model.info().clone();
    let mut prefix = Prefix::zeros(PrefixKind::KeyValue, 3, &info);
    if let Prefix::KeyValue { keys, values } = &mut prefix {
        for (i, x) in keys.data.iter_mut().enumerate() {
            *x = ((i % 7) as f32 - 3.0) * 0.5;
        }
        for (i, x) in values.data.iter_mut().enumerate() {
            *x = ((i % 5) as f32 - 2.0) * 0.1;
        }
    }
    prefix.save(&kv).unwrap();
    let out = d.path().join("att.npz");
    let (code, _, err) = run_bin(&[
        "attention",
        "--model",
        g.to_str().unwrap(),
        "--text",
        "Hello world, 2024",
        "--prefix-kv",
        kv.to_str().unwrap(),
        "--layers",
        "0,15",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let arrays = prefixscope::arrays::read_arrays(&out).unwrap();
    let ids = loaded.tokenizer.encode("Hello world, 2024", false).unwrap();
    let n = ids.len();
    assert_eq!(
        arrays["token_ids"].data,
        ids.iter().map(|&x| x as f32).collect::<Vec<_>>()
    );
    for l in [0, 15] {
        assert_eq!(
            arrays[&format!("blocks.{l}.attn.hook_pattern")].shape,
            vec![9, n, 3 + n]
        );
        assert_eq!(
            arrays[&format!("blocks.{l}.attn.hook_pattern_renormalized")].shape,
            vec![9, n, n]
        );
        assert_eq!(
            arrays[&format!("blocks.{l}.attn.hook_pattern_pretrained")].shape,
            vec![9, n, n]
        );
        assert_eq!(
            arrays[&format!("blocks.{l}.attn.hook_prefix_mass")].shape,
            vec![9, n]
        );
    }
    assert!(!arrays.contains_key("blocks.1.attn.hook_pattern"));
    assert_eq!(arrays["logits_last_pretrained"].shape, vec![49152]);
    assert_eq!(arrays["logits_last_prefixed"].shape, vec![49152]);
    // The file holds exactly what the library computes.
    let cap = capture(
        loaded.model.as_ref(),
        &ids,
        Some(&prefix),
        &LayerSel::Only(vec![0, 15]),
    )
    .unwrap();
    assert_eq!(
        arrays["blocks.15.attn.hook_pattern_renormalized"].data,
        cap.layer(15).unwrap().renormalized.as_ref().unwrap().data
    );
    // Layer 0: renormalized equals pretrained on the file's own numbers.
    let r = &arrays["blocks.0.attn.hook_pattern_renormalized"].data;
    let p = &arrays["blocks.0.attn.hook_pattern_pretrained"].data;
    assert!(r.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-5));

    // JSON: same names as nested lists; without a prefix only the pretrained keys.
    let out = d.path().join("att.json");
    let (code, _, err) = run_bin(&[
        "attention",
        "--model",
        g.to_str().unwrap(),
        "--ids",
        "504,2088",
        "--layers",
        "all",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        v["blocks.29.attn.hook_pattern_pretrained"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
    assert_eq!(
        v["blocks.29.attn.hook_pattern_pretrained"][0][1]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(v.get("blocks.0.attn.hook_pattern").is_none());
    assert!(v.get("logits_last_prefixed").is_none());
    assert_eq!(v["token_ids"], serde_json::json!([504.0, 2088.0]));
}
