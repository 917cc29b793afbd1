//! The app's export row, driven through egui_kittest on the bundled toy sorter: a path typed in the
//! fallback box (no file dialog in tests), Export figure to SVG, Export data to JSON and NPZ, Copy PNG;
//! the files read back equal to the capture on screen, and an existing file is refused with a message.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness, step_until, type_into};
use common::{svg_texts, temp_dir};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use prefixscope::arrays::read_arrays;
use resvg::usvg;
use std::path::Path;

/// Type a path in the export box like a user would, then click a button.
fn export_to(h: &mut Harness<'_, PrefixScopeApp>, path: &Path, button: &str) {
    type_into(
        h,
        Role::TextInput,
        "export path",
        &path.display().to_string(),
    );
    assert_eq!(h.state().export.path_text, path.display().to_string());
    h.get_by_label(button).click();
    h.step();
    h.step();
}

fn message(app: &PrefixScopeApp) -> (bool, String) {
    app.export.message.clone().expect("an export message")
}

/// Head `h` of an `(H, rows, cols)` array.
fn head(a: &prefixscope::arrays::Array, h: usize) -> Vec<f32> {
    let per = a.shape[1] * a.shape[2];
    a.data[h * per..(h + 1) * per].to_vec()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-6, "{what}[{k}]: {a} vs {b}");
    }
}

