//! The long-prompt path's pieces (#16) against full captures, on SmolLM2 with each prefix kind:
//! - `Evaluator::head_capture` (one head of one layer, from cached queries and keys) gives every view
//!   of that head as a full capture of every layer does, to 1e-6, while the head, the layer and the
//!   prefix change under the same evaluator (what a user does in the window);
//! - `Evaluator::summaries` (every layer's per-head figures, one head at a time) gives the overview's
//!   grids, the deviation plot's figures and the layer-0 checks the full capture's maps give through
//!   `crate::metrics` and `LayerCapture`.

// Heads and layers index the grids and the captures alike.
#![allow(clippy::needless_range_loop)]

mod common;

use prefixscope::arrays::Array;
use prefixscope::capture::{capture, Capture, LayerCapture};
use prefixscope::incremental::{Edit, Evaluator};
use prefixscope::metrics::{deviations, head_metric_grid, HeadMetric};
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};

fn filled(kind: PrefixKind, info: &prefixscope::model::ModelInfo, salt: usize) -> Prefix {
    let scale = match kind {
        PrefixKind::SoftPrompt => 0.05f32,
        PrefixKind::Hidden => 0.5,
        PrefixKind::KeyValue => 1.0,
    };
    let mut pf = Prefix::zeros(kind, 2, info);
    for (i, x) in pf.values_mut().enumerate() {
        *x = ((((i + salt) * 2654435761) % 1000) as f32 / 500.0 - 1.0) * scale;
    }
    pf
}

/// Head `h` of a `(H, ...)` array.
fn head_of(a: &Array, h: usize) -> &[f32] {
    let per = a.data.len() / a.shape[0];
    &a.data[h * per..(h + 1) * per]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Every view of `one` (one head, arrays `(1, ...)`) against head `h` of `full`.
fn assert_head_equal(one: &LayerCapture, full: &LayerCapture, h: usize, what: &str) {
    assert_eq!(one.layer, full.layer);
    assert_eq!(one.n_heads(), 1, "{what}: one head held");
    let pairs: [(&str, Option<&Array>, Option<&Array>); 7] = [
        ("raw", one.with_prefix.as_ref(), full.with_prefix.as_ref()),
        (
            "renormalized",
            one.renormalized.as_ref(),
            full.renormalized.as_ref(),
        ),
        ("pretrained", Some(&one.pretrained), Some(&full.pretrained)),
        (
            "prefix mass",
            one.prefix_mass.as_ref(),
            full.prefix_mass.as_ref(),
        ),
        (
            "z with prefix",
            one.z_prefixed.as_ref(),
            full.z_prefixed.as_ref(),
        ),
        (
            "z pretrained",
            Some(&one.z_pretrained),
            Some(&full.z_pretrained),
        ),
        (
            "prefix values",
            one.prefix_values.as_ref(),
            full.prefix_values.as_ref(),
        ),
    ];
    for (name, a, b) in pairs {
        match (a, b) {
            (Some(a), Some(b)) => {
                assert_eq!(a.shape[0], 1, "{what} {name}: one head");
                assert_eq!(&a.shape[1..], &b.shape[1..], "{what} {name}: shape");
                // Head outputs are sums of up to N products: 1e-5, as the full path's own checks.
                let tol = if name.starts_with('z') { 1e-5 } else { 1e-6 };
                let d = max_diff(head_of(a, 0), head_of(b, h));
                assert!(d <= tol, "{what} {name}: differs by {d}");
            }
            (None, None) => {}
            _ => panic!("{what} {name}: present in one capture only"),
        }
    }
}

#[test]
fn one_head_views_equal_a_full_capture_while_head_layer_and_prefix_change() {
    let Some(path) = common::smollm2_or_skip() else {
        return;
    };
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    assert!(Evaluator::streams_heads(m));
    let ids: Vec<u32> = (0..37).map(|k| ((k * 7919 + 13) % 49152) as u32).collect();
    for kind in [
        PrefixKind::SoftPrompt,
        PrefixKind::Hidden,
        PrefixKind::KeyValue,
    ] {
        let pf = filled(kind, &info, 0);
        let full = capture(m, &ids, Some(&pf), &LayerSel::All).unwrap();
        let mut ev = Evaluator::new(&ids);
        // Viewing in the order a user might: a deep layer first, another head, a lower layer.
        let mut edit = Edit::All;
        for (l, h) in [(11, 0), (11, 5), (3, 5), (29, 8), (0, 2)] {
            let cap = ev
                .head_capture(m, Some(&pf), edit, l, h)
                .unwrap()
                .expect("a RoPE model");
            edit = Edit::between(Some(&pf), Some(&pf), info.n_layers);
            assert_eq!(cap.layers.len(), 1);
            assert_eq!(cap.p, 2);
            assert_eq!(cap.logits_last_pretrained, full.logits_last_pretrained);
            assert_head_equal(
                &cap.layers[0],
                full.layer(l).unwrap(),
                h,
                &format!("{kind:?} L{l} H{h}"),
            );
        }
        // A prefix edit (one layer of a paper-form or key/value prefix, or the soft prompt): the
        // evaluator recomputes what the edit can change, and the views are the new prefix's.
        let mut edited = pf.clone();
        // A coordinate in layer 9 (paper form) or 18 (the key/value prefix's keys), below the
        // viewed layer 20 and above layer 0.
        let per = edited.values_mut().count() / info.n_layers;
        if let Some(x) = edited.values_mut().nth(9 * per + 1) {
            *x += 0.7;
        }
        let edit = Edit::between(Some(&pf), Some(&edited), info.n_layers);
        let full2 = capture(m, &ids, Some(&edited), &LayerSel::Only(vec![0, 20])).unwrap();
        for (i, l) in [20, 0].into_iter().enumerate() {
            let e = if i == 0 {
                edit
            } else {
                Edit::between(Some(&edited), Some(&edited), info.n_layers)
            };
            let cap = ev.head_capture(m, Some(&edited), e, l, 4).unwrap().unwrap();
            assert_head_equal(
                &cap.layers[0],
                full2.layer(l).unwrap(),
                4,
                &format!("{kind:?} edited L{l}"),
            );
        }
        // Without a prefix: the pretrained views only.
        let bare = capture(m, &ids, None, &LayerSel::Only(vec![7])).unwrap();
        let cap = ev.head_capture(m, None, Edit::All, 7, 1).unwrap().unwrap();
        assert!(cap.layers[0].with_prefix.is_none());
        assert_head_equal(&cap.layers[0], bare.layer(7).unwrap(), 1, "no prefix");
    }
}

fn assert_summaries_match(full: &Capture, s: &prefixscope::head_views::Summaries, what: &str) {
    let (n_layers, n_heads) = (30, 9);
    for metric in HeadMetric::ALL {
        let want = head_metric_grid(full, n_layers, n_heads, metric);
        let got = s.grid(metric).expect("every metric's grid");
        for l in 0..n_layers {
            for h in 0..n_heads {
                match (got[l][h], want[l][h]) {
                    (Some(a), Some(b)) => assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{what} {metric:?} L{l} H{h}: {a} against {b}"
                    ),
                    (None, None) => {}
                    (a, b) => panic!("{what} {metric:?} L{l} H{h}: {a:?} against {b:?}"),
                }
            }
        }
    }
    let want = deviations(full);
    assert_eq!(s.deviations.len(), want.len(), "{what}: layers");
    for (a, b) in s.deviations.iter().zip(&want) {
        assert_eq!(a.layer, b.layer);
        for h in 0..n_heads {
            let ((am, aa), (bm, ba)) = (a.head(h).unwrap(), b.head(h).unwrap());
            assert!((am - bm).abs() <= 1e-5, "{what} L{} H{h} max", a.layer);
            assert!((aa - ba).abs() <= 1e-6, "{what} L{} H{h} mean", a.layer);
        }
    }
    let l0 = full.layer(0).unwrap();
    let close = |a: Option<f32>, b: Option<f32>, tol: f32| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= tol,
        (None, None) => true,
        _ => false,
    };
    assert!(
        close(s.layer0_renorm_diff, l0.max_renorm_diff(None), 1e-6),
        "{what}: layer 0 check {:?} against {:?}",
        s.layer0_renorm_diff,
        l0.max_renorm_diff(None)
    );
    assert!(
        close(
            s.layer0_identity_error,
            l0.head_output_identity_error(None),
            1e-5
        ),
        "{what}: identity {:?} against {:?}",
        s.layer0_identity_error,
        l0.head_output_identity_error(None)
    );
}

