//! egui_kittest drives the real app (`PrefixScopeApp::show`) into Construction mode: type a target
//! and see it generated, move one virtual-token slider by its accessible label and see the text and
//! the attention views change, and see the library's message for targets it refuses.
//! Needs no checkpoint: the construction is built in the library.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until_within, type_into};
use common::temp_dir;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use prefixscope::construct::{char_id, UNCONDITIONAL_N, V};
use std::time::Duration;

/// The construction is small: two minutes is ample.
fn step_until(
    h: &mut Harness<'_, PrefixScopeApp>,
    what: &str,
    done: impl Fn(&PrefixScopeApp) -> bool,
) {
    step_until_within(h, what, Duration::from_secs(120), done)
}

fn ids(s: &str) -> Vec<u32> {
    s.chars().map(|c| char_id(c).expect("printable")).collect()
}

/// Type `text` into the target box like a user would (focus, then the text value).
fn type_target(h: &mut Harness<'_, PrefixScopeApp>, text: &str) {
    type_into(h, Role::TextInput, "target", text);
}

/// The views answer the construction: P = 1 virtual token, content = the characters the model read
/// while generating (all but the last generated one).
fn views_show(app: &PrefixScopeApp, generated: &str) -> bool {
    let Some(c) = app.shown() else { return false };
    let n = generated.chars().count();
    app.is_current() && c.capture.p == 1 && c.capture.token_ids == ids(&generated[..n - 1])
}

#[test]
fn construction_mode_generates_the_target_and_sliders_drive_it() {
    let dir = temp_dir("gui-construction-mode");
    let opts = AppOptions {
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    // Let the default model (when it is shipped) finish loading first: Explore mode is the start.
    step_until(&mut h, "the start-up load", |a| !a.is_loading());
    let explored = h.state().model_path().map(|p| p.to_path_buf());

    // Enter Construction mode: the construction becomes the window's model.
    h.get_by_label("Construction").click();
    h.step();
    assert!(h.state().construction.active);
    let default = h.state().construction.generated().to_string();
    step_until(&mut h, "the construction model and its views", |a| {
        views_show(a, &default)
    });
    // Idle frames change nothing (no edit, no new request, no busy loop).
    let v0 = h.state().editor.version;
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(
        h.state().editor.version,
        v0,
        "the prefix changed on idle frames"
    );
    let info = h.state().model_info().expect("a model").clone();
    assert_eq!(info.arch, prefixscope::model::Arch::Construction);
    assert_eq!((info.n_layers, info.n_heads), (1, 2));

    // Type a target: the generated text is the target, on screen too.
    let target = "Prefixes steer heads";
    assert_eq!(target.len(), UNCONDITIONAL_N);
    type_target(&mut h, target);
    assert_eq!(h.state().construction.target, target);
    assert_eq!(h.state().construction.generated(), target);
    assert!(h.state().construction.margin() > 0.0);
    assert!(
        h.query_by_label(target).is_some(),
        "generated text on screen"
    );
    assert!(h.query_by_label("= the target").is_some());
    // Each content coordinate is id(s_i)/V.
    let coords = h.state().construction.coordinates().to_vec();
    assert_eq!(coords.len(), UNCONDITIONAL_N);
    assert!((coords[3] - char_id('f').unwrap() as f32 / V as f32).abs() < 1e-6);

    // The attention views show the construction: head "pos" attends each position to itself, head
    // "first" attends every position to the virtual token.
    step_until(&mut h, "the views for the typed target", |a| {
        views_show(a, target)
    });
    {
        let c = h.state().shown().unwrap();
        let l0 = c.capture.layer(0).expect("layer 0");
        let a = l0.with_prefix.as_ref().expect("prefixed pattern");
        let (hh, n, cols) = (a.shape[0], a.shape[1], a.shape[2]);
        assert_eq!((hh, n, cols), (2, UNCONDITIONAL_N - 1, UNCONDITIONAL_N));
        for i in 0..n {
            let pos_self = a.data[i * cols + 1 + i];
            let first_vt = a.data[(n + i) * cols];
            assert!(pos_self > 0.99, "head pos, query {i}: {pos_self}");
            assert!(first_vt > 0.99, "head first, query {i}: {first_vt}");
        }
    }

    // Move the slider of coordinate 3 (character 4) to 'Z': only that character changes, live.
    let z = char_id('Z').unwrap() as f64 / V as f64;
    h.get_by_role_and_label(Role::Slider, "x3")
        .set_value_accesskit(z);
    h.step();
    h.step();
    let moved = h.state().construction.generated().to_string();
    assert_ne!(
        moved, target,
        "the slider did not change the generated text"
    );
    assert_eq!(moved, "PreZixes steer heads");
    assert!(h.query_by_label("PreZixes steer heads").is_some());
    assert!(h.query_by_label("≠ the target").is_some());
    step_until(&mut h, "the views for the moved slider", |a| {
        views_show(a, "PreZixes steer heads")
    });

    // A shorter target is padded with spaces (id 0 = coordinate 0).
    type_target(&mut h, "Hi!");
    assert_eq!(
        h.state().construction.generated(),
        format!("{:<1$}", "Hi!", UNCONDITIONAL_N)
    );

    // Bad targets: the library's one-line message in the panel, the last good token kept.
    type_target(&mut h, "naïve");
    let err = h
        .state()
        .construction
        .error()
        .expect("an error")
        .to_string();
    assert!(err.contains("target character 3"), "{err}");
    assert!(h.query_by_label_contains("target character 3").is_some());
    assert_eq!(
        h.state().construction.generated(),
        format!("{:<1$}", "Hi!", UNCONDITIONAL_N)
    );
    type_target(&mut h, "this target is far too long for N");
    let err = h
        .state()
        .construction
        .error()
        .expect("an error")
        .to_string();
    assert!(err.contains("at most 20 characters"), "{err}");
    assert!(h.query_by_label_contains("at most 20 characters").is_some());

    // Back to Explore mode: the panel goes away.
    h.get_by_label("Explore").click();
    h.step();
    assert!(!h.state().construction.active);
    assert!(h.query_by_label("target").is_none());
    // ...and the model shown before comes back.
    if let Some(p) = explored {
        step_until(&mut h, "the previous model", |a| !a.is_loading());
        assert_eq!(h.state().model_path(), Some(p.as_path()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
