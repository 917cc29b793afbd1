//! The window on a long prompt (#16): past the app's budget for every layer's views, the maps of the
//! viewed head are drawn, the overview is filled for every layer and head, the plots' figures cover
//! every layer, and viewing another head computes and draws that head. Reads egui's accessibility
//! tree and the app's state, never pixels or times.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness_sized, step_until_within};
use common::temp_dir;
use egui_kittest::kittest::Queryable;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use std::time::Duration;

#[test]
fn a_long_prompt_fills_the_views_the_overview_and_the_plots() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let dir = temp_dir("gui-long");
    // About 600 tokens: 30 layers x 9 heads of 4 maps would take 1.7 GB, over the 1 GiB budget.
    let prompt = "word ".repeat(600);
    let opts = AppOptions {
        model: Some(model),
        prompt: Some(prompt),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness_sized(PrefixScopeApp::new(None, opts), (1280.0, 800.0));
    let limit = Duration::from_secs(600);
    step_until_within(&mut h, "the long prompt's full answer", limit, |a| {
        a.is_current()
    });
    let n = h.state().prompt.ids.len();
    assert!(n >= 500, "{n} tokens");
    let c = h.state().shown().unwrap();
    assert_eq!(c.only_head, Some(0), "one head's maps");
    assert_eq!(c.capture.layers.len(), 1);
    assert!(c.overview_fresh);
    assert!(c.overview.iter().flatten().all(|x| x.is_some()));
    assert_eq!(c.summaries.as_ref().unwrap().deviations.len(), 30);
    // The four maps, the overview and the layer-0 check are on screen.
    for map in [
        "raw, with prefix heatmap, layer 0, head 0",
        "renormalized over content heatmap",
        "pretrained (no prefix) heatmap",
        "renormalized − pretrained heatmap",
    ] {
        assert!(h.query_by_label_contains(map).is_some(), "no {map}");
    }
    assert!(h
        .query_by_label_contains("overview of 30 layers by 9 heads")
        .is_some());
    let l0 = h
        .get_by_label_contains("layer 0: max |renorm − pretrained|")
        .value()
        .unwrap_or_default();
    assert!(l0.contains("passes"), "{l0}");
    // The plots' figures (the deviation plot, the overview's other colourings) for every layer.
    h.run_steps(2);
    let metrics = h
        .state()
        .plots
        .metrics
        .as_ref()
        .expect("the plots' figures");
    assert_eq!(metrics.deviations.len(), 30);
    // Another head and layer: computed when viewed, then drawn.
    h.state_mut().views.layer = 7;
    h.state_mut().views.head = 4;
    h.run_steps(2);
    step_until_within(&mut h, "head 4 of layer 7", limit, |a| {
        a.is_current() && a.shown().is_some_and(|c| c.only_head == Some(4))
    });
    assert_eq!(h.state().shown().unwrap().capture.layers[0].layer, 7);
    assert!(h
        .query_by_label_contains("pretrained (no prefix) heatmap, layer 7, head 4")
        .is_some());
    // The prefix-mass plot names the model's head, not the capture's one-head index, and draws no
    // "mean over heads" from the one head it holds.
    h.state_mut().plots.open = true;
    h.run_steps(3);
    assert!(
        h.query_by_label_contains("Prefix mass per query (layer 7, head 4)")
            .is_some(),
        "the prefix-mass plot's title names head 4"
    );
    assert!(h
        .query_by_label_contains("Prefix mass per query (layer 7, head 0)")
        .is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
