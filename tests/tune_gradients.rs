//! The gradients tuning follows are right: for every prefix kind (soft prompt, key/value, the paper's
//! per-layer prefix), on a tiny LLaMA (grouped-query heads, biases, partial RoPE, untied head), a
//! Gemma-3-style model ((1 + w) RMSNorm, sandwich norms, q/k norm, GeGLU, per-layer RoPE, embedding
//! scale, a logit soft cap), a Qwen3-style one (q/k norm, SwiGLU) and a toy GPT (LayerNorm, learned
//! positions), autograd's gradient of the tuning loss agrees with central finite differences of the
//! same loss, in float64, to a relative 1e-4 on every sampled prefix coordinate. The expected values
//! come from the loss alone (two evaluations per coordinate), never from a backward pass.
//!
//! And the differentiable forward is the inference forward: the logits of a tracked pass equal the
//! engine's `Transformer::forward` logits to 1e-5 in f32, so what is tuned is what the views show.

mod common;

use candle_core::{DType, Device, Var};
use common::*;
use prefixscope::model::gpt::Gpt;
use prefixscope::model::llama::{Llama, LlamaConfig};
use prefixscope::model::stepper::tail_logits;
use prefixscope::model::{LayerSel, PrefixTensors, Transformer};
use prefixscope::prefix::{Prefix, PrefixKind};
use prefixscope::tune::{initial_prefix, loss, Example, TuneConfig, TunedPrefix};
use serde_json::json;
use std::path::Path;

const KINDS: [PrefixKind; 3] = [
    PrefixKind::SoftPrompt,
    PrefixKind::KeyValue,
    PrefixKind::Hidden,
];

