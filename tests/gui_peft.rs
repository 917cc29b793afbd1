//! The app opens a PEFT adapter through the prefix editor's path box and shows PEFT's numbers; a bad
//! adapter leaves the current prefix with the one-line message; "save as PEFT adapter…" writes a
//! folder the CLI reads back, and never replaces one unless "replace" is ticked.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until, type_into};
use common::{repo_path, run_bin, temp_dir};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use prefixscope::prefix::{Prefix, PrefixKind};

fn open_adapter(h: &mut egui_kittest::Harness<'_, PrefixScopeApp>, path: &std::path::Path) {
    type_into(
        h,
        Role::TextInput,
        "prefix file",
        &path.display().to_string(),
    );
    h.get_by_label("open adapter…").click();
    h.step();
}

#[test]
fn adapter_opened_in_the_app_matches_the_cli_and_bad_ones_keep_the_prefix() {
    let dir = temp_dir("gui-peft");
    let model = repo_path("tests/fixtures/peft/tiny-gqa");
    let opts = AppOptions {
        model: Some(model.clone()),
        prompt: Some("the cat sat on the mat".into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "the first views", |a| a.is_current());

    let adapter = repo_path("tests/fixtures/peft/tiny-gqa/prefix_tuning");
    open_adapter(&mut h, &adapter);
    let (is_err, text) = h.state().editor.message.clone().expect("a message");
    assert!(!is_err, "{text}");
    assert!(text.contains("PREFIX_TUNING"), "{text}");
    assert_eq!(h.state().editor.kind, PrefixKind::KeyValue);
    let opened: Prefix = h.state().editor.prefix.clone().unwrap();
    assert_eq!(opened.len(), 3);
    assert_eq!(h.state().editor.recent_adapters, vec![adapter.clone()]);
    step_until(&mut h, "the adapter's views", |a| {
        a.is_current() && a.shown().is_some_and(|c| c.capture.p == 3)
    });

    // The app's attention equals the CLI's (which tests/peft.rs holds to PEFT's within 1e-5).
    let cap = h.state().shown().unwrap().capture.clone();
    let ids: Vec<String> = cap.token_ids.iter().map(|i| i.to_string()).collect();
    let out = dir.join("cli.npz");
    let (code, _, err) = run_bin(&[
        "attention",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids.join(","),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let cli = prefixscope::hooks::Activations::read(&out).unwrap();
    for l in &cap.layers {
        let app = l.with_prefix.as_ref().unwrap();
        let c = cli
            .get(prefixscope::hooks::Hook::Pattern, l.layer)
            .expect("the export has every layer's pattern");
        assert_eq!(app.shape, c.shape);
        let d = app
            .data
            .iter()
            .zip(&c.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-6, "layer {}: {d:e}", l.layer);
    }

    // Refused adapters: the one-line message, and the prefix stays.
    for (bad, needle) in [
        (repo_path("tests/fixtures/peft/tiny-llama/lora"), "LORA"),
        (
            repo_path("tests/fixtures/peft/tiny-llama/prefix_tuning"),
            "num_layers",
        ),
        (
            repo_path("tests/fixtures/peft/tiny-llama/prompt_tuning_bin"),
            "adapter_model.bin",
        ),
        (dir.to_path_buf(), "adapter_config.json"),
    ] {
        open_adapter(&mut h, &bad);
        let (is_err, text) = h.state().editor.message.clone().unwrap();
        assert!(is_err && text.contains(needle), "{}: {text}", bad.display());
        assert!(!text.contains('\n'));
        assert_eq!(h.state().editor.prefix.as_ref(), Some(&opened));
    }

    // Save as a PEFT adapter; a second save needs "replace".
    let saved = dir.join("saved-adapter");
    type_into(
        &mut h,
        Role::TextInput,
        "prefix file",
        &saved.display().to_string(),
    );
    h.get_by_label("save as PEFT adapter…").click();
    h.step();
    let (is_err, text) = h.state().editor.message.clone().unwrap();
    assert!(!is_err && text.contains("PREFIX_TUNING"), "{text}");
    assert!(saved.join("adapter_config.json").is_file());
    h.get_by_label("save as PEFT adapter…").click();
    h.step();
    let (is_err, text) = h.state().editor.message.clone().unwrap();
    assert!(is_err && text.contains("exists"), "{text}");
    h.get_by_label("replace").click();
    h.step();
    h.get_by_label("save as PEFT adapter…").click();
    h.step();
    let (is_err, text) = h.state().editor.message.clone().unwrap();
    assert!(!is_err, "{text}");
    // What was saved opens as the same prefix, and heads the recent list (refused ones are not in it).
    open_adapter(&mut h, &saved);
    assert_eq!(h.state().editor.prefix.as_ref(), Some(&opened));
    assert_eq!(
        h.state().editor.recent_adapters,
        vec![saved.clone(), adapter.clone()]
    );
    // "recent adapters" reopens one.
    h.get_by_label("recent adapters").click();
    h.step();
    h.step();
    h.get_by_label(&adapter.display().to_string()).click();
    h.step();
    let (is_err, text) = h.state().editor.message.clone().unwrap();
    assert!(!is_err && text.contains("prefix_tuning"), "{text}");
    assert_eq!(h.state().editor.recent_adapters[0], adapter);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `prefixscope --adapter DIR` (AppOptions::prefix naming an adapter folder) starts from the adapter,
/// of the adapter's kind; a refused one leaves the one-line message.
#[test]
fn the_window_starts_from_an_adapter() {
    let dir = temp_dir("gui-peft-start");
    let start = |adapter: &str| {
        let opts = AppOptions {
            model: Some(repo_path("tests/fixtures/peft/tiny-llama")),
            prefix: Some(repo_path(adapter)),
            prompt: Some("the cat".into()),
            session_dir: Some(dir.to_path_buf()),
            fresh: true,
            ..Default::default()
        };
        let mut h = harness(PrefixScopeApp::new(None, opts));
        step_until(&mut h, "the first views", |a| a.is_current());
        h
    };
    let h = start("tests/fixtures/peft/tiny-llama/p_tuning");
    assert_eq!(h.state().editor.kind, PrefixKind::SoftPrompt);
    assert_eq!(h.state().editor.prefix.as_ref().map(|p| p.len()), Some(3));
    let h = start("tests/fixtures/peft/tiny-llama/cartridge");
    assert_eq!(h.state().editor.kind, PrefixKind::KeyValue);
    let h = start("tests/fixtures/peft/tiny-gqa/cartridge");
    let (is_err, text) = h.state().editor.message.clone().unwrap();
    assert!(is_err && text.contains("num_layers"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
