//! The incremental evaluator gives the same views as a full recompute (within 1e-6), over random
//! sequences of prefix edits and viewed layers.

mod common;

use common::*;
use prefixscope::capture::capture;
use prefixscope::incremental::{Edit, Evaluator};
use prefixscope::load::load;
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

#[test]
fn incremental_equals_full_recompute_over_random_edits() {
    let loaded = load(&smollm2()).unwrap();
    let ids = loaded
        .tokenizer
        .encode("Prefixes bias attention: 3 + 4 = 7.", false)
        .unwrap();
    check_random_edits(&loaded, &ids, 0x5EED_1234_ABCD_0001);
}

/// The GPT family has its own layer stepper (learned positions, LayerNorm, GELU): the same property
/// on the bundled 4-layer toy, against its batched forward.
#[test]
fn incremental_equals_full_recompute_on_the_deep_toy() {
    let loaded = load(&repo_path("models/deep-4l4h128/random.safetensors")).unwrap();
    let ids = loaded
        .tokenizer
        .encode("2 6 0 1 4 6 3 0 1 2", false)
        .unwrap();
    assert_eq!(ids.len(), 10);
    check_random_edits(&loaded, &ids, 0x5EED_1234_ABCD_0002);
}

fn check_random_edits(loaded: &prefixscope::load::Loaded, ids: &[u32], seed: u64) {
    let model = loaded.model.as_ref();
    let info = model.info().clone();
    assert!(
        model.stepper().is_some(),
        "no incremental path for {}",
        info.source
    );
    let mut rng = Rng(seed);
    let mut ev = Evaluator::new(ids);
    let mut checked = 0;
    for kind in [
        PrefixKind::Hidden,
        PrefixKind::KeyValue,
        PrefixKind::SoftPrompt,
    ] {
        let p = 1 + rng.below(3);
        let mut prefix = Prefix::zeros(kind, p, &info);
        let scale = if kind == PrefixKind::KeyValue {
            1.0
        } else {
            0.05
        };
        for x in prefix.values_mut() {
            *x = rng.unit() * scale;
        }
        let mut edit = Edit::All;
        for _step in 0..8 {
            let n_view = 1 + rng.below(3);
            let mut layers: Vec<usize> = (0..n_view).map(|_| rng.below(info.n_layers)).collect();
            layers.sort();
            layers.dedup();
            let inc = ev.update(model, Some(&prefix), edit, &layers).unwrap();
            let full = capture(model, ids, Some(&prefix), &LayerSel::Only(layers.clone())).unwrap();
            for l in &layers {
                let a = inc.layer(*l).unwrap();
                let b = full.layer(*l).unwrap();
                let d = common::max_abs_diff(
                    &a.with_prefix.as_ref().unwrap().data,
                    &b.with_prefix.as_ref().unwrap().data,
                );
                assert!(
                    d <= 1e-6,
                    "{kind:?} layer {l} after {edit:?}: with-prefix differs by {d:e}"
                );
                let d = common::max_abs_diff(
                    &a.renormalized.as_ref().unwrap().data,
                    &b.renormalized.as_ref().unwrap().data,
                );
                assert!(
                    d <= 1e-6,
                    "{kind:?} layer {l}: renormalized differs by {d:e}"
                );
                assert!(common::max_abs_diff(&a.pretrained.data, &b.pretrained.data) <= 1e-6);
                // Head outputs are not bounded by 1 like attention weights: f32 rounding grows with
                // their size, so the bound is relative to the largest one (at least 1).
                let zb = &b.z_prefixed.as_ref().unwrap().data;
                let d = common::max_abs_diff(&a.z_prefixed.as_ref().unwrap().data, zb);
                let size = zb.iter().fold(1f32, |m, x| m.max(x.abs()));
                assert!(
                    d <= 1e-6 * size,
                    "{kind:?} layer {l}: head output differs by {d:e} (largest {size})"
                );
                checked += 1;
            }
            // Next edit: one coordinate of one layer (or of the soft prompt).
            match &mut prefix {
                Prefix::SoftPrompt(a) => {
                    let i = rng.below(a.data.len());
                    a.data[i] += rng.unit() * 0.5;
                    edit = Edit::SoftPrompt;
                }
                Prefix::Hidden(a) => {
                    let l = rng.below(info.n_layers);
                    let per = a.data.len() / info.n_layers;
                    let i = l * per + rng.below(per);
                    a.data[i] += rng.unit() * 2.0;
                    edit = Edit::Layer(l);
                }
                Prefix::KeyValue { keys, values } => {
                    let l = rng.below(info.n_layers);
                    let per = keys.data.len() / info.n_layers;
                    let i = l * per + rng.below(per);
                    keys.data[i] += rng.unit() * 2.0;
                    values.data[i] -= rng.unit();
                    edit = Edit::Layer(l);
                }
            }
        }
    }
    assert!(checked >= 24);
}

