//! The plots panel (issue 19: "the plots egui_plot is for"), driven through the real app with
//! egui_kittest on the bundled 4-layer toy (`models/deep-4l4h128`) and its trained `ascending`
//! prefix: (a) deviation by layer, (b) prefix mass per query, (c) the bias plot, (d) the overview
//! coloured by a head metric. Expected numbers are recomputed here by plain loops over the capture
//! (or by the capture's own `max_renorm_diff`, a separate implementation), never read back from the
//! code that draws them.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until, type_into};
use common::{repo_path, temp_dir};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use prefixscope::metrics::HeadMetric;
use prefixscope::prefix::{Prefix, PrefixKind};
use std::path::PathBuf;

const PROMPT: &str = "3 1 4 1 5 7 2 6 5 3";

fn deep_toy() -> (PathBuf, PathBuf) {
    let dir = repo_path("models/deep-4l4h128");
    (
        dir.join("random.safetensors"),
        dir.join("prefix-ascending.safetensors"),
    )
}

/// The app on the 4-layer toy with its trained prefix, full answer on screen, plots panel opened by
/// its status-bar button.
fn opened(dir: &std::path::Path) -> egui_kittest::Harness<'static, PrefixScopeApp> {
    let (model, prefix) = deep_toy();
    let opts = AppOptions {
        model: Some(model),
        prefix: Some(prefix),
        prefix_kind: Some(PrefixKind::Hidden),
        prompt: Some(PROMPT.into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "the full answer", |a| {
        a.is_current() && a.shown().is_some_and(|c| c.full)
    });
    assert!(!h.state().plots.open, "the panel starts closed");
    h.get_by_label("plots").click();
    h.step();
    assert!(h.state().plots.open, "the button opens the panel");
    step_until(&mut h, "the plots' metrics and bias points", |a| {
        let shown = a.shown().unwrap();
        let b = &a.plots.bias;
        a.plots.metrics_current(shown) && b.result.as_ref().is_some_and(|r| Some(r.key) == b.asked)
    });
    h
}

