//! PEFT adapters in and out, against the real library (fixtures by `scripts/make_peft_fixtures.py`:
//! transformers 5.23.0 + PEFT 0.21.2, float64, eager attention, on two tiny random LLaMA models, one
//! with grouped-query attention).

mod common;

use common::{assert_clean_error, repo_path, run_bin, temp_dir};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MODELS: [&str; 2] = ["tiny-llama", "tiny-gqa"];
const ADAPTERS: [&str; 5] = [
    "prompt_tuning",
    "p_tuning",
    "prefix_tuning",
    "prefix_tuning_proj",
    "cartridge",
];

fn fixture(rel: &str) -> PathBuf {
    repo_path("tests/fixtures/peft").join(rel)
}

fn ids() -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("prompt.json")).unwrap()).unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// An array's shape and its numbers as f64.
type Arr = (Vec<usize>, Vec<f64>);

/// Every array of an `.npz`, as f64.
fn npz(path: &Path) -> HashMap<String, Arr> {
    candle_core::Tensor::read_npz(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(n, t)| {
            let shape = t.dims().to_vec();
            let data = t
                .to_dtype(candle_core::DType::F64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f64>())
                .unwrap();
            (n, (shape, data))
        })
        .collect()
}

/// A file `prefixscope attention` wrote (now or in 0.1, old names included), under its current
/// names ([`prefixscope::hooks`]), as f64.
fn activations(path: &Path) -> HashMap<String, Arr> {
    prefixscope::hooks::Activations::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(|(n, a)| {
            (
                n,
                (a.shape.clone(), a.data.iter().map(|&x| x as f64).collect()),
            )
        })
        .collect()
}