fn llama_from(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> Llama {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    let cfg = LlamaConfig::from_hf_json(&v, &dir.join("config.json")).unwrap();
    // SAFETY: a test fixture nobody writes while it is mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    Llama::load(vb, &cfg, "hf-folder", "f32").unwrap()
}

/// A tiny LLaMA with every optional feature of the family on: 4 query heads over 2 KV heads, q/k/v/o
/// and MLP biases, an untied head.
fn tiny_llama() -> Llama {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = tiny_llama_config();
    cfg["attention_bias"] = true.into();
    cfg["mlp_bias"] = true.into();
    cfg["tie_word_embeddings"] = false.into();
    tiny_llama_folder(d.path(), cfg, |_| {});
    llama_from(d.path(), |_| {})
}

fn gemma3_style() -> Llama {
    llama_from(&repo_path("tests/fixtures/conformance/gemma3/hf"), |v| {
        v["final_logit_softcapping"] = json!(3.0)
    })
}

/// Phi-3: fused `qkv_proj` and `gate_up_proj`, half of each head rotated (partial RoPE).
fn phi3_style() -> Llama {
    llama_from(&repo_path("tests/fixtures/conformance/phi3/hf"), |_| {})
}

fn qwen3_style() -> Llama {
    llama_from(&repo_path("tests/fixtures/conformance/qwen3/hf"), |_| {})
}

fn toy_gpt() -> Gpt {
    prefixscope::load::toy::load_gpt(&repo_path("models/deep-4l4h128/random.safetensors"))
        .unwrap()
        .0
}

/// Two prompt/target pairs (of different lengths, one with a several-token target), ids taken
/// modulo the vocabulary.
fn examples(vocab: usize) -> Vec<Example> {
    let v = |ids: &[u32]| ids.iter().map(|&i| i % vocab as u32).collect::<Vec<_>>();
    vec![
        Example {
            prompt: v(&[3, 17, 5, 12, 8]),
            target: v(&[1, 29, 4]),
        },
        Example {
            prompt: v(&[7, 2]),
            target: v(&[11]),
        },
    ]
}

/// A non-trivial prefix of `kind`: the model's own start ([`initial_prefix`]) plus a seeded wiggle,
/// so no coordinate sits at a symmetric point.
fn start(model: &dyn Transformer, kind: PrefixKind, p: usize) -> Prefix {
    let cfg = TuneConfig {
        kind,
        length: p,
        lr: 0.01,
        seed: 5,
    };
    let mut pf = initial_prefix(model, &cfg).unwrap();
    let noise = prefixscope::prefix_math::gaussian(9, 1 << 20);
    for (x, n) in pf.values_mut().zip(noise) {
        *x += 0.3 * n;
    }
    pf
}

/// Compare autograd with central differences on `samples` coordinates of each prefix tensor (and
/// each tensor's largest-gradient coordinate), in float64.
fn check_gradients(name: &str, model64: &dyn Transformer, start: &Prefix, samples: usize) {
    let ex = examples(model64.info().vocab_size);
    let model64 = model64.stepper().unwrap();
    let tuned = TunedPrefix::from_prefix(start, DType::F64).unwrap();
    let (l, _, _) = loss(model64, Some(&tuned.tensors()), &ex).unwrap();
    let grads = l.backward().unwrap();
    let base: Vec<Vec<f64>> = tuned
        .vars()
        .iter()
        .map(|v| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect();
    let eval = |which: usize, idx: usize, delta: f64| -> f64 {
        let tensors: Vec<candle_core::Tensor> = base
            .iter()
            .zip(tuned.vars())
            .enumerate()
            .map(|(i, (b, v))| {
                let mut b = b.clone();
                if i == which {
                    b[idx] += delta;
                }
                candle_core::Tensor::from_vec(b, v.shape(), &Device::Cpu).unwrap()
            })
            .collect();
        let pf = match tuned.kind() {
            PrefixKind::SoftPrompt => PrefixTensors::SoftPrompt(tensors[0].clone()),
            PrefixKind::Hidden => PrefixTensors::Hidden(tensors[0].clone()),
            PrefixKind::KeyValue => PrefixTensors::KeyValue {
                keys: tensors[0].clone(),
                values: tensors[1].clone(),
            },
        };
        let (l, _, _) = loss(model64, Some(&pf), &ex).unwrap();
        l.to_scalar::<f64>().unwrap()
    };
    let h = 1e-3;
    let mut checked = 0;
    for (which, v) in tuned.vars().iter().enumerate() {
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for prefix tensor {which}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(
            gmax > 1e-8,
            "{name}: prefix tensor {which} has a zero gradient"
        );
        let mut coords: Vec<usize> = {
            let mut rng_state = 0x9e3779b97f4a7c15u64 ^ (which as u64 + 1);
            (0..samples)
                .map(|_| {
                    rng_state ^= rng_state << 13;
                    rng_state ^= rng_state >> 7;
                    rng_state ^= rng_state << 17;
                    (rng_state % g.len() as u64) as usize
                })
                .collect()
        };
        coords.push(
            g.iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0,
        );
        for idx in coords {
            // Central differences at h and h/2, Richardson-extrapolated: truncation error O(h^4),
            // and h large enough that rounding of the loss (1e-16 relative) stays far below 1e-4
            // of even the smallest gradients here.
            let cd = |h: f64| (eval(which, idx, h) - eval(which, idx, -h)) / (2.0 * h);
            let fd = (4.0 * cd(h / 2.0) - cd(h)) / 3.0;
            // Relative to the larger of the two, floored at a thousandth of the tensor's largest
            // gradient (a coordinate the loss hardly depends on has no meaningful relative error).
            let denom = fd.abs().max(g[idx].abs()).max(1e-3 * gmax);
            let rel = (fd - g[idx]).abs() / denom;
            assert!(
                rel < 1e-4,
                "{name}: tensor {which} coordinate {idx}: autograd {:e}, finite differences {fd:e} (relative {rel:e})",
                g[idx]
            );
            checked += 1;
        }
    }
    assert!(checked >= samples);
}

/// The tracked forward's last-position logits against the engine's inference forward, f32.
fn check_same_as_inference(name: &str, model: &dyn Transformer, start: &Prefix) {
    let vocab = model.info().vocab_size as u32;
    let ids = [3u32, 17, 5, 12, 8, 1].map(|i| i % vocab);
    let run = model
        .forward(&ids, Some(start), &LayerSel::Only(vec![]))
        .unwrap();
    let want: Vec<f32> = run.logits_last.to_vec1().unwrap();
    let tuned = TunedPrefix::from_prefix(start, DType::F32).unwrap();
    let pf = tuned.tensors();
    assert!(
        tuned.vars()[0].as_tensor().is_variable(),
        "the prefix is a Var"
    );
    let got = tail_logits(model.stepper().unwrap(), &ids, Some(&pf), 1).unwrap();
    let got: Vec<f32> = got.squeeze(0).unwrap().to_vec1().unwrap();
    let worst = max_abs_diff(&got, &want);
    assert!(
        worst < 1e-5,
        "{name}: tracked logits differ from inference by {worst:e}"
    );
}

fn all_kinds_llama(name: &str, m: Llama, samples: usize) {
    let m64 = m.to_dtype(DType::F64).unwrap();
    for kind in KINDS {
        let pf = start(&m, kind, 3);
        check_same_as_inference(&format!("{name} {kind:?}"), &m, &pf);
        check_gradients(&format!("{name} {kind:?}"), &m64, &pf, samples);
    }
}

#[test]
fn tiny_llama_gradients_match_finite_differences_for_every_kind() {
    all_kinds_llama("tiny llama", tiny_llama(), 24);
}

#[test]
fn gemma3_style_gradients_match_finite_differences_for_every_kind() {
    all_kinds_llama("gemma3-style", gemma3_style(), 16);
}

#[test]
fn qwen3_style_gradients_match_finite_differences_for_every_kind() {
    all_kinds_llama("qwen3-style", qwen3_style(), 16);
}

#[test]
fn phi3_style_gradients_match_finite_differences_for_every_kind() {
    let m = phi3_style();
    assert!(
        m.config().rotary_dim() < m.config().head_dim(),
        "partial RoPE"
    );
    all_kinds_llama("phi3-style", m, 16);
}

#[test]
fn toy_gpt_gradients_match_finite_differences_for_every_kind() {
    let m = toy_gpt();
    let m64 = m.to_dtype(DType::F64).unwrap();
    for kind in KINDS {
        let pf = start(&m, kind, 3);
        check_same_as_inference(&format!("toy gpt {kind:?}"), &m, &pf);
        check_gradients(&format!("toy gpt {kind:?}"), &m64, &pf, 16);
    }
}

/// The bug this guards against: candle's fused RMSNorm and RoPE kernels have no backward pass and
/// return untracked results, which silently cut the gradient to everything before them. A soft
/// prompt reaches the loss only through them, so a cut graph gives no gradient at all.
#[test]
fn a_soft_prompt_gets_a_gradient_through_rmsnorm_and_rope_in_f32() {
    let m = tiny_llama();
    let pf = start(&m, PrefixKind::SoftPrompt, 2);
    let tuned = TunedPrefix::from_prefix(&pf, DType::F32).unwrap();
    let (l, _, _) = loss(m.stepper().unwrap(), Some(&tuned.tensors()), &examples(50)).unwrap();
    let g = l.backward().unwrap();
    let v: &Var = &tuned.vars()[0];
    let norm: f32 = g
        .get(v.as_tensor())
        .expect("a gradient for the soft prompt")
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(norm > 0.0);
}

/// The f32 path tuning runs takes the differentiable compositions too (the float64 checks above run
/// them in float64): its gradient equals the float64 gradient, which central differences confirm, to
/// f32 rounding (measured: 2e-7 to 7e-7 of the largest gradient; the bound is 1e-4). A fused kernel
/// left on the tracked f32 path cuts part of the graph and fails this by far more (fused RoPE: 0.52).
#[test]
fn the_f32_gradient_tuning_uses_equals_the_checked_f64_gradient() {
    for (name, m) in [("qwen3-style", qwen3_style()), ("tiny llama", tiny_llama())] {
        let m64 = m.to_dtype(DType::F64).unwrap();
        let ex = examples(m.info().vocab_size);
        for kind in KINDS {
            let pf = start(&m, kind, 3);
            let grads = |model: &dyn Transformer, dtype: DType| -> Vec<Vec<f64>> {
                let tuned = TunedPrefix::from_prefix(&pf, dtype).unwrap();
                let (l, _, _) =
                    loss(model.stepper().unwrap(), Some(&tuned.tensors()), &ex).unwrap();
                let g = l.backward().unwrap();
                tuned
                    .vars()
                    .iter()
                    .map(|v| {
                        g.get(v.as_tensor())
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    })
                    .collect()
            };
            let (g32, g64) = (grads(&m, DType::F32), grads(&m64, DType::F64));
            for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
                let scale = b.iter().fold(0f64, |x, y| x.max(y.abs()));
                let worst = a.iter().zip(b).fold(0f64, |x, (p, q)| x.max((p - q).abs()));
                assert!(
                    worst < 1e-4 * scale,
                    "{name} {kind:?} tensor {i}: f32 gradient off by {worst:e} (largest {scale:e})"
                );
            }
        }
    }
}
