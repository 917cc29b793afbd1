//! egui_kittest drives the real app (`PrefixScopeApp::show`, what `eframe::App::ui` draws) through its
//! accessibility tree: load a model, move a prefix slider by its label, open a corrupt file, and keep
//! using the window while a load runs.
//!
//! The toy tests open the bundled default model (the 1-layer sorter and its `descending` prefix);
//! the others use SmolLM2 (the GGUF test checkpoint, fetched by `.ci/fetch-smollm2.sh`, which
//! `.ci/run` runs) and print a notice and return when the cached file is absent, except under CI
//! (`CI` set, as `.ci/run` does), where its absence fails them.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, harness_sized, step_until, type_into};
use common::{repo_path, temp_dir};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use prefixscope::app::worker::Computed;
use prefixscope::app::{default_model, AppOptions, PrefixScopeApp};
use prefixscope::prefix::PrefixKind;
use std::path::PathBuf;

/// The cached SmolLM2, or a notice and `None` when it is absent (a failure under CI).
fn smollm2() -> Option<PathBuf> {
    common::smollm2_or_skip()
}

fn options(model: Option<PathBuf>, dir: &std::path::Path) -> AppOptions {
    AppOptions {
        model,
        prompt: Some("The cat sat on the mat because it was warm".into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    }
}

/// The app on its bundled default toy (no --model) with `prompt`, in a `size` window, once its first
/// views are on screen.
fn default_toy(
    dir: &std::path::Path,
    prompt: &str,
    size: (f32, f32),
) -> egui_kittest::Harness<'static, PrefixScopeApp> {
    let mut opts = options(None, dir);
    opts.prompt = Some(prompt.into());
    let mut h = harness_sized(PrefixScopeApp::new(None, opts), size);
    step_until(&mut h, "the toy's first views", |a| a.is_current());
    h
}

