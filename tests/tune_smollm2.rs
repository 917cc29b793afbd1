//! The experiment on a real checkpoint: on SmolLM2-135M, a soft prompt of length 4, tuned with every
//! weight frozen for the target " Berlin" after "The capital of France is", makes the model say it
//! (p(target) >= 0.9 within 100 steps, seed fixed), while layer 0's attention over the content,
//! renormalized, stays the pretrained one (max |renormalized - pretrained| < 1e-5 at every logged
//! step, through the capture path's genuine softmax over [prefix | content]). The deepest layer's
//! difference is large at the same time: the check measures something a prefix does change.
//!
//! Run time: about 15 steps of 0.3-0.8 s on a 2-core machine, plus one capture per logged step.

mod common;

use common::*;
use prefixscope::load::{load_with, LoadControl};
use prefixscope::prefix::PrefixKind;
use prefixscope::tune::{initial_prefix, Example, TuneConfig, Tuner};
use std::sync::Arc;

#[test]
fn a_soft_prompt_flips_the_capital_of_france_while_layer_0_stays_pretrained() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let loaded = load_with(&path, &LoadControl::default()).unwrap();
    let prompt = loaded
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let target = loaded.tokenizer.encode(" Berlin", false).unwrap();
    assert_eq!(target.len(), 1, "' Berlin' is one SmolLM2 token");
    let model: Arc<dyn prefixscope::model::Transformer> = Arc::from(loaded.model);
    let cfg = TuneConfig {
        kind: PrefixKind::SoftPrompt,
        length: 4,
        lr: 0.01,
        seed: 0,
    };
    let start = initial_prefix(model.as_ref(), &cfg).unwrap();
    let mut t = Tuner::new(model, vec![Example { prompt, target }], cfg, &start).unwrap();

    let t0 = std::time::Instant::now();
    let before = t.evaluate().unwrap();
    assert!(
        before.p_target < 0.01,
        "untuned p(Berlin) {}",
        before.p_target
    );
    let mut deepest_seen = 0f32;
    let mut reached = None;
    for _ in 0..100 {
        let s = t.step().unwrap();
        if s.step.is_multiple_of(5) {
            let c = t.renorm_check().unwrap();
            assert!(
                c.layer0 < 1e-5,
                "step {}: layer 0 max |renormalized - pretrained| = {:e}",
                s.step,
                c.layer0
            );
            deepest_seen = deepest_seen.max(c.deepest);
        }
        if s.p_target >= 0.9 {
            reached = Some(s.step);
            break;
        }
    }
    let step = reached.unwrap_or_else(|| panic!("p(target) < 0.9 after 100 steps"));
    let end = t.renorm_check().unwrap();
    assert!(end.layer0 < 1e-5, "final layer 0: {:e}", end.layer0);
    assert!(
        deepest_seen.max(end.deepest) > 0.05,
        "the deepest layer's attention should move ({:e})",
        end.deepest
    );
    eprintln!(
        "p(target) {:.4} -> >= 0.9 at step {step}; layer 0 {:.2e}, deepest {:.2e}; {:.1} s",
        before.p_target,
        end.layer0,
        end.deepest,
        t0.elapsed().as_secs_f64()
    );
}

/// Quantized mode (GGUF weights kept in their blocks, each dequantized for its product) tunes the
/// same numbers as the f32 mode: the same loss for the same start, and the same first step.
#[test]
fn quantized_mode_tunes_like_f32() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let run = |quantized: bool| {
        let loaded = load_with(
            &path,
            &LoadControl {
                quantized,
                ..Default::default()
            },
        )
        .unwrap();
        let ex = Example {
            prompt: loaded
                .tokenizer
                .encode("The capital of France is", false)
                .unwrap(),
            target: loaded.tokenizer.encode(" Berlin", false).unwrap(),
        };
        let model: Arc<dyn prefixscope::model::Transformer> = Arc::from(loaded.model);
        let cfg = TuneConfig {
            kind: PrefixKind::KeyValue,
            length: 2,
            lr: 0.01,
            seed: 1,
        };
        let start = initial_prefix(model.as_ref(), &cfg).unwrap();
        let mut t = Tuner::new(model, vec![ex], cfg, &start).unwrap();
        let s = t.step().unwrap();
        (s.loss, t.evaluate().unwrap().loss)
    };
    let (f0, f1) = run(false);
    let (q0, q1) = run(true);
    assert!(
        (f0 - q0).abs() < 1e-4 * f0.abs().max(1.0),
        "loss {f0} against {q0}"
    );
    assert!(
        (f1 - q1).abs() < 1e-3 * f1.abs().max(1.0),
        "after one step {f1} against {q1}"
    );
    assert!(f1 < f0, "one step lowers the loss ({f0} -> {f1})");
}