#[test]
fn export_figure_and_data_from_the_app_and_refuse_to_overwrite() {
    let dir = temp_dir("gui-export");
    let opts = AppOptions {
        prompt: Some("2 6 0 1 4 6 3 0 1 2".into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "the toy's views", |a| a.is_current());
    let (layer, hd) = (h.state().views.layer, h.state().views.head);
    let cap = h.state().shown().unwrap().capture.clone();
    assert!(cap.p > 0, "the default model opens with its trained prefix");
    let lc = cap.layer(layer).expect("the viewed layer").clone();

    // Figure: an SVG a real parser reads, with the four panel titles and the token labels.
    let svg = dir.join("views.svg");
    export_to(&mut h, &svg, "Export figure");
    let (err, m) = message(h.state());
    assert!(!err, "export failed: {m}");
    let text = std::fs::read_to_string(&svg).expect("the SVG was written");
    let mut fontdb = usvg::fontdb::Database::new();
    fontdb.load_system_fonts();
    let tree = usvg::Tree::from_str(
        &text,
        &usvg::Options {
            fontdb: std::sync::Arc::new(fontdb),
            ..Default::default()
        },
    )
    .expect("usvg parses the export");
    let all = svg_texts(&tree);
    for title in [
        "With prefix (raw)",
        "Renormalized over content",
        "Pretrained (no prefix)",
        "Renormalized \u{2212} pretrained",
    ] {
        assert!(
            all.iter().any(|t| t == title),
            "no title {title:?} in {all:?}"
        );
    }
    assert!(
        all.iter().any(|t| t == "6"),
        "no token label '6' in {all:?}"
    );

    // Data as JSON: the panels equal the capture's matrices of the selected head.
    let json_path = dir.join("views.json");
    export_to(&mut h, &json_path, "Export data");
    let (err, m) = message(h.state());
    assert!(!err, "export failed: {m}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["layer"], layer);
    assert_eq!(json["head"], hd);
    assert_eq!(json["prefix_len"], cap.p);
    let ids: Vec<u32> = serde_json::from_value(json["token_ids"].clone()).unwrap();
    assert_eq!(ids, cap.token_ids);
    let panel = |name: &str| -> Vec<f32> {
        let p = json["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == format!("{name}_L{layer}_H{hd}"))
            .unwrap_or_else(|| panic!("no panel {name}"));
        let rows: Vec<Vec<f32>> = serde_json::from_value(p["values"].clone()).unwrap();
        rows.concat()
    };
    let raw = head(lc.with_prefix.as_ref().unwrap(), hd);
    let renorm = head(lc.renormalized.as_ref().unwrap(), hd);
    let pre = head(&lc.pretrained, hd);
    let diff: Vec<f32> = renorm.iter().zip(&pre).map(|(a, b)| a - b).collect();
    assert_close("json raw", &panel("raw"), &raw);
    assert_close("json renormalized", &panel("renormalized"), &renorm);
    assert_close("json pretrained", &panel("pretrained"), &pre);
    assert_close("json difference", &panel("difference"), &diff);

    // Data as NPZ: the same matrices under the panel names, plus the token ids.
    let npz = dir.join("views.npz");
    export_to(&mut h, &npz, "Export data");
    let (err, m) = message(h.state());
    assert!(!err, "export failed: {m}");
    let arrays = read_arrays(&npz).expect("the NPZ reads back");
    let n = cap.token_ids.len();
    let a = &arrays[&format!("raw_L{layer}_H{hd}")];
    assert_eq!(a.shape, vec![n, n + cap.p]);
    assert_close("npz raw", &a.data, &raw);
    assert_close(
        "npz renormalized",
        &arrays[&format!("renormalized_L{layer}_H{hd}")].data,
        &renorm,
    );
    assert_close(
        "npz pretrained",
        &arrays[&format!("pretrained_L{layer}_H{hd}")].data,
        &pre,
    );
    let tok: Vec<u32> = arrays["token_ids"].data.iter().map(|&x| x as u32).collect();
    assert_eq!(tok, cap.token_ids);

    // A second export to the same path is refused with the library's message; the file is untouched.
    let before = std::fs::read(&npz).unwrap();
    h.state_mut().export.message = None;
    export_to(&mut h, &npz, "Export data");
    let (err, m) = message(h.state());
    assert!(err, "an existing file was replaced: {m}");
    assert!(
        m.contains("views.npz") && m.contains("existing file"),
        "{m}"
    );
    assert!(h.query_by_label_contains("existing file").is_some());
    assert_eq!(std::fs::read(&npz).unwrap(), before);
    // ... and replaced once "overwrite" is ticked.
    h.get_by_label("overwrite").click();
    h.step();
    assert!(h.state().export.overwrite);
    export_to(&mut h, &npz, "Export data");
    let (err, m) = message(h.state());
    assert!(!err, "overwrite refused: {m}");

    // The wrong kind for a button, and a folder that does not exist: one-line messages, no panic.
    export_to(&mut h, &dir.join("views.json"), "Export figure");
    let (err, m) = message(h.state());
    assert!(err && m.contains(".json"), "{m}");
    export_to(&mut h, &dir.join("no/such/dir/v.svg"), "Export figure");
    let (err, m) = message(h.state());
    assert!(err && m.contains("no such directory"), "{m}");

    // Copy PNG: the clipboard gets the rasterized figure.
    h.get_by_label("Copy PNG").click();
    h.step();
    let (err, m) = message(h.state());
    assert!(!err && m.starts_with("copied a "), "{m}");
    let img = h
        .output()
        .platform_output
        .commands
        .iter()
        .find_map(|c| match c {
            egui::OutputCommand::CopyImage(img) => Some(img.clone()),
            _ => None,
        })
        .expect("a CopyImage command");
    assert!(
        m.contains(&format!("{}\u{d7}{}", img.size[0], img.size[1])),
        "{m} vs {:?}",
        img.size
    );
    // The default 2x scale of a four-panel figure: wide, and not blank.
    assert!(img.size[0] > 800 && img.size[1] > 200, "{:?}", img.size);
    let first = img.pixels[0];
    let distinct = img.pixels.iter().filter(|&&p| p != first).count();
    assert!(
        distinct > img.pixels.len() / 10,
        "the copied image is nearly blank"
    );
}

/// The screen's value scale reaches the file: with the log scale (and with the power scale) every
/// cell of the exported pretrained map has the colour the screen's `Norm` gives its value, which
/// for some cells differs from the linear scale's colour (so a linear export fails this).
#[test]
fn exported_figure_uses_the_value_scale_on_screen() {
    use prefixscope::app::colormap::Scale;
    let dir = temp_dir("gui-export-scale");
    let model = prefixscope::app::default_model().map(|(m, _)| m);
    let opts = AppOptions {
        model,
        prompt: Some("3 1 4 1 5 9 2 6".into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    };
    let mut h = harness(PrefixScopeApp::new(None, opts));
    step_until(&mut h, "the first views", |a| a.is_current());
    h.state_mut().export.chosen = Some(prefixscope::figure::ViewKind::Pretrained);
    for (k, scale) in [Scale::Log, Scale::Power].into_iter().enumerate() {
        h.state_mut().views.norm.scale = scale;
        h.state_mut().views.norm.log_floor = 1e-3;
        h.state_mut().views.norm.gamma = 0.4;
        h.step();
        let out = dir.join(format!("pretrained-{k}.svg"));
        export_to(&mut h, &out, "Export figure");
        let svg = std::fs::read_to_string(&out).expect("figure written");
        let app = h.state();
        let norm = app.views.norm;
        let lc = app.shown().unwrap().capture.layer(0).unwrap().clone();
        let n = lc.pretrained.shape[1];
        let pre = head(&lc.pretrained, 0);
        // The cells in drawing order: row by row, the visible keys j <= i.
        let fills: Vec<&str> = svg
            .split("\" fill=\"")
            .skip(1)
            .filter(|s| s[7..].starts_with("\"><title>"))
            .map(|s| &s[..7])
            .collect();
        assert_eq!(fills.len(), n * (n + 1) / 2, "{scale:?}: one fill per cell");
        let hex = |c: egui::Color32| format!("#{:02x}{:02x}{:02x}", c.r(), c.g(), c.b());
        let mut k = 0;
        let mut differs = 0;
        for i in 0..n {
            for j in 0..=i {
                let v = pre[i * n + j];
                assert_eq!(
                    fills[k],
                    hex(norm.color(v, 1.0)),
                    "{scale:?} cell ({i}, {j}) = {v}"
                );
                let linear = prefixscope::app::colormap::sample(norm.cmap, v);
                differs += usize::from(fills[k] != hex(linear));
                k += 1;
            }
        }
        assert!(
            differs > 0,
            "{scale:?}: no cell tells the scale from linear"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