fn max_diff(a: &Arr, b: &Arr) -> f64 {
    assert_eq!(a.0, b.0, "shapes differ");
    a.1.iter()
        .zip(&b.1)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `prefixscope attention` on a fixture model; returns its arrays and stderr.
fn attention(
    model: &str,
    flag: &str,
    prefix: &Path,
    out: &Path,
    extra: &[&str],
) -> (HashMap<String, Arr>, String) {
    let m = fixture(model);
    let ids = ids();
    let mut args = vec![
        "attention",
        "--model",
        m.to_str().unwrap(),
        "--ids",
        &ids,
        flag,
        prefix.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = run_bin(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    (activations(out), err)
}

/// Every adapter type, as PEFT saved it, by folder and by its safetensors file: attention at every
/// layer within 1e-5 of transformers + PEFT (content query rows, columns `[prefix | content]`), the
/// last logits within 1e-4.
#[test]
fn every_adapter_type_matches_peft_at_every_layer() {
    let dir = temp_dir("peft-open");
    let mut worst: f64 = 0.0;
    for model in MODELS {
        let n_layers = if model == "tiny-gqa" { 3 } else { 2 };
        for kind in ADAPTERS {
            let folder = fixture(&format!("{model}/{kind}"));
            let reference = npz(&folder.join("reference.npz"));
            for path in [folder.clone(), folder.join("adapter_model.safetensors")] {
                let out = dir.join(format!("{model}-{kind}.npz"));
                let (ours, err) = attention(model, "--adapter", &path, &out, &[]);
                assert!(!err.contains("warning"), "{model}/{kind}: {err}");
                for l in 0..n_layers {
                    let (r, o) = (
                        &reference[&format!("with_prefix_L{l}")],
                        &ours[&format!("blocks.{l}.attn.hook_pattern")],
                    );
                    // The prefix must carry attention, else this would not test its placement.
                    let p = r.0[2] - r.0[1];
                    assert_eq!(p, 3, "{model}/{kind}: P");
                    let d = max_diff(o, r);
                    assert!(
                        d <= 1e-5,
                        "{model}/{kind} {} layer {l}: {d:e}",
                        path.display()
                    );
                    worst = worst.max(d);
                }
                let d = max_diff(&ours["logits_last_prefixed"], &reference["logits_last"]);
                assert!(d <= 1e-4, "{model}/{kind}: logits {d:e}");
            }
        }
    }
    eprintln!("largest attention difference against PEFT: {worst:e}");
}

/// The adapters change the attention a lot (so matching PEFT says something): the largest attention
/// on the prefix columns, per adapter, is well above zero.
#[test]
fn the_reference_adapters_are_not_noise() {
    for model in MODELS {
        for kind in ADAPTERS {
            let r = npz(&fixture(&format!("{model}/{kind}/reference.npz")));
            let (shape, data) = &r["with_prefix_L1"];
            let (rows, cols) = (shape[0] * shape[1], shape[2]);
            let mass = (0..rows)
                .map(|i| data[i * cols..i * cols + 3].iter().sum::<f64>())
                .fold(0.0, f64::max);
            assert!(mass > 0.05, "{model}/{kind}: prefix mass {mass}");
        }
    }
}

fn copy_adapter(from: &str, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let src = fixture(from);
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        to.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    std::fs::write(to.join("adapter_config.json"), cfg.to_string()).unwrap();
    to.to_path_buf()
}

fn refuse(model: &str, adapter: &Path, needles: &[&str]) -> String {
    let m = fixture(model);
    let ids = ids();
    let scratch = temp_dir("peft-refused");
    let out = scratch.join("out.npz");
    let args = [
        "attention",
        "--model",
        m.to_str().unwrap(),
        "--ids",
        &ids,
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let line = assert_clean_error(&args, needles);
    assert!(!out.exists(), "a refused adapter wrote {}", out.display());
    line
}

#[test]
fn mismatched_adapters_are_refused_naming_both_files() {
    // Another model: the GQA model's prefix adapter (3 layers, 2 KV heads) on the 2-layer MHA model.
    let other = fixture("tiny-gqa/prefix_tuning");
    refuse(
        "tiny-llama",
        &other,
        &[
            "tiny-gqa/prefix_tuning/adapter_config.json",
            "tests/fixtures/peft/tiny-llama",
            "num_layers",
            "expected 2",
            "found 3",
        ],
    );
    // The same, by its safetensors file.
    refuse(
        "tiny-llama",
        &other.join("adapter_model.safetensors"),
        &["tiny-gqa/prefix_tuning/adapter_config.json", "num_layers"],
    );
    let dir = temp_dir("peft-mismatch");
    // Another layer count.
    let layers = copy_adapter("tiny-llama/prompt_tuning", &dir.join("layers"), |c| {
        c["num_layers"] = 3.into()
    });
    refuse(
        "tiny-llama",
        &layers,
        &[
            "layers/adapter_config.json",
            "num_layers",
            "tiny-llama",
            "expected 2",
            "found 3",
        ],
    );
    // Another head count: a key/value prefix sized for 4 KV heads on the model with 2.
    let heads = copy_adapter("tiny-gqa/prefix_tuning", &dir.join("heads"), |c| {
        c["num_attention_heads"] = 4.into()
    });
    refuse(
        "tiny-gqa",
        &heads,
        &[
            "heads/adapter_config.json",
            "num_attention_heads",
            "tiny-gqa",
            "expected 2",
            "found 4",
        ],
    );
    // Another width.
    let width = copy_adapter("tiny-llama/prompt_tuning", &dir.join("width"), |c| {
        c["token_dim"] = 576.into()
    });
    refuse(
        "tiny-llama",
        &width,
        &[
            "width/adapter_config.json",
            "token_dim",
            "expected 64",
            "found 576",
        ],
    );
    // A config that agrees with the model but a tensor that does not.
    let rows = copy_adapter("tiny-llama/prompt_tuning", &dir.join("rows"), |c| {
        c["num_virtual_tokens"] = 5.into()
    });
    refuse(
        "tiny-llama",
        &rows,
        &[
            "rows/adapter_model.safetensors",
            "prompt_embeddings",
            "[5, 64]",
            "[3, 64]",
        ],
    );
}

#[test]
fn lora_pickle_and_bare_folders_are_refused() {
    refuse(
        "tiny-llama",
        &fixture("tiny-llama/lora"),
        &["lora/adapter_config.json", "'LORA'", "PREFIX_TUNING"],
    );
    let bin = fixture("tiny-llama/prompt_tuning_bin");
    refuse(
        "tiny-llama",
        &bin,
        &["adapter_model.bin", "pickle", "adapter_model.safetensors"],
    );
    refuse(
        "tiny-llama",
        &bin.join("adapter_model.bin"),
        &["adapter_model.bin", "save_file"],
    );
    let scratch = temp_dir("peft-bare");
    let bare = scratch.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(
        fixture("tiny-llama/prompt_tuning/adapter_model.safetensors"),
        bare.join("adapter_model.safetensors"),
    )
    .unwrap();
    refuse("tiny-llama", &bare, &["bare", "no adapter_config.json"]);
    refuse(
        "tiny-llama",
        &bare.join("adapter_model.safetensors"),
        &["bare/adapter_model.safetensors", "adapter_config.json"],
    );
}

#[test]
fn another_base_model_name_is_a_warning() {
    let dir = temp_dir("peft-warn");
    let a = copy_adapter("tiny-llama/prefix_tuning", &dir.join("renamed"), |c| {
        c["base_model_name_or_path"] = "someone/another-model".into()
    });
    let (_, err) = attention("tiny-llama", "--adapter", &a, &dir.join("o.npz"), &[]);
    assert!(
        err.contains("warning:") && err.contains("someone/another-model"),
        "{err}"
    );
}

/// prefixscope's saved adapters (all three prefix kinds) loaded back into PEFT by the fixture script
/// reproduce prefixscope's attention: the recorded result, and proof that it is about the code of
/// today (saving the same inputs again gives the committed adapters and attention).
#[test]
fn saved_adapters_reproduce_in_peft() {
    let rt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("ours/roundtrip.json")).unwrap())
            .unwrap();
    let cases = rt["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 6, "{rt}");
    let dir = temp_dir("peft-resave");
    for model in MODELS {
        for (kind, flag, file, peft_type) in [
            (
                "soft_prompt",
                "--soft-prompt",
                "soft_prompt.npy",
                "PROMPT_TUNING",
            ),
            ("hidden", "--prefix", "hidden.npy", "PREFIX_TUNING"),
            ("kv", "--prefix-kv", "kv.npz", "PREFIX_TUNING"),
        ] {
            let case = &cases[&format!("{model}/{kind}")];
            assert_eq!(case["peft_type"], peft_type);
            let d = case["max_abs_attention_diff"].as_f64().unwrap();
            assert!(d <= 1e-5, "{model}/{kind}: PEFT differs by {d:e}");
            assert_eq!(case["layers"], if model == "tiny-gqa" { 3 } else { 2 });

            let ours = fixture(&format!("ours/{model}"));
            let saved = dir.join(format!("{model}-{kind}"));
            let out = dir.join(format!("{model}-{kind}.npz"));
            let (now, _) = attention(
                model,
                flag,
                &ours.join(file),
                &out,
                &["--save-adapter", saved.to_str().unwrap()],
            );
            // Committed by 0.1 under the old names: read through the one lookup.
            let then = activations(&ours.join(format!("{kind}.attention.npz")));
            assert_eq!(then.len(), now.len(), "{model}/{kind}: the same arrays");
            for (k, v) in &then {
                let d = max_diff(&now[k], v);
                // Attention is a probability (1e-6 absolute); logits are ~10 in size, and the
                // decoder's rounding may move them by a few ulps of that (the references' 1e-4 holds).
                let tol = if k.starts_with("logits") { 1e-5 } else { 1e-6 };
                assert!(d <= tol, "{model}/{kind}: {k} moved by {d:e}");
            }
            let committed = ours.join(format!("{kind}.adapter"));
            let read = |p: &Path| {
                prefixscope::arrays::read_arrays(&p.join("adapter_model.safetensors")).unwrap()
                    ["prompt_embeddings"]
                    .clone()
            };
            let (a, b) = (read(&saved), read(&committed));
            assert_eq!(a.shape, b.shape);
            let d = a
                .data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(d <= 1e-6, "{model}/{kind}: saved adapter moved by {d:e}");
            let cfg = |p: &Path| -> serde_json::Value {
                serde_json::from_str(
                    &std::fs::read_to_string(p.join("adapter_config.json")).unwrap(),
                )
                .unwrap()
            };
            let (ca, cb) = (cfg(&saved), cfg(&committed));
            for f in [
                "peft_type",
                "task_type",
                "num_virtual_tokens",
                "token_dim",
                "num_layers",
                "num_attention_heads",
                "num_transformer_submodules",
            ] {
                assert_eq!(ca[f], cb[f], "{model}/{kind}: {f}");
            }
        }
    }
}

/// Saving a prefix and opening the adapter gives the same attention: exactly for the soft prompt and
/// the key/value prefix (the numbers are copied), to rounding for the paper's prefix (its induced keys
/// and values are what the forward pass uses).
#[test]
fn save_then_open_gives_the_same_attention() {
    let dir = temp_dir("peft-save-open");
    for model in MODELS {
        let ours = fixture(&format!("ours/{model}"));
        for (kind, flag, file) in [
            ("soft_prompt", "--soft-prompt", "soft_prompt.npy"),
            ("hidden", "--prefix", "hidden.npy"),
            ("kv", "--prefix-kv", "kv.npz"),
        ] {
            let saved = dir.join(format!("{model}-{kind}"));
            let (direct, _) = attention(
                model,
                flag,
                &ours.join(file),
                &dir.join("a.npz"),
                &["--save-adapter", saved.to_str().unwrap()],
            );
            let (back, err) = attention(model, "--adapter", &saved, &dir.join("b.npz"), &[]);
            assert!(!err.contains("warning"), "{err}");
            let tol = if kind == "hidden" { 1e-6 } else { 0.0 };
            for (k, v) in &direct {
                let d = max_diff(&back[k], v);
                assert!(d <= tol, "{model}/{kind}: {k} differs by {d:e}");
            }
        }
    }
}

#[test]
fn save_adapter_never_replaces_a_folder_silently() {
    let dir = temp_dir("peft-force");
    let kv = fixture("ours/tiny-llama/kv.npz");
    let target = dir.join("adapter");
    let t = target.to_str().unwrap().to_string();
    let out = dir.join("o.npz");
    let o = out.to_str().unwrap().to_string();
    let m = fixture("tiny-llama");
    let m = m.to_str().unwrap().to_string();
    let ids = ids();
    let base = [
        "attention",
        "--model",
        &m,
        "--ids",
        &ids,
        "--prefix-kv",
        kv.to_str().unwrap(),
        "--out",
        &o,
        "--save-adapter",
        &t,
    ];
    assert_eq!(run_bin(&base).0, 0);
    assert_clean_error(&base, &[t.as_str(), "exists", "--force"]);
    let mut forced = base.to_vec();
    forced.push("--force");
    assert_eq!(run_bin(&forced).0, 0);
    // --force never replaces a folder that is not an adapter.
    let other = dir.join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let mut wrong = forced.clone();
    let n = other.to_str().unwrap().to_string();
    let at = wrong.iter().position(|a| *a == t.as_str()).unwrap();
    wrong[at] = &n;
    assert_clean_error(&wrong, &["notes", "other files"]);
    assert!(other.join("keep.txt").exists());
    // No temporary folders are left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// An adapter saved in bf16 or f16 (PEFT keeps the training dtype) opens exactly as the f32 adapter of
/// the same rounded numbers; a non-finite number is refused naming the file.
#[test]
fn half_precision_and_non_finite_adapters() {
    use candle_core::{DType, Device, Tensor};
    let dir = temp_dir("peft-dtypes");
    let src = fixture("tiny-llama/prefix_tuning");
    let rows = prefixscope::arrays::read_arrays(&src.join("adapter_model.safetensors")).unwrap()
        ["prompt_embeddings"]
        .clone();
    let t = Tensor::from_slice(&rows.data, rows.shape.as_slice(), &Device::Cpu).unwrap();
    let write = |name: &str, t: &Tensor| {
        let d = copy_adapter("tiny-llama/prefix_tuning", &dir.join(name), |_| {});
        let map = HashMap::from([("prompt_embeddings".to_string(), t.clone())]);
        candle_core::safetensors::save(&map, d.join("adapter_model.safetensors")).unwrap();
        d
    };
    for dt in [DType::BF16, DType::F16] {
        let half = t.to_dtype(dt).unwrap();
        let a = write(&format!("{dt:?}"), &half);
        let b = write(
            &format!("{dt:?}-as-f32"),
            &half.to_dtype(DType::F32).unwrap(),
        );
        let (x, _) = attention("tiny-llama", "--adapter", &a, &dir.join("x.npz"), &[]);
        let (y, _) = attention("tiny-llama", "--adapter", &b, &dir.join("y.npz"), &[]);
        for (k, v) in &x {
            assert_eq!(max_diff(v, &y[k]), 0.0, "{dt:?}: {k}");
        }
    }
    let mut bad = rows.data.clone();
    bad[5] = f32::NAN;
    let nan = write(
        "nan",
        &Tensor::from_vec(bad, rows.shape.as_slice(), &Device::Cpu).unwrap(),
    );
    refuse(
        "tiny-llama",
        &nan,
        &[
            "nan/adapter_model.safetensors",
            "'prompt_embeddings' element 5 (row 0, column 5)",
            "finite",
            "NaN",
        ],
    );
}

/// `render` takes `--adapter` and `--save-adapter` too.
#[test]
fn render_opens_and_saves_adapters() {
    let dir = temp_dir("peft-render");
    let m = fixture("tiny-gqa");
    let a = fixture("tiny-gqa/prefix_tuning_proj");
    let out = dir.join("fig.json");
    let saved = dir.join("again");
    let ids = ids();
    let (code, _, err) = run_bin(&[
        "render",
        "--model",
        m.to_str().unwrap(),
        "--ids",
        &ids,
        "--adapter",
        a.to_str().unwrap(),
        "--layer",
        "2",
        "--head",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--save-adapter",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_file() && saved.join("adapter_model.safetensors").is_file());
    // PEFT's projected prefix saved back as a plain PREFIX_TUNING adapter: the same numbers.
    let read = |p: &Path| {
        prefixscope::arrays::read_arrays(&p.join("adapter_model.safetensors")).unwrap()
            ["prompt_embeddings"]
            .clone()
    };
    assert_eq!(read(&saved), read(&a));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg["prefix_projection"], false);
}