/// The evaluator's caches across the changes the app makes between updates: the prefix length
/// changes (while the caller says only one layer was edited), the prefix is removed and comes back,
/// its kind changes, and the prompt changes (the app then starts a new evaluator for the new ids;
/// the old one must not leak into it). Each answer is checked against a full recompute, on the small
/// HF folder (2 layers, GQA 2:1).
#[test]
fn evaluator_across_length_change_removal_kind_change_and_new_prompt() {
    let loaded = load(&repo_path(
        "tests/regressions/hostile-files/tiny-hf-folder-valid",
    ))
    .unwrap();
    let model = loaded.model.as_ref();
    let info = model.info().clone();
    let mut rng = Rng(0x5EED_1234_ABCD_0003);
    let mut random = |kind: PrefixKind, p: usize| {
        let mut pf = Prefix::zeros(kind, p, &info);
        for x in pf.values_mut() {
            *x = rng.unit() * 2.0;
        }
        pf
    };
    let check =
        |ev: &mut Evaluator, ids: &[u32], prefix: Option<&Prefix>, edit: Edit, what: &str| {
            let layers = [0usize, 1];
            let inc = ev.update(model, prefix, edit, &layers).unwrap();
            let full = capture(model, ids, prefix, &LayerSel::All).unwrap();
            assert_eq!(inc.token_ids, ids, "{what}: token ids");
            assert_eq!(
                inc.p,
                prefix.map_or(0, |p| p.len()),
                "{what}: prefix length"
            );
            for l in layers {
                let (a, b) = (inc.layer(l).unwrap(), full.layer(l).unwrap());
                assert!(
                    common::max_abs_diff(&a.pretrained.data, &b.pretrained.data) <= 1e-6,
                    "{what}: L{l} pretrained"
                );
                match (&a.with_prefix, &b.with_prefix) {
                    (Some(x), Some(y)) => {
                        assert_eq!(x.shape, y.shape, "{what}: L{l} shape");
                        let d = common::max_abs_diff(&x.data, &y.data);
                        assert!(d <= 1e-6, "{what}: L{l} with-prefix differs by {d:e}");
                    }
                    (None, None) => {}
                    _ => panic!("{what}: L{l}: prefixed views present in one answer only"),
                }
            }
        };
    let ids_a: Vec<u32> = vec![5, 17, 200, 3, 44, 9, 120];
    let ids_b: Vec<u32> = vec![8, 8, 250, 1];
    let mut ev = Evaluator::new(&ids_a);
    let p2 = random(PrefixKind::Hidden, 2);
    check(&mut ev, &ids_a, Some(&p2), Edit::All, "paper P=2");
    // A longer prefix announced as a one-layer edit: the evaluator must notice the new shape.
    let p3 = random(PrefixKind::Hidden, 3);
    check(
        &mut ev,
        &ids_a,
        Some(&p3),
        Edit::Layer(1),
        "paper P=3 as a layer-1 edit",
    );
    check(&mut ev, &ids_a, None, Edit::Layer(1), "prefix removed");
    check(&mut ev, &ids_a, Some(&p3), Edit::Layer(1), "prefix back");
    let kv = random(PrefixKind::KeyValue, 3);
    check(
        &mut ev,
        &ids_a,
        Some(&kv),
        Edit::Layer(1),
        "same length, key/value kind",
    );
    let sp = random(PrefixKind::SoftPrompt, 2);
    check(&mut ev, &ids_a, Some(&sp), Edit::Layer(0), "soft prompt");
    // A new prompt: a new evaluator, as the worker makes one; and the old one still answers its own.
    let mut ev_b = Evaluator::new(&ids_b);
    check(&mut ev_b, &ids_b, Some(&p2), Edit::All, "new prompt");
    check(&mut ev, &ids_a, Some(&p2), Edit::All, "old prompt again");
}
