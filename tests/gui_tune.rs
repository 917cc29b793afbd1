//! The Tune panel drives a real tuning run in the app (egui_kittest through the accessibility tree):
//! on the bundled toy, Start fills the loss history while the window keeps drawing, the editor's
//! prefix changes as the run reports it, Pause holds the step count, Stop ends the run, and one undo
//! takes the whole run back.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until, step_until_within, type_into};
use common::temp_dir;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use std::time::Duration;

#[test]
fn a_short_tune_on_the_toy_fills_the_loss_plot_and_changes_the_prefix() {
    let dir = temp_dir("gui-tune");
    let opts = AppOptions {
        prompt: Some("3 1 4 1 5".into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "the toy's first views", |a| a.is_current());
    let before = h.state().editor.prefix.clone().expect("the bundled prefix");

    h.get_by_label("Tune").click();
    h.step();
    type_into(&mut h, Role::TextInput, "tune target", "1 1 3");
    h.state_mut().tune.steps = 100_000;
    h.state_mut().tune.lr = 0.05;
    h.get_by_label("Start").click();
    h.step();
    step_until_within(&mut h, "ten tuning steps", Duration::from_secs(120), |a| {
        a.tune.history().len() >= 10
    });
    assert!(h.state().tune.is_running());
    step_until_within(
        &mut h,
        "a tuned prefix in the editor",
        Duration::from_secs(60),
        |a| a.editor.prefix.as_ref() != Some(&before),
    );
    // The views redraw from the prefix being tuned, and layer 0's check holds while the loss falls.
    step_until_within(
        &mut h,
        "views of the tuned prefix",
        Duration::from_secs(60),
        |a| a.shown().is_some_and(|c| c.capture.p == 4),
    );
    let c = h.state().shown().unwrap();
    let d0 = c
        .layer0_renorm_diff
        .expect("a prefixed run has the layer-0 check");
    assert!(
        d0 < 1e-5,
        "layer 0 max |renormalized - pretrained| = {d0:e} while tuning"
    );
    // The window keeps drawing while the run trains on its own thread.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = std::time::Instant::now();
        h.step();
        worst = worst.max(t.elapsed());
    }
    eprintln!("slowest of 10 frames while tuning: {worst:?}");
    let tuned = h.state().editor.prefix.clone().unwrap();
    assert_eq!(tuned.kind(), prefixscope::prefix::PrefixKind::SoftPrompt);
    assert_eq!(tuned.len(), 4);

    // Pause: the step count holds (within the step under way).
    h.get_by_label("Pause").click();
    h.step();
    std::thread::sleep(Duration::from_millis(300));
    h.step();
    let held = h.state().tune.history().len();
    std::thread::sleep(Duration::from_millis(500));
    h.step();
    assert!(
        h.state().tune.history().len() <= held + 1,
        "paused run kept stepping"
    );
    h.get_by_label("Resume").click();
    h.step();

    h.get_by_label("Stop").click();
    step_until_within(&mut h, "the run to stop", Duration::from_secs(30), |a| {
        !a.tune.is_running()
    });
    let hist = h.state().tune.history();
    assert!(hist.len() < 100_000, "Stop ended the run early");
    let (first, last) = (hist[0], *hist.last().unwrap());
    assert!(
        last.loss < first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    let end = h.state().editor.prefix.clone().unwrap();
    assert_ne!(end, before);

    // Save as a prefix file; a path the panel did not write is not replaced.
    let file = dir.join("tuned.npz");
    type_into(
        &mut h,
        Role::TextInput,
        "tune save path",
        file.to_str().unwrap(),
    );
    h.get_by_label("Save").click();
    h.step();
    let saved =
        prefixscope::prefix::Prefix::load(&file, prefixscope::prefix::PrefixKind::SoftPrompt)
            .expect("the saved prefix");
    assert_eq!(saved, end);
    let other = dir.join("other.npz");
    std::fs::write(&other, b"not mine").unwrap();
    type_into(
        &mut h,
        Role::TextInput,
        "tune save path",
        other.to_str().unwrap(),
    );
    h.get_by_label("Save").click();
    h.step();
    assert!(h.state().tune.status().is_some_and(|(err, _)| *err));
    assert_eq!(std::fs::read(&other).unwrap(), b"not mine");

    // One undo takes the whole run back.
    assert!(h.state().editor.can_undo());
    h.state_mut().editor.undo();
    h.step();
    assert_eq!(h.state().editor.prefix.as_ref(), Some(&before));
}
