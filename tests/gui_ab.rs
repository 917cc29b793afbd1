//! The A/B panel (issue 19, the last "What to build" item), driven through the real app with
//! egui_kittest on the bundled 4-layer toy (`models/deep-4l4h128`) and its trained `ascending`
//! prefix: pin the prefix as A, edit B, read B − A off the panel's hover readout. Expected values
//! come from two independent `capture::capture` runs (the plain whole-model path, not the app's
//! incremental evaluator), never from the panel's own code.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until, type_into};
use common::{repo_path, temp_dir};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use prefixscope::capture::capture;
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};
use std::path::{Path, PathBuf};

const PROMPT: &str = "3 1 4 1 5 7 2 6 5 3";
const LAYER: usize = 1;
const HEAD: usize = 2;

fn deep_toy() -> (PathBuf, PathBuf) {
    let dir = repo_path("models/deep-4l4h128");
    (
        dir.join("random.safetensors"),
        dir.join("prefix-ascending.safetensors"),
    )
}

fn options(dir: &Path, fresh: bool) -> AppOptions {
    let (model, prefix) = deep_toy();
    AppOptions {
        model: Some(model),
        prefix: fresh.then_some(prefix),
        prefix_kind: Some(PrefixKind::Hidden),
        prompt: fresh.then(|| PROMPT.to_string()),
        session_dir: Some(dir.to_path_buf()),
        fresh,
        ..Default::default()
    }
}

/// Whether the panel shows a difference for B's answer on screen, complete.
fn ab_ready(a: &PrefixScopeApp) -> bool {
    a.is_current()
        && a.ab.maps.is_some()
        && a.ab
            .answer
            .as_ref()
            .zip(a.shown())
            .is_some_and(|(x, b)| x.capture.token_ids == b.capture.token_ids)
}

/// The app with the trained prefix pinned as A and B edited (two dimensions of layer 0's first
/// prefix vector moved), viewing (LAYER, HEAD), the panel filled.
fn pinned_and_edited(dir: &Path) -> (Harness<'static, PrefixScopeApp>, Prefix) {
    let mut h = harness(PrefixScopeApp::new(None, options(dir, true)));
    step_until(&mut h, "the first complete views", |a| a.is_current());
    {
        let v = &mut h.state_mut().views;
        v.layer = LAYER;
        v.head = HEAD;
        // The overview off: room for the panel in the 1280 x 800 window.
        v.overview = false;
    }
    let a = h.state().editor.prefix.clone().unwrap();
    assert!(h.query_by_label_contains("A/B").is_none(), "no panel yet");
    h.get_by_label("pin as A").click();
    h.step();
    assert!(h.state().ab.pinned.is_some(), "the button pins");
    // Edit B like the sliders do.
    let ed = &mut h.state_mut().editor;
    ed.layer = 0;
    ed.token = 0;
    let v0 = ed.vector().unwrap()[0];
    let v1 = ed.vector().unwrap()[1];
    ed.set_dim(0, v0 + 1.5, None);
    ed.set_dim(1, v1 - 1.0, None);
    step_until(&mut h, "A and B on screen", ab_ready);
    (h, a)
}

/// B − A at head `HEAD`, query `r`, content key `j` of `layer`: (raw, renormalized), from two
/// whole-model captures.
fn independent(
    ids: &[u32],
    a: &Prefix,
    b: &Prefix,
    layer: usize,
    r: usize,
    j: usize,
) -> (f32, f32) {
    let loaded = prefixscope::load::load(&deep_toy().0).unwrap();
    let sel = LayerSel::Only(vec![layer]);
    let ca = capture(loaded.model.as_ref(), ids, Some(a), &sel).unwrap();
    let cb = capture(loaded.model.as_ref(), ids, Some(b), &sel).unwrap();
    let (la, lb) = (ca.layer(layer).unwrap(), cb.layer(layer).unwrap());
    let n = ids.len();
    let (pa, pb) = (a.len(), b.len());
    let raw = |lc: &prefixscope::capture::LayerCapture, p: usize| {
        lc.with_prefix.as_ref().unwrap().data[(HEAD * n + r) * (p + n) + p + j]
    };
    let ren = |lc: &prefixscope::capture::LayerCapture| {
        lc.renormalized.as_ref().unwrap().data[(HEAD * n + r) * n + j]
    };
    (raw(lb, pb) - raw(la, pa), ren(lb) - ren(la))
}

