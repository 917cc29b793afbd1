//! The window as a new user meets it (issue #19): layout that cannot overlap, mode switches that
//! keep state, one labelling rule and one prefix numbering on screen and in files, one colour map for
//! screen and files, messages that do not outlive what they describe, a deep-layer line that is not
//! coloured like a passed check, axis titles and scales, a slider range that covers trained prefixes,
//! and stale views that say so. Every assertion reads egui's layout (widget rectangles) or its
//! accessibility tree, never pixels.
#![cfg(feature = "gui")]

mod common;

use common::gui::{harness_sized, step_until, type_into};
use common::temp_dir;
use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use prefixscope::app::{AppOptions, PrefixScopeApp};
use std::path::{Path, PathBuf};

const SIZES: [(f32, f32); 3] = [(1024.0, 700.0), (1280.0, 800.0), (1920.0, 1080.0)];
const TOY_PROMPT: &str = "3 1 4 1 5 7 2 6 5 3 1 1 2 3 3 4 5 5 6";
/// The prompt of every script.
pub const QUOTES_PROMPT: &str = "<b>&\"quotes\"</b> café 🙂 新しい";

/// About 200 SmolLM2 tokens of plain prose (the screenshots use the same text).
fn long_prompt() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/screenshots/prompt-200.txt"
    ))
    .expect("tests/screenshots/prompt-200.txt")
    .trim()
    .to_string()
}

fn options(model: Option<PathBuf>, dir: &Path, prompt: &str) -> AppOptions {
    AppOptions {
        model,
        prompt: Some(prompt.into()),
        session_dir: Some(dir.to_path_buf()),
        fresh: true,
        ..Default::default()
    }
}

fn app(
    model: Option<PathBuf>,
    dir: &Path,
    prompt: &str,
    size: (f32, f32),
) -> Harness<'static, PrefixScopeApp> {
    let mut h = harness_sized(PrefixScopeApp::new(None, options(model, dir, prompt)), size);
    step_until(&mut h, "the first complete views", |a| a.is_current());
    h
}

/// Every widget of the last frame whose visible (clipped) rectangle overlaps the Checks panel, other
/// than the panel's own widgets and the containers it sits in: `(id, rect)` as text.
fn overlapping_checks(h: &Harness<'_, PrefixScopeApp>) -> Vec<String> {
    let (checks_id, checks) = h.state().checks_panel.expect("the Checks panel is drawn");
    h.ctx.viewport(|v| {
        let w = &v.prev_pass.widgets;
        let chain = |mut id: egui::Id| {
            let mut ids = vec![id];
            while let Some(r) = w.get(id) {
                if r.parent_id == id || ids.len() > 256 {
                    break;
                }
                id = r.parent_id;
                ids.push(id);
            }
            ids
        };
        let ancestors = chain(checks_id);
        let mut out = Vec::new();
        for (layer, rects) in w.layers() {
            if !matches!(layer.order, egui::Order::Background | egui::Order::Middle) {
                continue;
            }
            for r in rects {
                let vis = r.interact_rect;
                // The panels and Uis the Checks sit in enclose them: a background, not an overlap.
                if !vis.is_positive() || ancestors.contains(&r.id) || vis.contains_rect(checks) {
                    continue;
                }
                if chain(r.id).contains(&checks_id) {
                    continue;
                }
                let i = vis.intersect(checks);
                if i.width() > 0.5 && i.height() > 0.5 {
                    out.push(format!(
                        "{:?} at {:?} (checks {:?})",
                        w.get(r.id).map(|x| x.id),
                        vis,
                        checks
                    ));
                }
            }
        }
        out
    })
}

fn assert_checks_clear(h: &mut Harness<'_, PrefixScopeApp>, what: &str) {
    for size in SIZES {
        h.set_size(egui::vec2(size.0, size.1));
        h.run_steps(3);
        let over = overlapping_checks(h);
        assert!(
            over.is_empty(),
            "{what} at {}x{}: widgets over the Checks panel: {over:#?}",
            size.0,
            size.1
        );
    }
}