/// The largest change between two attention snapshots.
fn max_change(before: &[f32], after: &[f32]) -> f32 {
    assert_eq!(before.len(), after.len());
    before
        .iter()
        .zip(after)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// The paper's layer-0 claims as the Checks readout shows them: renormalized == pretrained, and the
/// head output is (1 - a) t + the prefix's value term.
fn assert_layer0_claims(c: &Computed) {
    let l0 = c.layer0_renorm_diff.expect("prefixed");
    assert!(
        l0 < 1e-5,
        "layer 0 renormalized differs from pretrained by {l0}"
    );
    assert!(c.layer0_identity_error.expect("prefixed") < 1e-4);
}

fn raw_layer0(app: &PrefixScopeApp) -> Vec<f32> {
    let c = app.shown().expect("a result on screen");
    c.capture
        .layer(0)
        .expect("layer 0")
        .with_prefix
        .as_ref()
        .expect("prefixed run")
        .data
        .clone()
}

fn mass_layer0(app: &PrefixScopeApp) -> Vec<f32> {
    let c = app.shown().expect("a result on screen");
    c.capture
        .layer(0)
        .expect("layer 0")
        .prefix_mass
        .as_ref()
        .expect("prefixed run")
        .data
        .clone()
}

#[test]
fn toy_default_model_slider_moves_raw_attention_and_layer0_renormalized_stays_pretrained() {
    let (model, prefix) = default_model().expect("the bundled toy sorter in models/");
    let dir = temp_dir("gui-toy");
    // No --model: the app opens its default, with the bundled prefix.
    let mut h = default_toy(
        &dir,
        "3 1 4 1 5 7 2 6 5 3 1 1 2 3 3 4 5 5 6",
        (1280.0, 800.0),
    );
    assert_eq!(h.state().model_path(), Some(model.as_path()));
    let c = h.state().shown().unwrap();
    assert_eq!(c.capture.token_ids.len(), 19);
    if prefix.is_some() {
        assert_eq!(
            h.state().editor.kind,
            PrefixKind::Hidden,
            "the bundled prefix is the paper's form"
        );
        assert!(
            h.state().editor.vector().unwrap().iter().any(|&x| x != 0.0),
            "the trained prefix is loaded"
        );
    }
    let before = raw_layer0(h.state());
    let mass_before = mass_layer0(h.state());
    let gen0 = c.gen;
    let d0 = h.state().editor.vector().unwrap()[0];
    let target = if d0 > 1.0 { d0 - 1.5 } else { d0 + 1.5 };

    h.get_by_role_and_label(Role::Slider, "d0")
        .set_value_accesskit(target as f64);
    h.step();
    assert!((h.state().editor.vector().unwrap()[0] - target).abs() < 1e-3);
    step_until(&mut h, "the views for the moved slider", |a| {
        a.is_current() && a.shown().is_some_and(|c| c.gen > gen0)
    });
    let moved = max_change(&before, &raw_layer0(h.state()));
    assert!(
        moved > 1e-3,
        "raw attention did not change (max change {moved})"
    );
    assert_layer0_claims(h.state().shown().unwrap());
    // The prefix mass moved too (it is what the prefix changes in layer 0), and its bars are drawn.
    let mass_moved = max_change(&mass_before, &mass_layer0(h.state()));
    assert!(
        mass_moved > 1e-3,
        "the layer-0 prefix mass did not change (max change {mass_moved})"
    );
    assert!(h
        .query_by_label_contains("raw, with prefix heatmap")
        .is_some());
    assert!(h.query_by_label_contains("prefix mass bars").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_soft_prompt_slider_keyboard_undo_and_session_restore() {
    let Some(model) = smollm2() else { return };
    let dir = temp_dir("gui-slider");
    let mut h = harness(PrefixScopeApp::new(None, options(Some(model), &dir)));
    step_until(&mut h, "the model and the first views", |a| a.is_current());
    let before = raw_layer0(h.state());
    let n_before = h.state().shown().map(|c| c.gen).unwrap_or(0);
    assert_eq!(
        h.state().shown().unwrap().capture.p,
        1,
        "default prefix P = 1"
    );

    // The slider of dimension 0, found by its accessible label, set like a screen reader would.
    h.get_by_role_and_label(Role::Slider, "d0")
        .set_value_accesskit(1.5);
    h.step();
    assert_eq!(h.state().editor.vector().map(|v| v[0]), Some(1.5));
    step_until(&mut h, "the views for the moved slider", |a| {
        a.is_current() && a.shown().is_some_and(|c| c.gen > n_before)
    });

    let moved = max_change(&before, &raw_layer0(h.state()));
    assert!(
        moved > 1e-4,
        "raw attention did not change (max change {moved})"
    );
    let c = h.state().shown().unwrap();
    assert_layer0_claims(c);
    // ...while a deeper layer does move.
    let deep = c
        .overview
        .iter()
        .skip(1)
        .flatten()
        .filter_map(|x| *x)
        .fold(0f32, f32::max);
    assert!(deep > 1e-4, "no deeper layer changed ({deep})");
    assert!(
        h.query_by_label_contains("layer 0: max |renorm − pretrained|")
            .is_some(),
        "checks readout on screen"
    );

    // Undo restores the previous prefix value.
    h.get_by_label("↶ undo").click();
    h.step();
    assert_eq!(h.state().editor.vector().map(|v| v[0]), Some(0.0));

    // Arrow keys move through layers and heads (no widget has the keyboard after a click elsewhere).
    h.state_mut().views.layer = 0;
    h.state_mut().views.head = 0;
    h.key_press(egui::Key::ArrowRight);
    h.key_press(egui::Key::ArrowDown);
    h.step();
    assert_eq!((h.state().views.layer, h.state().views.head), (1, 1));

    // The autosave writes the prefix and a fresh app on the same session restores it.
    h.get_by_role_and_label(Role::Slider, "d3")
        .set_value_accesskit(-0.75);
    h.step();
    h.state_mut().autosave();
    assert!(dir.join("autosave-prefix.npz").exists());
    let mut opts = options(None, &dir);
    opts.fresh = false;
    let mut h2 = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h2, "the restored session", |a| a.is_current());
    assert_eq!(h2.state().editor.vector().map(|v| v[3]), Some(-0.75));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_file_shows_the_library_message_and_keeps_the_model() {
    let model = default_model().map(|(m, _)| m);
    let dir = temp_dir("gui-corrupt");
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00this is not a real gguf file").unwrap();
    let mut h = harness(PrefixScopeApp::new(None, options(model.clone(), &dir)));
    step_until(&mut h, "the first model", |a| a.is_current());
    let before = h.state().model_path().map(|p| p.to_path_buf());

    // Type the path in the model path box (the fallback when no file dialog exists) and press Load.
    type_into(
        &mut h,
        Role::TextInput,
        "model path",
        &bad.display().to_string(),
    );
    assert_eq!(h.state().model_panel.path_text, bad.display().to_string());
    h.get_by_label("Load").click();
    h.step();
    assert!(h.state().is_loading() || h.state().load_error().is_some());
    step_until(&mut h, "the failed load", |a| !a.is_loading());

    let err = h.state().load_error().expect("an error").to_string();
    assert!(err.contains("broken.gguf") && err.contains("GGUF"), "{err}");
    assert!(
        h.query_by_label_contains("Load failed").is_some(),
        "the error is not shown in the window"
    );
    assert!(h
        .query_by_label_contains("broken.gguf: GGUF header")
        .is_some());
    assert_eq!(
        h.state().model_path().map(|p| p.to_path_buf()),
        before,
        "the previous model was not kept"
    );
    assert!(h.state().shown().is_some(), "the previous views are gone");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A copy of the small valid HF folder whose `config.json` is a named pipe: the loader blocks
/// opening it until the test opens the other end, so the load runs exactly as long as the test
/// wants (a gate, not a race with the clock).
struct GatedFolder {
    dir: PathBuf,
    config: Vec<u8>,
}

impl GatedFolder {
    fn new(parent: &std::path::Path) -> Self {
        let src = repo_path("tests/regressions/hostile-files/tiny-hf-folder-valid");
        let dir = parent.join("gated-model");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let st = std::process::Command::new("mkfifo")
            .arg(dir.join("config.json"))
            .status()
            .expect("run mkfifo");
        assert!(st.success(), "mkfifo failed");
        GatedFolder {
            dir,
            config: std::fs::read(src.join("config.json")).unwrap(),
        }
    }

    /// Open the gate: wait (polling, no assertion on time) until the loader has the pipe open for
    /// reading, then hand it the real config and close.
    fn open(&self) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("config.json");
        let t0 = std::time::Instant::now();
        let mut w = loop {
            // Non-blocking: fails (ENXIO) until a reader has the pipe open.
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) => {
                    assert!(
                        t0.elapsed().as_secs() < 120,
                        "the loader never opened {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        };
        w.write_all(&self.config).unwrap();
    }

    /// Replace the pipe by the real config (for a load that runs to the end).
    fn make_plain(&self) {
        let path = self.dir.join("config.json");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &self.config).unwrap();
    }
}

#[test]
fn window_keeps_responding_while_a_load_runs_and_cancel_works() {
    let dir = temp_dir("gui-responsive");
    let gate = GatedFolder::new(&dir);
    let mut h = harness(PrefixScopeApp::new(
        None,
        options(Some(gate.dir.clone()), &dir),
    ));
    h.step();
    assert!(
        h.state().is_loading(),
        "the load should run in the background"
    );
    // While it loads (held at the gate): frames run, the progress bar and Cancel are there, and the
    // prompt box takes typing.
    assert!(h.query_by_label_contains("Cancel").is_some());
    for _ in 0..5 {
        h.step();
    }
    type_into(
        &mut h,
        Role::MultilineTextInput,
        "prompt",
        "typed while loading",
    );
    assert_eq!(h.state().prompt.text, "typed while loading");
    assert!(h.state().is_loading(), "the gate is shut: still loading");
    assert!(h.state().model_info().is_none());
    // Cancel, then let the loader go on: it stops at its next step with a message, no model appears.
    h.get_by_label("Cancel").click();
    h.step();
    gate.open();
    step_until(&mut h, "the cancelled load", |a| !a.is_loading());
    assert!(h.state().model_info().is_none());
    assert!(
        h.state().load_error().unwrap_or("").contains("cancelled"),
        "{:?}",
        h.state().load_error()
    );

    // Load again to the end: the typed prompt is kept and tokenized.
    gate.make_plain();
    h.state_mut().open_model(gate.dir.clone());
    step_until(&mut h, "the model", |a| a.is_current());
    assert_eq!(h.state().model_info().map(|i| i.d_model), Some(64));
    assert_eq!(h.state().prompt.text, "typed while loading");
    assert!(h.state().prompt.ids.len() >= 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The "keep GGUF weights quantized" box: SmolLM2 loads quantized, and the views it draws still show
/// the paper's layer-0 identity to f32 precision (each weight is dequantized for its product).
#[test]
fn quantized_checkbox_loads_the_gguf_quantized() {
    let Some(gguf) = smollm2() else { return };
    let model = default_model().map(|(m, _)| m);
    let dir = temp_dir("gui-quantized");
    let mut h = harness(PrefixScopeApp::new(None, options(model, &dir)));
    step_until(&mut h, "the first model", |a| a.is_current());
    assert!(!h.state().model_panel.quantized);
    h.get_by_label("keep GGUF weights quantized").click();
    h.step();
    assert!(h.state().model_panel.quantized, "the box did not tick");
    type_into(
        &mut h,
        Role::TextInput,
        "model path",
        &gguf.display().to_string(),
    );
    h.get_by_label("Load").click();
    h.step();
    step_until(&mut h, "SmolLM2, quantized", |a| {
        !a.is_loading() && a.model_info().is_some_and(|i| i.n_layers == 30) && a.is_current()
    });
    let info = h.state().model_info().unwrap().clone();
    assert!(info.dtype.starts_with("quantized"), "{}", info.dtype);
    assert!(
        h.query_by_label_contains("quantized (").is_some(),
        "the model panel does not say quantized"
    );
    // The default soft prompt's layer 0: renormalized equals pretrained.
    step_until(&mut h, "the soft-prompt views", |a| {
        a.is_current() && a.shown().is_some_and(|c| c.layer0_renorm_diff.is_some())
    });
    assert_layer0_claims(h.state().shown().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The heatmap node whose accessible label starts with `title`.
fn heatmap_rect(h: &egui_kittest::Harness<'_, PrefixScopeApp>, title: &str) -> egui::Rect {
    h.get_by(|n| {
        n.role() == Role::Image
            && n.label()
                .is_some_and(|l| l.starts_with(&format!("{title} heatmap")))
    })
    .rect()
}

#[test]
fn maps_go_in_a_grid_when_the_window_is_tall_and_in_a_row_otherwise() {
    for (size, grid) in [((1920.0, 700.0), false), ((1280.0, 1300.0), true)] {
        let dir = temp_dir("gui-grid");
        let mut h = default_toy(&dir, "3 1 4 1 5 7 2 6 5 3 1 1 2 3 3 4 5 5 6", size);
        h.run_steps(2);
        let raw = heatmap_rect(&h, "raw, with prefix");
        let renorm = heatmap_rect(&h, "renormalized over content");
        let pre = heatmap_rect(&h, "pretrained (no prefix)");
        let diff = heatmap_rect(&h, "renormalized − pretrained");
        if grid {
            // raw | renormalized over pretrained | difference, with bigger cells than in a row.
            assert!(
                pre.top() > raw.bottom() && diff.top() > renorm.bottom(),
                "{raw:?} {pre:?}"
            );
            assert!(
                (pre.left() - raw.left()).abs() < 1.0 && (diff.left() - renorm.left()).abs() < 1.0
            );
            assert!(
                pre.width() > 19.0 * 13.0,
                "cells of {} px",
                pre.width() / 19.0
            );
        } else {
            for r in [renorm, pre, diff] {
                assert!((r.top() - raw.top()).abs() < 1.0, "one row: {raw:?} {r:?}");
            }
            assert!(raw.right() < renorm.left() && pre.right() < diff.left());
        }
        // Nothing overlaps and every map is a square cell grid of 19 query rows.
        for (a, b) in [(raw, renorm), (renorm, pre), (pre, diff), (raw, diff)] {
            assert!(!a.intersects(b), "{a:?} overlaps {b:?}");
        }
        assert!((diff.width() - diff.height()).abs() < 1.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn prefix_saved_and_loaded_through_the_path_box() {
    let dir = temp_dir("gui-prefix-file");
    let mut h = default_toy(&dir, "3 1 4 1 5 7 2 6 5 3", (1280.0, 800.0));
    let saved = h.state().editor.vector().expect("a prefix").to_vec();
    let file = dir.join("kept.npz");

    // Save: the typed path, no dialog.
    type_into(
        &mut h,
        Role::TextInput,
        "prefix file",
        &file.display().to_string(),
    );
    h.get_by_label("save prefix…").click();
    h.step();
    assert!(file.exists(), "no file written");
    let msg = h.state().editor.message.clone().expect("a message");
    assert_eq!(msg, (false, format!("saved {}", file.display())));

    // Edit, then load the file back: the saved vector returns.
    let d0 = saved[0];
    h.get_by_role_and_label(Role::Slider, "d0")
        .set_value_accesskit((d0 + 1.0) as f64);
    h.step();
    assert_ne!(h.state().editor.vector().unwrap()[0], d0);
    h.get_by_label("load prefix…").click();
    h.step();
    assert_eq!(h.state().editor.vector().unwrap(), saved.as_slice());
    assert!(!h.state().editor.message.as_ref().unwrap().0);

    // A path that is not there: an error that names it, and the prefix stays.
    let missing = dir.join("missing.npz");
    type_into(
        &mut h,
        Role::TextInput,
        "prefix file",
        &missing.display().to_string(),
    );
    h.get_by_label("load prefix…").click();
    h.step();
    let (is_err, text) = h.state().editor.message.clone().unwrap();
    assert!(is_err && text.contains("missing.npz"), "{text}");
    assert_eq!(h.state().editor.vector().unwrap(), saved.as_slice());
    let _ = std::fs::remove_dir_all(&dir);
}