/// The number after `what` in the readout.
fn number_after(text: &str, what: &str) -> f32 {
    let rest = &text[text
        .find(what)
        .unwrap_or_else(|| panic!("{what} in {text}"))
        + what.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// Hover cell (`r`, `j`) of the renormalized difference map; the readout line.
fn hover_cell(h: &mut Harness<'static, PrefixScopeApp>, r: usize, j: usize) -> String {
    let n = h.state().shown().unwrap().capture.token_ids.len();
    let rect = h
        .get_by_label_contains("A/B renormalized over content: B − A heatmap")
        .rect();
    let cell = rect.width() / n as f32;
    h.hover_at(egui::pos2(
        rect.left() + (j as f32 + 0.5) * cell,
        rect.top() + (r as f32 + 0.5) * cell,
    ));
    h.run_steps(2);
    let hov = h.state().ab.hovered.clone().expect("a hovered cell");
    assert_eq!((hov.row, hov.key), (r, Some(j)));
    assert!(
        h.query_by_label_contains(&hov.text).is_some(),
        "the readout is on screen"
    );
    hov.text
}

#[test]
fn hovered_difference_is_b_minus_a_of_two_captures() {
    let dir = temp_dir("gui-ab-hover");
    let (mut h, a) = pinned_and_edited(&dir);
    let b = h.state().editor.prefix.clone().unwrap();
    assert_ne!(a, b, "B was edited");
    assert_eq!(h.state().ab.pinned.as_ref().unwrap().prefix, a, "A stays");
    // What A is, in words.
    assert!(h
        .query_by_label_contains("A: per-layer prefix (paper), P = ")
        .is_some());
    assert!(h.query_by_label_contains("A/B colour bar: B − A").is_some());
    let max_abs = h.state().ab.maps.as_ref().unwrap().max_abs;
    assert!(h
        .query_by_label_contains(&format!("max |B − A| = {max_abs:.2e}"))
        .is_some());
    let ids = h.state().shown().unwrap().capture.token_ids.clone();
    let (r, j) = (ids.len() - 1, 2);
    let text = hover_cell(&mut h, r, j);
    let (want_raw, want_ren) = independent(&ids, &a, &b, LAYER, r, j);
    let (got_raw, got_ren) = (
        number_after(&text, "B−A raw "),
        number_after(&text, "B−A renormalized "),
    );
    assert!(
        (got_raw - want_raw).abs() < 1e-6 && (got_ren - want_ren).abs() < 1e-6,
        "{text}: want raw {want_raw:e}, renormalized {want_ren:e}"
    );
    assert!(
        want_ren.abs() > 1e-4,
        "the edit changes the cell ({want_ren:e})"
    );
    // A masked cell says so.
    let text = hover_cell(&mut h, 0, 3);
    assert!(text.contains("masked"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// B with another prefix length than A: the raw maps share only their content keys, the panel says
/// so, and the hovered values are still B − A of two captures.
#[test]
fn different_lengths_compare_the_content_keys() {
    let dir = temp_dir("gui-ab-lengths");
    let (mut h, a) = pinned_and_edited(&dir);
    let info = h.state().model_info().unwrap().clone();
    h.state_mut().editor.set_len(a.len() - 3, &info);
    step_until(&mut h, "B with a shorter prefix", |app| {
        ab_ready(app) && app.ab.maps.as_ref().is_some_and(|m| m.raw_p == 0)
    });
    let b = h.state().editor.prefix.clone().unwrap();
    assert_eq!(b.len(), a.len() - 3);
    assert!(h.query_by_label_contains("content keys only").is_some());
    let ids = h.state().shown().unwrap().capture.token_ids.clone();
    let (r, j) = (ids.len() - 2, 4);
    let text = hover_cell(&mut h, r, j);
    let (want_raw, want_ren) = independent(&ids, &a, &b, LAYER, r, j);
    let (got_raw, got_ren) = (
        number_after(&text, "B−A raw "),
        number_after(&text, "B−A renormalized "),
    );
    assert!(
        (got_raw - want_raw).abs() < 1e-6 && (got_ren - want_ren).abs() < 1e-6,
        "{text}: want raw {want_raw:e}, renormalized {want_ren:e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_is_recomputed_for_a_new_prompt_never_stale() {
    let dir = temp_dir("gui-ab-prompt");
    let (mut h, a) = pinned_and_edited(&dir);
    let old_ids = h.state().shown().unwrap().capture.token_ids.clone();
    type_into(&mut h, Role::MultilineTextInput, "prompt", "7 7 2 9 1 0 4");
    let t0 = std::time::Instant::now();
    loop {
        let app = h.state();
        // Never a difference between answers for different tokens.
        if let (Some(_), Some(ans), Some(b)) = (&app.ab.maps, &app.ab.answer, app.shown()) {
            assert_eq!(ans.capture.token_ids, b.capture.token_ids, "a stale A");
        }
        if ab_ready(app) && app.shown().unwrap().capture.token_ids != old_ids {
            break;
        }
        assert!(t0.elapsed().as_secs() < 180, "A for the new prompt");
        h.step();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    h.step();
    let app = h.state();
    let ids = app.shown().unwrap().capture.token_ids.clone();
    assert_eq!(ids.len(), 7);
    // A's maps are a capture of A on the new prompt.
    let loaded = prefixscope::load::load(&deep_toy().0).unwrap();
    let want = capture(
        loaded.model.as_ref(),
        &ids,
        Some(&a),
        &LayerSel::Only(vec![LAYER]),
    )
    .unwrap();
    let got = app
        .ab
        .answer
        .as_ref()
        .unwrap()
        .capture
        .layer(LAYER)
        .unwrap();
    let w = want.layer(LAYER).unwrap();
    for (x, y) in [
        (got.with_prefix.as_ref(), w.with_prefix.as_ref()),
        (got.renormalized.as_ref(), w.renormalized.as_ref()),
    ] {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.shape, y.shape);
        let d = common::max_abs_diff(&x.data, &y.data);
        assert!(d < 1e-6, "A's maps against a capture: {d:e}");
    }
    assert_eq!(app.ab.pinned.as_ref().unwrap().prefix, a, "A stays pinned");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unpin_removes_the_panel_and_a_model_a_does_not_fit_says_why() {
    let dir = temp_dir("gui-ab-unpin");
    let (mut h, _) = pinned_and_edited(&dir);
    assert!(h.query_by_label_contains("A/B renormalized").is_some());
    h.get_by_label("unpin A").click();
    h.run_steps(2);
    assert!(h.state().ab.pinned.is_none());
    assert!(
        h.query_by_label_contains("A/B").is_none(),
        "the panel is gone"
    );
    assert!(h.query_by_label("pin as A").is_some());

    // Pin again, then open a model of another width: A no longer fits, and the panel says why.
    h.get_by_label("pin as A").click();
    h.step();
    let other = repo_path("models/mix-1l4h256/random.safetensors");
    h.state_mut().open_model(other);
    step_until(&mut h, "the other model's views", |a| {
        a.model_info().is_some_and(|i| i.d_model == 256) && a.is_current()
    });
    h.run_steps(2);
    let err = h.state().ab.error.clone().expect("A does not fit");
    assert!(err.contains("does not fit this model"), "{err}");
    assert!(h
        .query_by_label_contains("does not fit this model")
        .is_some());
    assert!(h.state().ab.maps.is_none(), "no stale difference");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn session_round_trip_keeps_a() {
    let dir = temp_dir("gui-ab-session");
    let (mut h, a) = pinned_and_edited(&dir);
    let meta = h.state().ab.pinned.as_ref().unwrap().meta.clone();
    h.state_mut().autosave();
    drop(h);
    let mut h = harness(PrefixScopeApp::new(None, options(&dir, false)));
    step_until(&mut h, "A restored and on screen", ab_ready);
    let pin = h.state().ab.pinned.as_ref().expect("A restored");
    assert_eq!(pin.prefix, a);
    assert_eq!(pin.meta, meta, "kind, length and pin time kept");
    assert!(h.query_by_label_contains(&meta.describe()).is_some());
    // Unpinned, the next start has no A.
    h.get_by_label("unpin A").click();
    h.step();
    h.state_mut().autosave();
    drop(h);
    let h = harness(PrefixScopeApp::new(None, options(&dir, false)));
    assert!(h.state().ab.pinned.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_uses_the_screen_colours() {
    let dir = temp_dir("gui-ab-export");
    let (mut h, _) = pinned_and_edited(&dir);
    let out = dir.join("ab.svg");
    type_into(
        &mut h,
        Role::TextInput,
        "A/B export path",
        &out.display().to_string(),
    );
    h.get_by_label("Export A/B").click();
    h.run_steps(2);
    let svg = std::fs::read_to_string(&out).expect("the figure");
    let maps = h.state().ab.maps.clone().unwrap();
    // Every drawn cell of the renormalized map has the screen's colour of its value.
    let n = maps.n;
    let mut checked = 0;
    for r in 0..n {
        for j in 0..=r {
            let v = maps.renorm[r * n + j];
            let c = prefixscope::app::ab::cell_colour(v, maps.limit);
            let hex = format!("#{:02x}{:02x}{:02x}", c.r(), c.g(), c.b());
            assert!(svg.contains(&hex), "cell ({r}, {j}) value {v:e}: {hex}");
            checked += 1;
        }
    }
    assert!(checked > 10);
    assert!(svg.contains("B − A"));
    let _ = std::fs::remove_dir_all(&dir);
}
