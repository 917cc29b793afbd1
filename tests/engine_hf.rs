//! A Hugging Face folder written from the GGUF's dequantized weights gives the same attention as the
//! GGUF itself (so the Q/K un-permutation and both loaders agree), and the `attention` command writes
//! the documented arrays.

mod common;

use common::*;
use prefixscope::capture::capture;
use prefixscope::load::{gguf, load, LoadControl};
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};

#[test]
fn hf_folder_matches_the_gguf_it_was_made_from() {
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
    let ids = from_hf.tokenizer.encode(text, false).unwrap();
    assert_eq!(ids, from_gguf.tokenizer.encode(text, false).unwrap());
    let soft = Prefix::SoftPrompt(prefixscope::arrays::Array {
        shape: vec![2, 576],
        data: (0..1152).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect(),
    });
    let sel = LayerSel::Only(vec![0, 7, 29]);
    let c1 = capture(from_gguf.model.as_ref(), &ids, Some(&soft), &sel).unwrap();
    let c2 = capture(from_hf.model.as_ref(), &ids, Some(&soft), &sel).unwrap();
    for (l1, l2) in c1.layers.iter().zip(&c2.layers) {
        let a = l1.with_prefix.as_ref().unwrap();
        let b = l2.with_prefix.as_ref().unwrap();
        let err = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-6, "layer {}: HF vs GGUF max abs {err:e}", l1.layer);
        let err = l1
            .pretrained
            .data
            .iter()
            .zip(&l2.pretrained.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            err < 1e-6,
            "layer {} pretrained: HF vs GGUF max abs {err:e}",
            l1.layer
        );
    }
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
            arrays[&format!("with_prefix_L{l}")].shape,
            vec![9, n, 3 + n]
        );
        assert_eq!(arrays[&format!("renormalized_L{l}")].shape, vec![9, n, n]);
        assert_eq!(arrays[&format!("pretrained_L{l}")].shape, vec![9, n, n]);
        assert_eq!(arrays[&format!("prefix_mass_L{l}")].shape, vec![9, n]);
    }
    assert!(!arrays.contains_key("with_prefix_L1"));
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
        arrays["renormalized_L15"].data,
        cap.layer(15).unwrap().renormalized.as_ref().unwrap().data
    );
    // Layer 0: renormalized equals pretrained on the file's own numbers.
    let r = &arrays["renormalized_L0"].data;
    let p = &arrays["pretrained_L0"].data;
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
    assert_eq!(v["pretrained_L29"].as_array().unwrap().len(), 9);
    assert_eq!(v["pretrained_L29"][0][1].as_array().unwrap().len(), 2);
    assert!(v.get("with_prefix_L0").is_none());
    assert!(v.get("logits_last_prefixed").is_none());
    assert_eq!(v["token_ids"], serde_json::json!([504.0, 2088.0]));
}
