//! Bad input gets exit status 2 and one line naming the file and the tensor or field, expected
//! against found, and never a panic. One test per case.

mod common;

use common::*;
use std::path::Path;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn llama_kv(arch: &'static str) -> Vec<(&'static str, GgufVal)> {
    vec![
        ("general.architecture", GgufVal::Str(arch)),
        ("llama.block_count", GgufVal::U32(1)),
        ("llama.embedding_length", GgufVal::U32(32)),
        ("llama.feed_forward_length", GgufVal::U32(64)),
        ("llama.attention.head_count", GgufVal::U32(2)),
        ("llama.attention.head_count_kv", GgufVal::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", GgufVal::F32(1e-5)),
        ("llama.vocab_size", GgufVal::U32(4)),
    ]
}

#[test]
fn missing_file() {
    assert_clean_error(
        &["inspect", "--model", "/nonexistent/model.gguf"],
        &["/nonexistent/model.gguf"],
    );
}

#[test]
fn not_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("notes.gguf");
    std::fs::write(&f, "these are my notes, not a model\n".repeat(10)).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "GGUF header", "expected"],
    );
    let f = d.path().join("notes.txt");
    std::fs::write(&f, "hello").unwrap();
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "unsupported checkpoint format", "'.txt'"],
    );
}

#[test]
fn truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    tiny_llama_folder(d.path(), tiny_llama_config(), |_| {});
    let f = d.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &[p(&f), "safetensors", "expected a complete safetensors file"],
    );
}

#[test]
fn truncated_gguf() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("cut.gguf");
    let bytes = std::fs::read(smollm2()).unwrap();
    // Cut inside the tensor data: the header parses, a tensor is incomplete.
    std::fs::write(&f, &bytes[..bytes.len() - 4096]).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "tensor '", "expected its full data"],
    );
    // Cut inside the header.
    std::fs::write(&f, &bytes[..1000]).unwrap();
    assert_clean_error(&["inspect", "--model", p(&f)], &[p(&f), "GGUF header"]);
}

#[test]
fn unsupported_architecture() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("other.gguf");
    write_gguf(&f, &llama_kv("falcon"), &[]);
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "architecture", "'falcon'", "'llama'"],
    );
    let mut cfg = tiny_llama_config();
    cfg["model_type"] = "bert".into();
    tiny_llama_folder(d.path(), cfg, |_| {});
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["config.json", "model_type", "'bert'"],
    );
}

#[test]
fn unsupported_quantization() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("q81.gguf");
    // ggml type 9 is Q8_1: a 36-byte block of 32 values; token_embd is (vocab 4, d 32) = 4 blocks.
    write_gguf(
        &f,
        &llama_kv("llama"),
        &[("token_embd.weight", vec![32, 4], 9, vec![0u8; 4 * 36])],
    );
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[
            p(&f),
            "quantization of tensor 'token_embd.weight'",
            "Q8_1",
            "Q4_1",
        ],
    );
}

#[test]
fn missing_tensor() {
    let d = tempfile::tempdir().unwrap();
    tiny_llama_folder(d.path(), tiny_llama_config(), |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &[
            "model.safetensors",
            "missing tensor 'model.layers.1.mlp.up_proj.weight'",
        ],
    );
    let f = d.path().join("few.gguf");
    write_gguf(&f, &llama_kv("llama"), &[]);
    assert_clean_error(
        &["inspect", "--model", p(&f)],
        &[p(&f), "missing tensor 'token_embd.weight'"],
    );
}

#[test]
fn wrong_shape() {
    let d = tempfile::tempdir().unwrap();
    tiny_llama_folder(d.path(), tiny_llama_config(), |m| {
        let t = candle_core::Tensor::zeros(
            (12, 16),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        m.insert("model.layers.0.self_attn.k_proj.weight".into(), t);
    });
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &[
            "tensor 'model.layers.0.self_attn.k_proj.weight'",
            "shape [12, 16]",
            "expected [8, 16]",
        ],
    );
}

#[test]
fn config_disagrees_with_weights() {
    let d = tempfile::tempdir().unwrap();
    tiny_llama_folder(d.path(), tiny_llama_config(), |_| {});
    // The weights were written for intermediate_size 32; the config now claims 48.
    let mut cfg = tiny_llama_config();
    cfg["intermediate_size"] = 48.into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "shape [32, 16]",
            "expected [48, 16]",
        ],
    );
    // Sizes that cannot agree with each other are caught before any tensor is read.
    let mut cfg = tiny_llama_config();
    cfg["num_key_value_heads"] = 3.into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    assert_clean_error(
        &["inspect", "--model", p(d.path())],
        &["config.json", "num_key_value_heads", "divisor", "found 3"],
    );
}

#[test]
fn prefix_that_does_not_fit_the_model() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("soft.npy");
    write_npy(&f, &[2, 100], vec![0.1; 200]);
    let out = d.path().join("out.npz");
    let m = smollm2();
    assert_clean_error(
        &[
            "attention",
            "--model",
            p(&m),
            "--text",
            "Hello",
            "--soft-prompt",
            p(&f),
            "--out",
            p(&out),
        ],
        &[
            p(&f),
            "'soft_prompt'",
            "shape [2, 100]",
            "expected [2, 576]",
        ],
    );
    assert!(!out.exists(), "no output on error");
}

#[test]
fn token_id_out_of_vocabulary() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.json");
    assert_clean_error(
        &[
            "attention",
            "--model",
            p(&smollm2()),
            "--ids",
            "1,2,49152",
            "--out",
            p(&out),
        ],
        &[
            "token id at index 2",
            "below the vocabulary size 49152",
            "found 49152",
        ],
    );
}

#[test]
fn empty_prompt() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.json");
    assert_clean_error(
        &[
            "attention",
            "--model",
            p(&smollm2()),
            "--text",
            "",
            "--out",
            p(&out),
        ],
        &["prompt", "at least one token", "empty"],
    );
}

#[test]
fn nan_or_infinity_in_a_prefix() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.json");
    let f = d.path().join("nan.npy");
    let mut v = vec![0.01f32; 576];
    v[7] = f32::NAN;
    write_npy(&f, &[1, 576], v);
    assert_clean_error(
        &[
            "attention",
            "--model",
            p(&smollm2()),
            "--text",
            "Hi",
            "--soft-prompt",
            p(&f),
            "--out",
            p(&out),
        ],
        &[
            p(&f),
            "'soft_prompt' element 7",
            "expected a finite number",
            "NaN",
        ],
    );
    let f = d.path().join("inf.npy");
    let mut v = vec![0.01f32; 30 * 576];
    v[600] = f32::INFINITY;
    write_npy(&f, &[30, 1, 576], v);
    assert_clean_error(
        &[
            "attention",
            "--model",
            p(&smollm2()),
            "--text",
            "Hi",
            "--prefix",
            p(&f),
            "--out",
            p(&out),
        ],
        &[p(&f), "element 600", "inf"],
    );
}
