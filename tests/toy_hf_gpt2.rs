//! A Hugging Face GPT-2 folder written from a toy (Conv1D weights transposed to `(in, out)`, names
//! without minGPT's `transformer.` prefix, tied head) loads to the same model: same attention, same
//! logits.

mod toy_common;

use candle_core::Tensor;
use prefixscope::capture::capture;
use prefixscope::load;
use prefixscope::model::LayerSel;
use std::collections::HashMap;

const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"0":0,"1":1,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7,"8":8,"9":9},
"unk_token":"0"}}"#;

#[test]
fn gpt2_folder_gives_the_same_attention_as_the_toy() {
    let dir = toy_common::tmp_dir("hf-gpt2");
    let cfg = toy_common::cfg(2, 2, 16, false);
    let toy_path = dir.join("toy.safetensors");
    toy_common::write_toy(&toy_path, &cfg, 11);
    // The GPT-2 folder: transposed Conv1D weights, bare names, no lm_head (tied).
    let folder = dir.join("gpt2");
    std::fs::create_dir_all(&folder).unwrap();
    let mut hf: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in toy_common::random_tensors(&cfg, 11) {
        if name == "lm_head.weight" {
            continue;
        }
        let bare = name.strip_prefix("transformer.").unwrap().to_string();
        let conv = bare.ends_with(".weight")
            && (bare.contains("c_attn") || bare.contains("c_proj") || bare.contains("c_fc"));
        let t = if conv {
            t.t().unwrap().contiguous().unwrap()
        } else {
            t
        };
        hf.insert(bare, t);
    }
    candle_core::safetensors::save(&hf, folder.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "gpt2", "vocab_size": 10, "n_positions": 24, "n_layer": 2, "n_head": 2,
        "n_embd": 16, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"
    });
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    std::fs::write(folder.join("tokenizer.json"), TOKENIZER).unwrap();

    let a = load::load(&toy_path).unwrap();
    let b = load::load(&folder).unwrap();
    assert_eq!(b.model.info().source, "hf-folder");
    assert_eq!(b.model.info().max_positions, Some(24));
    let ids = b.tokenizer.encode("2 6 0 1 4 6 3", false).unwrap();
    assert_eq!(ids, vec![2, 6, 0, 1, 4, 6, 3]);
    let ca = capture(a.model.as_ref(), &ids, None, &LayerSel::All).unwrap();
    let cb = capture(b.model.as_ref(), &ids, None, &LayerSel::All).unwrap();
    for (la, lb) in ca.layers.iter().zip(&cb.layers) {
        let d = la
            .pretrained
            .data
            .iter()
            .zip(&lb.pretrained.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "layer {} attention differs by {d}", la.layer);
    }
    let d = ca
        .logits_last_pretrained
        .iter()
        .zip(&cb.logits_last_pretrained)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-4, "logits differ by {d}");
    // The attention is not trivial (a transposition mistake would show).
    let first = &ca.layers[0].pretrained;
    assert!(first.data.iter().any(|&x| x > 0.3 && x < 0.99));

    // A weight stored untransposed is reported by name and shape.
    let mut bad = hf.clone();
    bad.insert(
        "h.0.mlp.c_fc.weight".into(),
        Tensor::zeros((64, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&bad, folder.join("model.safetensors")).unwrap();
    let err = load::load(&folder).err().unwrap().one_line();
    assert!(
        err.contains("h.0.mlp.c_fc.weight") && err.contains("[16, 64]"),
        "{err}"
    );
}