#[test]
fn streamed_summaries_equal_the_figures_of_full_captures() {
    let Some(path) = common::smollm2_or_skip() else {
        return;
    };
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    assert_eq!((info.n_layers, info.n_heads), (30, 9));
    let ids: Vec<u32> = (0..29).map(|k| ((k * 7919 + 13) % 49152) as u32).collect();
    for kind in [
        PrefixKind::SoftPrompt,
        PrefixKind::Hidden,
        PrefixKind::KeyValue,
    ] {
        let pf = filled(kind, &info, 11);
        let full = capture(m, &ids, Some(&pf), &LayerSel::All).unwrap();
        let mut ev = Evaluator::new(&ids);
        ev.head_capture(m, Some(&pf), Edit::All, 5, 0).unwrap();
        let s = ev.summaries(m).unwrap().expect("a RoPE model");
        assert_summaries_match(&full, &s, &format!("{kind:?}"));
        // Not all zeros: a wrong layer or head would show.
        let dev = s.grid(HeadMetric::Deviation).unwrap();
        assert!(dev[12].iter().any(|x| x.unwrap() > 1e-3), "{kind:?}");
    }
    // Without a prefix: no deviation, the other metrics from the pretrained maps.
    let full = capture(m, &ids, None, &LayerSel::All).unwrap();
    let mut ev = Evaluator::new(&ids);
    ev.head_capture(m, None, Edit::All, 0, 0).unwrap();
    let s = ev.summaries(m).unwrap().unwrap();
    assert_summaries_match(&full, &s, "no prefix");
}