#[test]
fn checks_panel_overlaps_no_widget_at_1024x700_1280x800_1920x1080() {
    let dir = temp_dir("gui-window-overlap");
    let mut h = app(None, &dir, TOY_PROMPT, (1280.0, 800.0));
    assert_checks_clear(&mut h, "toy");
    // The key/value kind adds rows to the editor (finding 1).
    h.get_by_role_and_label(Role::RadioButton, "key/value prefix")
        .click();
    h.run_steps(2);
    step_until(&mut h, "the key/value views", |a| a.is_current());
    assert_checks_clear(&mut h, "toy, key/value prefix");

    if let Some(model) = common::smollm2_or_skip() {
        let mut h = app(
            Some(model.clone()),
            &dir,
            "The cat sat on the mat because it was warm",
            (1280.0, 800.0),
        );
        // A deep layer adds the measured line to the Checks (finding 1).
        h.state_mut().views.layer = 7;
        h.run_steps(2);
        step_until(&mut h, "layer 7", |a| {
            a.is_current() && a.shown().is_some_and(|c| c.capture.layer(7).is_some())
        });
        assert_checks_clear(&mut h, "SmolLM2, layer 7");
        h.get_by_role_and_label(Role::RadioButton, "key/value prefix")
            .click();
        h.run_steps(2);
        step_until(&mut h, "the key/value views", |a| a.is_current());
        assert_checks_clear(&mut h, "SmolLM2, layer 7, key/value prefix");
        for (what, prompt) in [
            ("200 tokens", long_prompt()),
            ("quotes", QUOTES_PROMPT.into()),
        ] {
            let mut h = app(Some(model.clone()), &dir, &prompt, (1280.0, 800.0));
            if what == "200 tokens" {
                let n = h.state().prompt.ids.len();
                assert!((180..=230).contains(&n), "{n} tokens");
            }
            assert_checks_clear(&mut h, &format!("SmolLM2, {what}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn construction_and_back_keeps_prompt_prefix_undo_and_does_not_reload() {
    let dir = temp_dir("gui-window-modes");
    let mut h = app(None, &dir, "2 2 1 0", (1280.0, 800.0));
    let model = h.state().model_path().unwrap().to_path_buf();
    h.get_by_role_and_label(Role::Slider, "d0")
        .set_value_accesskit(1.25);
    h.step();
    assert!(h.state().editor.can_undo());
    let prefix = h.state().editor.prefix.clone().unwrap();
    let version = h.state().editor.version;

    h.get_by_label("Construction").click();
    h.run_steps(2);
    step_until(&mut h, "the construction model", |a| {
        a.model_path().is_some_and(|p| p != model) && a.is_current()
    });
    assert_ne!(h.state().prompt.text, "2 2 1 0");

    h.get_by_label("Explore").click();
    h.step();
    assert!(
        !h.state().is_loading(),
        "back to Explore read the model file again"
    );
    assert_eq!(h.state().model_path(), Some(model.as_path()));
    assert_eq!(h.state().prompt.text, "2 2 1 0");
    assert_eq!(h.state().editor.prefix.as_ref(), Some(&prefix));
    assert_eq!(h.state().editor.version, version);
    assert!(h.state().editor.can_undo(), "the undo history was lost");
    step_until(&mut h, "the Explore views again", |a| a.is_current());
    assert_eq!(h.state().shown().unwrap().capture.token_ids.len(), 4);
    h.get_by_label("↶ undo").click();
    h.step();
    assert_ne!(h.state().editor.vector().unwrap()[0], 1.25);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The key labels a heat map shows, from its accessible value ("key labels: a | b | …").
fn key_labels(h: &Harness<'_, PrefixScopeApp>, map: &str) -> Vec<String> {
    let name = format!("{map} heatmap");
    let node = h.get_by_label_contains(&name);
    let v = node.value().expect("a heat map lists its key labels");
    v.strip_prefix("key labels: ")
        .expect("key labels")
        .split(" | ")
        .map(str::to_string)
        .collect()
}

#[test]
fn all_maps_label_the_same_tokens_and_prefix_columns_are_numbered_as_in_the_files() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let dir = temp_dir("gui-window-labels");
    // 38 tokens: at 1280 x 800 the labels are thinned (finding 4).
    let prompt = "The quick brown fox jumps over the lazy dog, and then it runs back home to sleep under the old oak tree by the river while the sun sets slowly.";
    let mut h = app(Some(model), &dir, prompt, (1280.0, 800.0));
    let n = h.state().shown().unwrap().capture.token_ids.len();
    let p = h.state().shown().unwrap().capture.p;
    let raw = key_labels(&h, "raw, with prefix");
    let renorm = key_labels(&h, "renormalized over content");
    let pre = key_labels(&h, "pretrained (no prefix)");
    let diff = key_labels(&h, "renormalized − pretrained");
    assert!(renorm.len() < n, "labels not thinned: {renorm:?}");
    let names = prefixscope::figure::prefix_labels(p);
    let (raw_prefix, raw_content): (Vec<String>, Vec<String>) =
        raw.iter().cloned().partition(|l| names.contains(l));
    assert!(
        !raw_prefix.is_empty(),
        "the raw map names its prefix columns as the files do ({names:?}): {raw:?}"
    );
    assert_eq!(
        raw_content, renorm,
        "raw and renormalized label different tokens"
    );
    assert_eq!(renorm, pre);
    assert_eq!(renorm, diff);

    // The exported data names the prefix columns the same way.
    let out = dir.join("views.json");
    type_into(
        &mut h,
        Role::TextInput,
        "export path",
        &out.display().to_string(),
    );
    h.get_by_label("Export data").click();
    h.step();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("export written")).unwrap();
    let text = json.to_string();
    for name in &raw_prefix {
        assert!(
            text.contains(&format!("\"{name}\"")),
            "file lacks the screen's {name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exported_figure_uses_the_colour_map_on_screen() {
    let dir = temp_dir("gui-window-cmap");
    let mut h = app(None, &dir, TOY_PROMPT, (1280.0, 800.0));
    assert_eq!(
        h.state().views.norm.cmap,
        prefixscope::colormap::ColorMap::Viridis
    );
    let out = dir.join("views.svg");
    type_into(
        &mut h,
        Role::TextInput,
        "export path",
        &out.display().to_string(),
    );
    h.get_by_label("Export figure").click();
    h.step();
    let svg = std::fs::read_to_string(&out).expect("figure written");
    // Query 0 sees only key 0: attention 1, viridis' top (253, 231, 37); magma's ends are absent.
    assert!(
        svg.contains("#fde725"),
        "no viridis top colour in the figure"
    );
    assert!(
        !svg.contains("#000004") && !svg.contains("#fcfdbf"),
        "the figure has magma colours while the screen shows viridis"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loaded_message_goes_with_a_kind_change_and_a_new_model() {
    let dir = temp_dir("gui-window-message");
    let mut h = app(None, &dir, TOY_PROMPT, (1280.0, 800.0));
    h.state_mut().editor.message = Some((false, "loaded /tmp/some-prefix.npz".into()));
    h.step();
    assert!(h
        .query_by_label_contains("loaded /tmp/some-prefix")
        .is_some());
    h.get_by_role_and_label(Role::RadioButton, "key/value prefix")
        .click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("loaded /tmp/some-prefix")
            .is_none(),
        "the message outlived its prefix after a kind change"
    );
    h.state_mut().editor.message = Some((false, "loaded /tmp/some-prefix.npz".into()));
    let model = h.state().model_path().unwrap().to_path_buf();
    h.state_mut().open_model(model);
    step_until(&mut h, "the reopened model", |a| {
        !a.is_loading() && a.is_current()
    });
    assert!(
        h.query_by_label_contains("loaded /tmp/some-prefix")
            .is_none(),
        "the message outlived its prefix after a new model"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checks_pass_only_what_has_a_tolerance_and_deep_layers_are_measurements() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let dir = temp_dir("gui-window-checks");
    let mut h = app(Some(model), &dir, "The cat sat on the mat", (1280.0, 800.0));
    let l0 = h
        .get_by_label_contains("layer 0: max |renorm − pretrained|")
        .value()
        .unwrap_or_default();
    assert!(l0.contains("passes"), "{l0}");
    h.state_mut().views.layer = 5;
    h.run_steps(2);
    step_until(&mut h, "layer 5", |a| {
        a.is_current() && a.shown().is_some_and(|c| c.capture.layer(5).is_some())
    });
    let deep = h
        .get_by_label_contains("layer 5: max |renorm − pretrained|")
        .value()
        .unwrap_or_default();
    assert!(
        !deep.contains("passes") && deep.contains("no claim"),
        "the deep-layer line reads like a passed check: {deep}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn axis_titles_colour_bars_mass_scale_and_masked_cells() {
    let dir = temp_dir("gui-window-axes");
    let mut h = app(None, &dir, TOY_PROMPT, (1280.0, 800.0));
    assert_eq!(
        h.query_all_by_role_and_label(Role::Label, "key").count(),
        4,
        "one key axis title per map"
    );
    assert!(h.query_all_by_role_and_label(Role::Label, "query").count() >= 1);
    assert!(h.query_by_label_contains("overview colour bar").is_some());
    assert!(h
        .query_by_label_contains("prefix mass bars")
        .is_some_and(|n| n
            .accesskit_node()
            .label()
            .unwrap_or_default()
            .contains("scale 0 to 1")));
    // The top-right cell of the pretrained map is query 0 → the last key: a future, masked cell.
    let rect = h
        .get_by_label_contains("pretrained (no prefix) heatmap")
        .rect();
    h.hover_at(egui::pos2(rect.right() - 1.0, rect.top() + 1.0));
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("masked").is_some(),
        "hovering a masked cell does not say so"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slider_range_covers_a_trained_prefix() {
    let dir = temp_dir("gui-window-range");
    let mut h = app(None, &dir, TOY_PROMPT, (1280.0, 800.0));
    let mut prefix = h.state().editor.prefix.clone().unwrap();
    let kind = prefix.kind();
    match &mut prefix {
        prefixscope::prefix::Prefix::SoftPrompt(a) | prefixscope::prefix::Prefix::Hidden(a) => {
            a.data[0] = 2.33
        }
        prefixscope::prefix::Prefix::KeyValue { keys, .. } => keys.data[0] = 2.33,
    }
    let file = dir.join("trained.npz");
    prefix.save(&file).unwrap();
    let info = h.state().model_info().unwrap().clone();
    h.state_mut().editor.load_file(&file, &info);
    assert_eq!(h.state().editor.kind, kind);
    h.run_steps(2);
    let d0 = h.get_by_role_and_label(Role::Slider, "d0");
    let max = d0
        .accesskit_node()
        .max_numeric_value()
        .expect("a slider range");
    assert!(max >= 2.33, "the slider ends at {max}: 2.33 pins the knob");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn views_for_an_older_prompt_are_dimmed_and_say_so() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let dir = temp_dir("gui-window-stale");
    let mut h = app(Some(model), &dir, "One two three", (1280.0, 800.0));
    let shown_n = h.state().shown().unwrap().capture.token_ids.len();
    let long = "word ".repeat(120);
    type_into(&mut h, Role::MultilineTextInput, "prompt", &long);
    let n = h.state().prompt.ids.len();
    assert!(n >= 100);
    let note = format!("showing N = {shown_n}, computing N = {n}");
    assert!(
        h.query_by_label(&note).is_some(),
        "no '{note}' over the old maps"
    );
    step_until(&mut h, "the long prompt's views", |a| a.is_current());
    assert!(h.query_by_label_contains("showing N =").is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every character of `s` is one the window's fonts draw (a code point `U+…` stands for the others).
fn all_drawable(h: &Harness<'_, PrefixScopeApp>, s: &str) -> bool {
    let font = egui::FontId::proportional(11.0);
    h.ctx.fonts_mut(|f| {
        s.chars()
            .all(|c| c.is_whitespace() || f.has_glyph(&font, c))
    })
}

#[test]
fn every_script_is_drawn_or_written_as_its_code_point() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let dir = temp_dir("gui-window-glyphs");
    let prompt = "<b>&\"quotes\"</b> café 🙂 新しい";
    let mut h = app(Some(model), &dir, prompt, (1280.0, 800.0));
    let labels = h.state().shown_labels().to_vec();
    let chips = h.state().prompt.labels.clone();
    for l in labels.iter().chain(&chips) {
        assert!(all_drawable(&h, l), "'{l}' has a character no font draws");
        assert!(!l.contains('?') && !l.contains('\u{FFFD}'), "'{l}'");
    }
    let joined = labels.concat();
    for (c, cp) in [('新', "U+65B0"), ('🙂', "U+1F642"), ('é', "U+00E9")] {
        assert!(
            joined.contains(c) || joined.contains(cp),
            "neither {c} nor {cp} in {labels:?}"
        );
    }
    assert!(joined.contains("quotes") && joined.contains('&') && joined.contains('<'));
    // The exported figure: drawn by the figure's fonts, else the code point.
    let out = dir.join("glyphs.svg");
    type_into(
        &mut h,
        Role::TextInput,
        "export path",
        &out.display().to_string(),
    );
    h.get_by_label("Export figure").click();
    h.step();
    let svg = std::fs::read_to_string(&out).expect("figure written");
    let expect = if prefixscope::glyphs::covered('新') {
        "新"
    } else {
        "U+65B0"
    };
    assert!(svg.contains(expect), "the figure lacks {expect}");
    assert!(!svg.contains('\u{FFFD}'));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The views alone over a 1,024-token answer of SmolLM2 (layer 0 only, so the test holds one layer's
/// attention in memory): every frame draws (the first builds the textures), and Ctrl+scroll zooms
/// all maps into one window with its own labels. The time per frame is printed, not asserted: a
/// bound on wall time is a race on a shared machine (measured here: under 50 ms a frame after the
/// first; `bench` is where speed is measured).
#[test]
fn thousand_token_views_draw_and_zoom() {
    use prefixscope::app::views::{ViewData, ViewsPanel};
    use prefixscope::app::worker::{compute_once, ComputeRequest};
    use std::time::{Duration, Instant};
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let loaded = prefixscope::load::load(&model).expect("SmolLM2");
    let info = loaded.model.info().clone();
    let ids: Vec<u32> = (0..1024)
        .map(|k| ((k * 7919 + 13) % info.vocab_size) as u32)
        .collect();
    let prefix =
        prefixscope::prefix::Prefix::zeros(prefixscope::prefix::PrefixKind::SoftPrompt, 1, &info);
    let req = ComputeRequest {
        gen: 1,
        model_gen: 1,
        ids: ids.clone(),
        prefix: Some(prefix),
        view_layer: 0,
        view_head: 0,
    };
    let computed = compute_once(loaded.model.as_ref(), &req, &[0]).expect("layer 0");
    let labels = loaded.tokenizer.labels(&ids);
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(
            move |ui, (panel, fonts, took): &mut (ViewsPanel, bool, Vec<Duration>)| {
                // The window's fonts first (the token labels hold arrows and symbols), as the app.
                if !*fonts {
                    prefixscope::app::install_fonts(ui.ctx());
                    *fonts = true;
                    return;
                }
                let t = Instant::now();
                panel.ui(
                    ui,
                    &ViewData {
                        computed: &computed,
                        labels: &labels,
                        stale: None,
                    },
                );
                took.push(t.elapsed());
            },
            (ViewsPanel::default(), false, Vec::new()),
        );
    h.step();
    // The views' own time per frame (what the window spends drawing them; the harness's
    // accessibility bookkeeping is not the app's), the first frame (textures) included.
    h.run_steps(6);
    let times = h.state().2.clone();
    // Each of the 6 frames drew the views (the first also rasterizes the label glyphs, once per
    // session).
    assert!(times.len() >= 6, "frames that drew the views: {times:?}");
    eprintln!("1,024-token views, time per frame: {times:?}");
    let all = key_labels_of(&h, "pretrained (no prefix)");
    // Zoom in 4x over the pretrained map.
    let rect = h
        .get_by_label_contains("pretrained (no prefix) heatmap")
        .rect();
    h.hover_at(rect.center());
    h.step();
    h.event(egui::Event::Zoom(4.0));
    h.run_steps(2);
    let z = h.state().0.zoom.expect("zoomed in");
    assert_eq!(z.size, 256, "{z:?}");
    let zoomed = key_labels_of(&h, "pretrained (no prefix)");
    assert_ne!(zoomed, all, "the labels did not follow the zoom");
    // Zooming out as far shows every token again.
    h.event(egui::Event::Zoom(0.25));
    h.run_steps(2);
    assert!(h.state().0.zoom.is_none(), "zooming out kept a window");
}

/// [`key_labels`] for a harness over the views alone.
fn key_labels_of<S>(h: &Harness<'_, S>, map: &str) -> Vec<String> {
    let name = format!("{map} heatmap");
    let node = h.get_by_label_contains(&name);
    node.value()
        .expect("key labels")
        .split(" | ")
        .map(str::to_string)
        .collect()
}

#[test]
fn hiding_the_overview_gives_the_maps_its_height() {
    let dir = temp_dir("gui-window-overview");
    let mut h = app(None, &dir, TOY_PROMPT, (1024.0, 700.0));
    let before = h
        .get_by_label_contains("pretrained (no prefix) heatmap")
        .rect();
    assert!(h.query_by_label_contains("overview of 1 layers").is_some());
    h.get_by_role_and_label(Role::CheckBox, "overview").click();
    h.run_steps(3);
    let after = h
        .get_by_label_contains("pretrained (no prefix) heatmap")
        .rect();
    assert!(h.query_by_label_contains("overview of 1 layers").is_none());
    assert!(
        after.width() > before.width() * 1.1,
        "maps {} px wide with the overview, {} px without",
        before.width(),
        after.width()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
