//! egui_kittest drives the real app (`PrefixScopeApp::show`, what `eframe::App::ui` draws) through its
//! accessibility tree: load a model, move a prefix slider by its label, open a corrupt file, and keep
//! using the window while a load runs.
//!
//! The toy tests open the bundled default model (the 1-layer sorter and its `descending` prefix);
//! the others use SmolLM2 (the GGUF test checkpoint, fetched by `.ci/fetch-smollm2.sh`, which
//! `.ci/run` runs) and print a notice and return when the cached file is absent.

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use prefixscope::app::{default_model, AppOptions, PrefixScopeApp};
use prefixscope::prefix::PrefixKind;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("PREFIXSCOPE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("prefixscope"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/prefixscope"))
        })?;
    let p = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (run .ci/fetch-smollm2.sh; .ci/run does)",
            p.display()
        );
        None
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prefixscope-gui-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
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

fn harness(app: PrefixScopeApp) -> Harness<'static, PrefixScopeApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(|ui, app: &mut PrefixScopeApp| app.show(ui), app)
}

/// Step frames until `done` holds (the worker runs on its own threads meanwhile).
fn step_until(
    h: &mut Harness<'_, PrefixScopeApp>,
    what: &str,
    done: impl Fn(&PrefixScopeApp) -> bool,
) {
    let t0 = Instant::now();
    while !done(h.state()) {
        let app = h.state();
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what} (compute error {:?}, load error {:?}, shown full {:?})",
            app.compute_error(),
            app.load_error(),
            app.shown().map(|c| (c.gen, c.full))
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
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

#[test]
fn toy_default_model_slider_moves_raw_attention_and_layer0_renormalized_stays_pretrained() {
    let (model, prefix) = default_model().expect("the bundled toy sorter in models/");
    let dir = temp_dir("toy");
    // No --model: the app opens its default, with the bundled prefix.
    let mut opts = options(None, &dir);
    opts.prompt = Some("3 1 4 1 5 7 2 6 5 3 1 1 2 3 3 4 5 5 6".into());
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "the toy's first views", |a| a.is_current());
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
    let after = raw_layer0(h.state());
    let moved = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "raw attention did not change (max change {moved})"
    );
    let c = h.state().shown().unwrap();
    let l0 = c.layer0_renorm_diff.expect("prefixed");
    assert!(
        l0 < 1e-5,
        "layer 0 renormalized differs from pretrained by {l0}"
    );
    assert!(c.layer0_identity_error.unwrap() < 1e-4);
    // The prefix mass moved too (it is what the prefix changes in layer 0).
    assert!(h
        .query_by_label_contains("raw, with prefix heatmap")
        .is_some());
    assert!(h.query_by_label_contains("prefix mass bars").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_soft_prompt_slider_keyboard_undo_and_session_restore() {
    let Some(model) = smollm2() else { return };
    let dir = temp_dir("slider");
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

    let after = raw_layer0(h.state());
    assert_eq!(before.len(), after.len());
    let moved = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-4,
        "raw attention did not change (max change {moved})"
    );
    let c = h.state().shown().unwrap();
    // The paper's claim, as shown in the Checks readout: layer 0 renormalized == pretrained.
    let l0 = c.layer0_renorm_diff.expect("prefixed");
    assert!(
        l0 < 1e-5,
        "layer 0 renormalized differs from pretrained by {l0}"
    );
    assert!(c.layer0_identity_error.unwrap() < 1e-4);
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
    let dir = temp_dir("corrupt");
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00this is not a real gguf file").unwrap();
    let mut h = harness(PrefixScopeApp::new(None, options(model.clone(), &dir)));
    step_until(&mut h, "the first model", |a| a.is_current());
    let before = h.state().model_path().map(|p| p.to_path_buf());

    // Type the path in the model path box (the fallback when no file dialog exists) and press Load.
    h.get_by_role_and_label(Role::TextInput, "model path")
        .focus();
    h.step();
    h.get_by_role_and_label(Role::TextInput, "model path")
        .set_text_value_accesskit(&bad.display().to_string());
    h.step();
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

#[test]
fn window_keeps_responding_while_a_load_runs_and_cancel_works() {
    let Some(model) = smollm2() else { return };
    let dir = temp_dir("responsive");
    let mut h = harness(PrefixScopeApp::new(
        None,
        options(Some(model.clone()), &dir),
    ));
    h.step();
    assert!(
        h.state().is_loading(),
        "the load should run in the background"
    );
    // While it loads: the progress bar and Cancel are there, and the prompt box takes typing.
    assert!(h.query_by_label_contains("Cancel").is_some());
    let frames_before = Instant::now();
    for _ in 0..5 {
        h.step();
    }
    h.get_by_role_and_label(Role::MultilineTextInput, "prompt")
        .focus();
    h.step();
    h.get_by_role_and_label(Role::MultilineTextInput, "prompt")
        .set_text_value_accesskit("typed while loading");
    h.step();
    assert_eq!(h.state().prompt.text, "typed while loading");
    assert!(
        h.state().is_loading(),
        "the load finished within {:?}: the UI did not get to run alongside it",
        frames_before.elapsed()
    );
    // Cancel: the load stops with a message and no model appears.
    h.get_by_label("Cancel").click();
    step_until(&mut h, "the cancelled load", |a| !a.is_loading());
    assert!(h.state().model_info().is_none());
    assert!(h.state().load_error().unwrap_or("").contains("cancelled"));

    // Load again to the end: the typed prompt is kept and tokenized.
    h.state_mut().open_model(model);
    step_until(&mut h, "the model", |a| a.is_current());
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
    let dir = temp_dir("quantized");
    let mut h = harness(PrefixScopeApp::new(None, options(model, &dir)));
    step_until(&mut h, "the first model", |a| a.is_current());
    assert!(!h.state().model_panel.quantized);
    h.get_by_label("keep GGUF weights quantized").click();
    h.step();
    assert!(h.state().model_panel.quantized, "the box did not tick");
    h.get_by_role_and_label(Role::TextInput, "model path")
        .focus();
    h.step();
    h.get_by_role_and_label(Role::TextInput, "model path")
        .set_text_value_accesskit(&gguf.display().to_string());
    h.step();
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
    let d = h.state().shown().unwrap().layer0_renorm_diff.unwrap();
    assert!(d < 1e-5, "layer-0 renormalized - pretrained = {d:e}");
    let _ = std::fs::remove_dir_all(&dir);
}
