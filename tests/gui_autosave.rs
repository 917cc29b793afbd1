//! The session and the prefix autosave (egui_kittest, the bundled default toy: no download): the
//! timer, the save on exit, recovery in a new app, and what a corrupt or mismatched autosave or
//! session does (the app starts on defaults, never panics), and no temporary file left behind.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until};
use common::temp_dir;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use prefixscope::app::{default_model, AppOptions, PrefixScopeApp};
use std::path::{Path, PathBuf};

const PROMPT: &str = "3 1 4 1 5 7 2 6 5 3";

fn options(dir: &Path, fresh: bool) -> AppOptions {
    AppOptions {
        prompt: Some(PROMPT.into()),
        session_dir: Some(dir.to_path_buf()),
        fresh,
        ..Default::default()
    }
}

fn started(dir: &Path, fresh: bool) -> egui_kittest::Harness<'static, PrefixScopeApp> {
    let mut h = harness(PrefixScopeApp::new(None, options(dir, fresh)));
    step_until(&mut h, "the default toy's views", |a| a.is_current());
    h
}

/// The bundled prefix of the default model (what a fresh start shows).
fn bundled_first_value() -> f32 {
    let (_, prefix) = default_model().expect("the bundled toy in models/");
    let p = prefix.expect("the bundled prefix");
    let arrays = prefixscope::arrays::read_arrays(&p).unwrap();
    arrays.values().next().unwrap().data[0]
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn move_d0(h: &mut egui_kittest::Harness<'static, PrefixScopeApp>, to: f32) {
    h.get_by_role_and_label(Role::Slider, "d0")
        .set_value_accesskit(to as f64);
    h.step();
    assert_eq!(h.state().editor.vector().unwrap()[0], to);
}

#[test]
fn edits_are_saved_by_the_timer_and_on_exit_and_restored() {
    let dir = temp_dir("autosave-timer");
    let mut h = started(&dir, true);
    move_d0(&mut h, 1.25);
    // The timer: every 3 s of frames. After 3.2 s (a lower bound, not a race) a frame must save.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    h.step();
    assert!(
        dir.join("autosave-prefix.npz").exists(),
        "{:?}",
        names(&dir)
    );
    assert!(dir.join("session.json").exists());
    let mut h2 = started(&dir, false);
    assert_eq!(h2.state().editor.vector().unwrap()[0], 1.25, "timer save");
    // On exit: an edit made just before closing is kept without waiting for the timer.
    move_d0(&mut h2, -0.5);
    eframe::App::on_exit(h2.state_mut(), None);
    let h3 = started(&dir, false);
    assert_eq!(h3.state().editor.vector().unwrap()[0], -0.5, "save on exit");
    // Only the two files: no temporary file left by the atomic writes.
    assert_eq!(names(&dir), ["autosave-prefix.npz", "session.json"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_session_or_autosave_starts_on_defaults() {
    let bundled = bundled_first_value();
    let model: PathBuf = default_model().unwrap().0;
    let cases: [(&str, &[u8], &[u8]); 3] = [
        // A session file that is not JSON.
        ("session not JSON", b"{\"model_path\": ", b""),
        // A valid session pointing at an autosave that is not an npz.
        (
            "autosave not an npz",
            b"",
            b"PK\x03\x04 this is not a zip archive",
        ),
        // A valid session whose autosave is of another shape (a key/value prefix of a model with
        // other sizes), declared as the paper's form.
        ("autosave of another model", b"", b"kv"),
    ];
    for (what, session, autosave) in cases {
        let dir = temp_dir(&format!("autosave-corrupt-{}", what.replace(' ', "-")));
        let session_text = if session.is_empty() {
            serde_json::json!({
                "model_path": model,
                "autosave_model": model,
                "autosave_kind": "Hidden",
                "editor_token": 0,
                "editor_layer": 0,
            })
            .to_string()
            .into_bytes()
        } else {
            session.to_vec()
        };
        std::fs::write(dir.join("session.json"), session_text).unwrap();
        if autosave == b"kv" {
            let a = prefixscope::arrays::Array::zeros(&[3, 5, 2, 7]);
            prefixscope::prefix::Prefix::KeyValue {
                keys: a.clone(),
                values: a,
            }
            .save(&dir.join("autosave-prefix.npz"))
            .unwrap();
        } else if !autosave.is_empty() {
            std::fs::write(dir.join("autosave-prefix.npz"), autosave).unwrap();
        }
        let h = started(&dir, false);
        assert_eq!(
            h.state().model_path(),
            Some(model.as_path()),
            "{what}: the default model"
        );
        assert_eq!(
            h.state().editor.vector().unwrap()[0],
            bundled,
            "{what}: the bundled prefix, not the broken autosave"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_failed_autosave_leaves_no_temporary_file() {
    let dir = temp_dir("autosave-fail");
    let mut h = started(&dir, true);
    move_d0(&mut h, 0.75);
    // The autosave's name is taken by a folder: the rename onto it fails.
    std::fs::create_dir_all(dir.join("autosave-prefix.npz")).unwrap();
    h.state_mut().autosave();
    assert_eq!(
        names(&dir),
        ["autosave-prefix.npz", "session.json"],
        "a temporary file was left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
