//! Bad-input classes the error tests did not reach, through the built binary on the small valid HF
//! folder (`tests/regressions/hostile-files/tiny-hf-folder-valid`: 2 layers, 2 KV heads, head size
//! 16, d_model 64) and the shipped sorter: each exits with status 2 and one line naming the file or
//! flag and the field, expected against found, and writes no output.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    repo_path("tests/regressions/hostile-files/tiny-hf-folder-valid")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the tiny folder in `dir`, without the files named in `drop`.
fn tiny_copy(dir: &Path, drop: &[&str]) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !drop.contains(&f) {
            std::fs::copy(tiny().join(f), out.join(f)).unwrap();
        }
    }
    out
}

fn npz(path: &Path, arrays: &[(&str, Vec<usize>)]) {
    let named: Vec<(String, candle_core::Tensor)> = arrays
        .iter()
        .map(|(n, shape)| {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = (0..len).map(|i| (i % 7) as f32 * 0.1).collect();
            (
                n.to_string(),
                candle_core::Tensor::from_vec(data, shape.as_slice(), &candle_core::Device::Cpu)
                    .unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &candle_core::Tensor)> =
        named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    candle_core::Tensor::write_npz(&refs, path).unwrap();
}

/// `attention` on the tiny folder with `extra` arguments must fail with `needles`; no output file.
fn attention_fails(dir: &Path, extra: &[&str], needles: &[&str]) {
    let out = dir.join("out.npz");
    let model = tiny();
    let mut args = vec!["attention", "--model", s(&model), "--ids", "1,2,3"];
    args.extend(extra);
    args.extend(["--out", s(&out)]);
    assert_clean_error(&args, needles);
    assert!(!out.exists(), "an output was written for {extra:?}");
}

#[test]
fn layers_out_of_range_or_malformed() {
    let dir = temp_dir("bad-layers");
    attention_fails(
        &dir,
        &["--layers", "0,2"],
        &["--layers", "below 2", "found 2"],
    );
    attention_fails(&dir, &["--layers", "1,x"], &["--layers", "'x'"]);
    attention_fails(&dir, &["--layers=-1"], &["--layers", "'-1'"]);
}

#[test]
fn key_value_prefix_with_missing_or_misshapen_arrays() {
    let dir = temp_dir("bad-kv");
    // Only the keys.
    let f = dir.join("keys-only.npz");
    npz(&f, &[("keys", vec![2, 2, 3, 16])]);
    attention_fails(&dir, &["--prefix-kv", s(&f)], &[s(&f), "values"]);
    // Values of another length than the keys.
    let f = dir.join("mismatch.npz");
    npz(
        &f,
        &[("keys", vec![2, 2, 3, 16]), ("values", vec![2, 2, 4, 16])],
    );
    attention_fails(
        &dir,
        &["--prefix-kv", s(&f)],
        &[s(&f), "'values'", "[2, 2, 4, 16]", "[2, 2, 3, 16]"],
    );
    // Keys of the wrong head size (8, the model's is 16).
    let f = dir.join("head-dim.npz");
    npz(
        &f,
        &[("keys", vec![2, 2, 3, 8]), ("values", vec![2, 2, 3, 8])],
    );
    attention_fails(
        &dir,
        &["--prefix-kv", s(&f)],
        &[s(&f), "'keys'", "[2, 2, 3, 8]", "[2, 2, 3, 16]"],
    );
    // One KV head too many.
    let f = dir.join("heads.npz");
    npz(
        &f,
        &[("keys", vec![2, 3, 3, 16]), ("values", vec![2, 3, 3, 16])],
    );
    attention_fails(&dir, &["--prefix-kv", s(&f)], &[s(&f), "[2, 2, 3, 16]"]);
}

#[test]
fn several_arrays_and_none_of_the_expected_name() {
    let dir = temp_dir("bad-multi");
    let f = dir.join("two.npz");
    npz(&f, &[("a", vec![2, 64]), ("b", vec![2, 64])]);
    attention_fails(
        &dir,
        &["--soft-prompt", s(&f)],
        &[s(&f), "soft_prompt", r#"["a", "b"]"#],
    );
    attention_fails(
        &dir,
        &["--prefix", s(&f)],
        &[s(&f), "prefix", r#"["a", "b"]"#],
    );
    // With the right name among others, that one is used (and checked).
    let f = dir.join("named.npz");
    npz(&f, &[("other", vec![5]), ("soft_prompt", vec![2, 63])]);
    attention_fails(
        &dir,
        &["--soft-prompt", s(&f)],
        &[s(&f), "'soft_prompt'", "[2, 63]", "[2, 64]"],
    );
}

#[test]
fn prompt_longer_than_the_context() {
    // The sorter's learned positions cover 20 tokens.
    let dir = temp_dir("bad-context");
    let model = repo_path("models/sort-1l1h/ascending.safetensors");
    let ids = vec!["1"; 21].join(",");
    let out = dir.join("out.npz");
    assert_clean_error(
        &[
            "attention",
            "--model",
            s(&model),
            "--ids",
            &ids,
            "--out",
            s(&out),
        ],
        &["prompt length", "20", "21"],
    );
    assert!(!out.exists());
    // 20 fit.
    let ids = vec!["1"; 20].join(",");
    let (code, _, err) = run_bin(&[
        "attention",
        "--model",
        s(&model),
        "--ids",
        &ids,
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn folder_without_its_tokenizer() {
    let dir = temp_dir("bad-tokenizer");
    let m = tiny_copy(&dir, &["tokenizer.json"]);
    // Text cannot be tokenized: refused, naming the missing file.
    let out = dir.join("text.json");
    assert_clean_error(
        &[
            "attention",
            "--model",
            s(&m),
            "--text",
            "hello",
            "--out",
            s(&out),
        ],
        &["tokenizer.json"],
    );
    // Token ids need no tokenizer (the model-families issue): the run goes on with a warning
    // naming the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prefixscope"))
        .args(["attention", "--model", s(&m), "--ids", "1,2", "--out"])
        .arg(dir.join("ids.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--ids without tokenizer.json: {stderr}"
    );
    assert!(
        stderr.contains("warning") && stderr.contains("tokenizer.json"),
        "{stderr}"
    );
}

#[test]
fn sharded_folder_with_a_missing_shard() {
    let dir = temp_dir("bad-shard");
    let m = tiny_copy(&dir, &["model.safetensors"]);
    std::fs::copy(
        tiny().join("model.safetensors"),
        m.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    // The index sends one tensor to a second shard that is not there.
    let st =
        candle_core::safetensors::load(tiny().join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut map = serde_json::Map::new();
    for name in st.keys() {
        let file = if name == "lm_head.weight" {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        map.insert(name.clone(), file.into());
    }
    std::fs::write(
        m.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    assert_clean_error(
        &["inspect", "--model", s(&m)],
        &["model-00002-of-00002.safetensors"],
    );
}