/// (a) and (b): the deviation series and the prefix-mass bars are the capture's numbers.
#[test]
fn deviation_by_layer_and_prefix_mass_per_query() {
    let dir = temp_dir("gui-plots-a");
    let mut h = opened(&dir);
    let app = h.state();
    let cap = &app.shown().unwrap().capture;
    let devs = &app.plots.metrics.as_ref().unwrap().deviations;
    assert_eq!(devs.len(), 4, "one entry per layer");
    let mut deepest = 0f32;
    for (d, lc) in devs.iter().zip(&cap.layers) {
        assert_eq!(d.layer, lc.layer);
        let (r, p) = (lc.renormalized.as_ref().unwrap(), &lc.pretrained);
        let n = p.shape[1];
        for (h, &(max, mean)) in d.per_head.iter().enumerate() {
            assert_eq!(
                max,
                lc.max_renorm_diff(Some(h)).unwrap(),
                "layer {} head {h}",
                d.layer
            );
            // The mean over the causal cells, by plain loops in f64.
            let mut sum = 0f64;
            for i in 0..n {
                for j in 0..=i {
                    let k = (h * n + i) * n + j;
                    sum += (r.data[k] - p.data[k]).abs() as f64;
                }
            }
            let want = sum / (n * (n + 1) / 2) as f64;
            assert!(
                (mean as f64 - want).abs() < 1e-6,
                "layer {} head {h}: mean {mean} against {want}",
                d.layer
            );
        }
        let (all_max, _) = d.all();
        assert_eq!(all_max, lc.max_renorm_diff(None).unwrap());
        if d.layer == 0 {
            // The paper: in layer 0 a prefix only rescales attention.
            assert!(all_max < 1e-5, "layer 0 deviation {all_max}");
        } else {
            deepest = deepest.max(all_max);
        }
    }
    assert!(
        deepest > 1e-3,
        "the prefix changes deeper layers ({deepest})"
    );
    assert!(h
        .query_by_label_contains("deviation by layer plot: head 0: max")
        .is_some());

    // (b) at the viewed layer and head (0, 0): N bars, the largest as labelled.
    let mass = cap.layer(0).unwrap().prefix_mass.clone().unwrap();
    let n = mass.shape[1];
    let largest = mass.data[..n].iter().copied().fold(0f32, f32::max);
    assert!(largest > 0.01, "the prefix takes attention ({largest})");
    assert!(
        h.query_by_label_contains(&format!(
            "prefix mass per query plot: {n} queries, largest {largest:.3}"
        ))
        .is_some(),
        "the bars of head 0"
    );
    // Another head selected: the plot follows.
    h.state_mut().views.head = 1;
    h.step();
    let largest1 = mass.data[n..2 * n].iter().copied().fold(0f32, f32::max);
    h.step();
    assert!(h
        .query_by_label_contains(&format!("largest {largest1:.3}"))
        .is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// (c): one line per prompt (the prompt and its four beginnings), each the library's block output
/// for that prompt, with and without the prefix, at the last position of layer 0.
#[test]
fn bias_plot_one_line_per_prompt() {
    let dir = temp_dir("gui-plots-c");
    let h = opened(&dir);
    let app = h.state();
    let r = app.plots.bias.result.as_ref().unwrap();
    assert_eq!(r.layer, 0);
    let ids = app.shown().unwrap().capture.token_ids.clone();
    assert_eq!(r.points.len(), 5, "the prompt and its 4 shorter beginnings");
    let (model_path, prefix_path) = deep_toy();
    let loaded = prefixscope::load::load(&model_path).unwrap();
    let prefix = Prefix::load(&prefix_path, PrefixKind::Hidden).unwrap();
    for (k, (p, res)) in r.points.iter().enumerate() {
        assert_eq!(p.ids, ids[..ids.len() - k], "{}", p.label);
        let got = res.as_ref().unwrap();
        assert_eq!(got.position, ids.len() - k - 1);
        let want = prefixscope::bias::block_output_at(loaded.model.as_ref(), &p.ids, &prefix, 0, 0)
            .unwrap();
        assert_eq!(got, &want, "{}", p.label);
        assert!(
            got.with
                .iter()
                .zip(&got.without)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "the prefix moves the output"
        );
    }
    assert!(h.query_by_label_contains("bias plot: 5 prompts").is_some());
    assert!(h
        .query_by_label_contains("mean cosine to the mean shift")
        .is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The bias plot's numbers against an independent float64 NumPy implementation of the four-task
/// toy's layer 0 (`tests/fixtures/bias_figure/`, the exported figure (c)'s reference): the library
/// function the panel calls gives them to 1e-5.
#[test]
fn bias_points_match_the_float64_reference() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/bias_figure/reference.json")).unwrap(),
    )
    .unwrap();
    let dir = repo_path("models/mix-1l4h256");
    let loaded = prefixscope::load::load(&dir.join("random.safetensors")).unwrap();
    let prefix = Prefix::load(
        &dir.join("prefix-ascending.safetensors"),
        PrefixKind::Hidden,
    )
    .unwrap();
    let (d1, d2) = (
        want["dims"][0].as_u64().unwrap() as usize,
        want["dims"][1].as_u64().unwrap() as usize,
    );
    let mut worst = 0f64;
    for (k, input) in want["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .take(5)
    {
        let ids: Vec<u32> = input
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got =
            prefixscope::bias::block_output_at(loaded.model.as_ref(), &ids, &prefix, 0, 0).unwrap();
        for (v, w) in [
            (&got.without, &want["without_prefix"][k]),
            (&got.with, &want["with_prefix"]["ascending"][k]),
        ] {
            for (d, j) in [(d1, 0), (d2, 1)] {
                worst = worst.max((v[d] as f64 - w[j].as_f64().unwrap()).abs());
            }
        }
    }
    assert!(worst < 1e-5, "bias points against the reference: {worst:e}");
}

/// (d): the overview's "colour by" menu switches to a head metric; its grid is each head's mean row
/// entropy, recomputed here from the with-prefix pattern.
#[test]
fn overview_coloured_by_attention_entropy() {
    let dir = temp_dir("gui-plots-d");
    let mut h = opened(&dir);
    assert_eq!(h.state().overview.metric, HeadMetric::Deviation);
    // Closed again: the overview keeps its colourings (they do not need the panel).
    h.get_by_label("plots").click();
    h.step();
    assert!(!h.state().plots.open);
    h.get_by_role_and_label(Role::ComboBox, "colour by").click();
    h.step();
    h.step();
    h.get_by_label("attention entropy (nats)").click();
    h.step();
    h.step();
    assert_eq!(h.state().overview.metric, HeadMetric::Entropy);
    let app = h.state();
    let shown = app.shown().unwrap();
    let (grid, fresh) = app.plots.overview_grid(HeadMetric::Entropy, shown);
    assert!(fresh);
    for lc in &shown.capture.layers {
        let w = lc.with_prefix.as_ref().unwrap();
        let (heads, n, cols) = (w.shape[0], w.shape[1], w.shape[2]);
        for hd in 0..heads {
            let mut total = 0f64;
            for i in 0..n {
                for j in 0..cols {
                    let a = w.data[(hd * n + i) * cols + j] as f64;
                    if a > 0.0 {
                        total -= a * a.ln();
                    }
                }
            }
            let want = total / n as f64;
            let got = grid[lc.layer][hd].unwrap() as f64;
            assert!(
                (got - want).abs() < 1e-5,
                "layer {} head {hd}: {got} against {want}",
                lc.layer
            );
        }
    }
    assert!(h
        .query_by_label_contains("selected layer 0 head 0, attention entropy (nats)")
        .is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An edit recomputes the plots (once its full answer arrives), and they follow the new capture.
#[test]
fn plots_follow_an_edit() {
    let dir = temp_dir("gui-plots-edit");
    let mut h = opened(&dir);
    let before_gen = h.state().shown().unwrap().gen;
    let before = h.state().plots.metrics.as_ref().unwrap().deviations[1]
        .all()
        .0;
    let bias_before = h.state().plots.bias.result.as_ref().unwrap().key;
    let d0 = h.state().editor.vector().unwrap()[0];
    h.get_by_role_and_label(Role::Slider, "d0")
        .set_value_accesskit((d0 + 1.5) as f64);
    h.step();
    step_until(&mut h, "the plots for the edited prefix", |a| {
        let shown = a.shown().unwrap();
        let b = &a.plots.bias;
        shown.gen > before_gen
            && shown.full
            && a.is_current()
            && a.plots.metrics_current(shown)
            && b.result.as_ref().is_some_and(|r| Some(r.key) == b.asked)
    });
    let app = h.state();
    let lc = app.shown().unwrap().capture.layer(1).unwrap();
    let after = app.plots.metrics.as_ref().unwrap().deviations[1].all().0;
    assert_eq!(after, lc.max_renorm_diff(None).unwrap());
    assert_ne!(after, before, "the edit moved layer 1");
    assert_ne!(app.plots.bias.result.as_ref().unwrap().key, bias_before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The plots' settings (panel open, the bias plot's position, prompts and dimensions, the overview's
/// colouring) are saved in the session file and restored by the next start, and the restored extra
/// prompt is run again (tokenized for the new session's model).
#[test]
fn plots_settings_survive_the_session() {
    let dir = temp_dir("gui-plots-session");
    let mut h = opened(&dir);
    h.get_by_role_and_label(Role::ComboBox, "colour by").click();
    h.run_steps(2);
    h.get_by_label("attention entropy (nats)").click();
    h.run_steps(2);
    type_into(
        &mut h,
        Role::MultilineTextInput,
        "bias plot prompts",
        "1 2 3 4",
    );
    {
        let b = &mut h.state_mut().plots.bias;
        b.from_end = 1;
        b.beginnings = false;
        b.auto_dims = false;
        b.dims = (3, 5);
    }
    h.state_mut().autosave();
    drop(h);
    let (model, _) = deep_toy();
    let opts = AppOptions {
        model: Some(model),
        session_dir: Some(dir.to_path_buf()),
        fresh: false,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    let app = h.state();
    assert!(app.plots.open, "the panel is open again");
    assert_eq!(app.overview.metric, HeadMetric::Entropy);
    let b = &app.plots.bias;
    assert_eq!(
        (
            b.from_end,
            b.beginnings,
            b.auto_dims,
            b.dims,
            b.extra.as_str()
        ),
        (1, false, false, (3, 5), "1 2 3 4")
    );
    step_until(&mut h, "the restored bias prompts' points", |a| {
        let b = &a.plots.bias;
        a.is_current() && b.result.as_ref().is_some_and(|r| Some(r.key) == b.asked)
    });
    let r = h.state().plots.bias.result.clone().unwrap();
    let labels: Vec<&str> = r.points.iter().map(|(p, _)| p.label.as_str()).collect();
    assert_eq!(
        labels,
        ["the prompt", "1 2 3 4"],
        "no beginnings, the extra prompt"
    );
    assert_eq!(r.points[1].0.ids.len(), 4);
    assert!(r.points[1].1.is_ok(), "{:?}", r.points[1].1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The overview's grid, its colour bar and the top of the plots panel (and of the A/B panel when A
/// is pinned), from egui's layout: `(cell height, colour bar bottom, first bottom panel top)`.
fn overview_layout(h: &egui_kittest::Harness<'static, PrefixScopeApp>) -> (f32, f32, f32) {
    let n_heads = h.state().model_info().unwrap().n_heads as f32;
    let grid = h.get_by_label_contains("overview of").rect();
    let bar = h.get_by_label_contains("overview colour bar").rect();
    let mut top = h.get_by_label("Deviation by layer").rect().top();
    if let Some(ab) = h.query_by_label_contains("A/B · layer") {
        top = top.min(ab.rect().top());
    }
    ((grid.height() - 16.0) / n_heads, bar.bottom(), top)
}

/// With the plots open (and with A pinned as well) the overview keeps rows of at least 10 px and
/// its colour bar stays above the bottom panels, at 1024 x 700 and 1280 x 800 (the plots panel used
/// to take its 300 px from the overview, whose rows shrank to 4 px and whose colour bar went under
/// the plots).
#[test]
fn overview_keeps_its_minimum_with_the_plots_open() {
    for size in [(1024.0, 700.0), (1280.0, 800.0)] {
        let dir = temp_dir("gui-plots-layout");
        let (model, prefix) = deep_toy();
        let opts = AppOptions {
            model: Some(model),
            prefix: Some(prefix),
            prefix_kind: Some(PrefixKind::Hidden),
            prompt: Some(PROMPT.into()),
            session_dir: Some(dir.to_path_buf()),
            fresh: true,
            ..Default::default()
        };
        let mut h = common::gui::harness_sized(PrefixScopeApp::new(None, opts), size);
        step_until(&mut h, "the full answer", |a| a.is_current());
        h.get_by_label("plots").click();
        h.run_steps(3);
        let (cell, bar, top) = overview_layout(&h);
        println!("{size:?} plots: cell {cell}, bar bottom {bar}, panel top {top}");
        assert!(cell >= 10.0, "{size:?}: overview rows {cell} px");
        assert!(
            bar <= top,
            "{size:?}: colour bar bottom {bar} under the plots at {top}"
        );
        h.state_mut().toggle_pin();
        step_until(&mut h, "the A/B panel", |a| a.ab.maps.is_some());
        h.run_steps(3);
        let (cell, bar, top) = overview_layout(&h);
        println!("{size:?} plots + A/B: cell {cell}, bar bottom {bar}, panel top {top}");
        assert!(cell >= 10.0, "{size:?}, A/B: overview rows {cell} px");
        assert!(
            bar <= top,
            "{size:?}, A/B: colour bar bottom {bar} under the panels at {top}"
        );
        let plots = h.get_by_label("Deviation by layer").rect();
        let ab = h.get_by_label_contains("A/B · layer").rect();
        println!("plots label {plots:?} ab label {ab:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
