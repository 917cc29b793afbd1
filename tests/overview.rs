//! The evaluator's overview (the per-head summaries the app shows for every layer, computed one head
//! at a time so that long prompts keep no layer's maps) against the same summaries taken from full
//! captures of every layer, on SmolLM2 with each prefix kind.

// Heads index the overview, the captures and the maps alike.
#![allow(clippy::needless_range_loop)]

mod common;

use prefixscope::capture::capture;
use prefixscope::incremental::{Edit, Evaluator};
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};

#[test]
fn overview_equals_the_summaries_of_full_captures() {
    let Some(path) = common::smollm2_or_skip() else {
        return;
    };
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    let ids: Vec<u32> = (0..23).map(|k| ((k * 7919 + 13) % 49152) as u32).collect();
    for (kind, scale) in [
        (PrefixKind::SoftPrompt, 0.05f32),
        (PrefixKind::Hidden, 0.5),
        (PrefixKind::KeyValue, 1.0),
    ] {
        let mut pf = Prefix::zeros(kind, 2, &info);
        for (i, x) in pf.values_mut().enumerate() {
            *x = (((i * 2654435761) % 1000) as f32 / 500.0 - 1.0) * scale;
        }
        let full = capture(m, &ids, Some(&pf), &LayerSel::All).unwrap();
        let mut ev = Evaluator::new(&ids);
        // As the app does: a quick answer for the viewed layer first, then the overview.
        ev.update(m, Some(&pf), Edit::All, &[0, 7]).unwrap();
        let ov = ev.overview(m, Some(&pf)).unwrap().expect("a RoPE model");
        assert_eq!(ov.len(), info.n_layers);
        let mut deeper_differs = false;
        for lc in &full.layers {
            for h in 0..info.n_heads {
                let want = lc.max_renorm_diff(Some(h)).unwrap();
                let got = ov[lc.layer][h].unwrap();
                assert!(
                    (got - want).abs() < 1e-5,
                    "{kind:?} layer {} head {h}: overview {got}, capture {want}",
                    lc.layer
                );
                deeper_differs |= lc.layer > 0 && want > 1e-3;
            }
        }
        // Not all zeros: the comparison can see a wrong layer or head.
        assert!(deeper_differs, "{kind:?}: no deeper layer differs");
        // Without a prefix there is nothing to compare.
        let mut ev = Evaluator::new(&ids);
        ev.update(m, None, Edit::All, &[0]).unwrap();
        let none = ev.overview(m, None).unwrap().unwrap();
        assert!(none.iter().flatten().all(|x| x.is_none()));
    }
}

/// The app's full answer on a long prompt (every layer's views would not fit): the maps of the
/// viewed head of the viewed layer only, an overview filled for every layer and head, and the plots'
/// figures for every layer.
#[cfg(feature = "gui")]
#[test]
fn a_long_prompt_answer_keeps_one_heads_maps_and_the_whole_overview() {
    use prefixscope::app::worker::{compute_once, ComputeRequest};
    let Some(path) = common::smollm2_or_skip() else {
        return;
    };
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    // 30 layers x 9 heads x 4 maps of 520 x 521 floats: 1.2 GB, over the 1 GiB budget.
    let n = 520;
    let ids: Vec<u32> = (0..n).map(|k| ((k * 7919 + 13) % 49152) as u32).collect();
    let mut pf = Prefix::zeros(PrefixKind::KeyValue, 1, &info);
    for (i, x) in pf.values_mut().enumerate() {
        *x = (((i * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 0.5;
    }
    let req = ComputeRequest {
        gen: 1,
        model_gen: 1,
        ids,
        prefix: Some(pf),
        view_layer: 11,
        view_head: 4,
    };
    let all: Vec<usize> = (0..info.n_layers).collect();
    let c = compute_once(m, &req, &all).unwrap();
    let layers: Vec<usize> = c.capture.layers.iter().map(|l| l.layer).collect();
    assert_eq!(layers, [11]);
    assert_eq!(c.only_head, Some(4));
    assert_eq!(c.head_index(4), Some(0));
    assert_eq!(c.head_index(3), None);
    // One head's four maps (raw, renormalized, pretrained, difference), nothing more.
    assert!(
        c.map_bytes() <= 4 * n * (n + 1) * 4,
        "{} bytes",
        c.map_bytes()
    );
    assert!(c.overview_fresh);
    assert_eq!(c.overview.len(), info.n_layers);
    assert!(c
        .overview
        .iter()
        .all(|row| row.len() == info.n_heads && row.iter().all(|x| x.is_some())));
    let s = c.summaries.as_ref().expect("the plots' figures");
    assert_eq!(s.deviations.len(), info.n_layers);
    assert!(c.layer0_renorm_diff.is_some_and(|x| x < 1e-5));
    assert!(c.layer0_identity_error.is_some_and(|x| x < 1e-4));
    // The viewed layer's row against the evaluator's own overview path (content-only softmax,
    // the paper's identity) and the viewed head's maps.
    let lc = &c.capture.layers[0];
    let mut ev = Evaluator::new(&req.ids);
    ev.update(m, req.prefix.as_ref(), Edit::All, &[0]).unwrap();
    let ov = ev.overview(m, req.prefix.as_ref()).unwrap().unwrap();
    for h in 0..info.n_heads {
        assert!(
            (ov[11][h].unwrap() - c.overview[11][h].unwrap()).abs() < 1e-5,
            "head {h}"
        );
    }
    assert_eq!(c.overview[11][4], lc.max_renorm_diff(Some(0)));
}
