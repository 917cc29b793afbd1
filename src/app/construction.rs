//! Construction mode: the paper's unconditional construction (Theorem 1, `crate::construct`). The user
//! types a target, the panel builds the virtual token that makes the hand-built model write it, shows
//! the token's content coordinates as sliders, and regenerates the text on every slider move. The
//! attention views are the app's own: the construction is saved as an ordinary model file, opened
//! like any checkpoint, and the virtual token goes to the worker as a soft-prompt prefix.
//!
//! Building and generating are the library's (`construct::build_target`, `construct::generate_text`);
//! greedy generation of N = 20 characters on this model is a few dozen tiny matrix products, cheap
//! enough to run on the UI thread inside a slider drag. Everything heavier (the captures behind the
//! views) stays on the worker.

use super::{autosave_dir, PrefixScopeApp};
use crate::construct::{self, Built};
use crate::prefix::Prefix;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The file the construction model is written to (the model does not depend on the target).
const MODEL_FILE: &str = "construction-unconditional.safetensors";
/// The target a fresh panel starts with (the notebook's).
pub const DEFAULT_TARGET: &str = "I love transformers!";

/// What Explore mode had on screen when Construction mode began, given back unchanged when it ends:
/// the model (kept in memory, not read again), the prompt, the prefix with its undo history, and the
/// view settings.
pub struct ExploreState {
    loaded: Option<super::worker::LoadedModel>,
    loading: Option<PathBuf>,
    prompt: super::prompt::PromptPanel,
    editor: super::prefix_editor::PrefixEditor,
    views: super::views::ViewsPanel,
}

/// The panel's state: the target, the built construction whose virtual token the sliders edit, and
/// the text that token generates.
pub struct ConstructionPanel {
    /// Whether the window is in Construction mode.
    pub active: bool,
    pub target: String,
    /// The model and the virtual token being edited (the last good build).
    built: Option<Built>,
    /// What the current virtual token generates, and the smallest decoder margin over it.
    generated: String,
    margin: f64,
    /// The library's one-line message for a target it refuses (or a failed generation).
    error: Option<String>,
    /// Bumped on every change of the virtual token; the app syncs its prefix and prompt on a change.
    version: u64,
    /// Time of the last generation (shown, so the "live" claim can be checked on screen).
    gen_time: Duration,
    /// Where the model was written.
    model_file: Option<PathBuf>,
    /// (model_gen, version) last pushed into the app's editor and prompt.
    synced: Option<(u64, u64)>,
}

impl Default for ConstructionPanel {
    fn default() -> Self {
        let mut p = ConstructionPanel {
            active: false,
            target: DEFAULT_TARGET.to_string(),
            built: None,
            generated: String::new(),
            margin: 0.0,
            error: None,
            version: 0,
            gen_time: Duration::ZERO,
            model_file: None,
            synced: None,
        };
        p.set_target(DEFAULT_TARGET);
        p
    }
}

impl ConstructionPanel {
    /// The text the current virtual token generates.
    pub fn generated(&self) -> &str {
        &self.generated
    }
    /// The library's message for the last refused target, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    /// Smallest decoder margin over the generated characters (positive: every argmax is clear).
    pub fn margin(&self) -> f64 {
        self.margin
    }
    /// The virtual token being edited.
    pub fn prefix(&self) -> Option<&Prefix> {
        self.built.as_ref().map(|b| &b.prefix)
    }
    /// The content coordinates of the virtual token (what the sliders show).
    pub fn coordinates(&self) -> &[f32] {
        match (&self.built, self.prefix()) {
            (Some(b), Some(Prefix::SoftPrompt(a))) => a.data.get(b.content.clone()).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Build the construction for `target`. A refused target keeps the previous virtual token and
    /// shows the library's message.
    pub fn set_target(&mut self, target: &str) {
        self.target = target.to_string();
        match construct::build_target(target) {
            Ok(b) => {
                self.built = Some(b);
                self.error = None;
                self.regenerate();
            }
            Err(e) => self.error = Some(e.one_line()),
        }
    }

    /// Set content coordinate `i` of the virtual token and regenerate.
    pub fn set_coordinate(&mut self, i: usize, value: f32) {
        let Some(b) = self.built.as_mut() else { return };
        let at = b.content.start + i;
        if let Prefix::SoftPrompt(a) = &mut b.prefix {
            if at < b.content.end {
                if let Some(x) = a.data.get_mut(at) {
                    *x = value;
                }
            }
        }
        self.regenerate();
    }

    fn regenerate(&mut self) {
        let Some(b) = &self.built else { return };
        let t0 = Instant::now();
        match construct::generate_text(&b.model, &b.prefix, "", None) {
            Ok((text, g)) => {
                self.generated = text;
                self.margin = g.margin();
            }
            Err(e) => self.error = Some(e.one_line()),
        }
        self.gen_time = t0.elapsed();
        self.version += 1;
    }

    /// The characters the model reads after the virtual token while it generates (all but the last
    /// generated one, within the model's positions): the content the attention views show.
    fn content_text(&self, max_positions: usize) -> String {
        let n = self.generated.chars().count();
        let keep = n.saturating_sub(1).min(max_positions.saturating_sub(1));
        self.generated.chars().take(keep.max(1)).collect()
    }

    /// Draw the panel; true when the virtual token changed.
    pub fn ui(&mut self, ui: &mut egui::Ui) -> bool {
        let before = self.version;
        ui.label(
            egui::RichText::new("One virtual token writes the target")
                .strong()
                .size(15.0),
        );
        ui.label(
            egui::RichText::new(format!(
                "The paper's Theorem 1 construction: N = {}, V = {}, T = {}. Only the virtual token holds the text.",
                construct::UNCONDITIONAL_N,
                construct::V,
                construct::UNCONDITIONAL_T
            ))
            .small()
            .weak(),
        );
        ui.add_space(4.0);
        let mut text = self.target.clone();
        let resp = ui.add(
            egui::TextEdit::singleline(&mut text)
                .desired_width(f32::INFINITY)
                .font(egui::TextStyle::Monospace)
                .hint_text("target text"),
        );
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "target"));
        if resp.changed() {
            self.set_target(&text);
        }
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            ui.label("generated:");
            let frame = egui::Frame::new()
                .fill(ui.visuals().extreme_bg_color)
                .inner_margin(egui::Margin::symmetric(4, 2))
                .corner_radius(3.0);
            frame.show(ui, |ui| {
                ui.label(
                    egui::RichText::new(&self.generated)
                        .monospace()
                        .size(15.0)
                        .strong(),
                )
            });
        });
        let matches = self.error.is_none() && self.generated.trim_end() == self.target.trim_end();
        let (color, what) = if matches {
            (egui::Color32::from_rgb(110, 200, 120), "= the target")
        } else {
            (ui.visuals().warn_fg_color, "≠ the target")
        };
        ui.horizontal(|ui| {
            ui.colored_label(color, what);
            ui.label(
                egui::RichText::new(format!(
                    "· decoder margin {:.2e} · {} µs",
                    self.margin,
                    self.gen_time.as_micros()
                ))
                .small(),
            )
            .on_hover_text(
                "smallest gap between the chosen character's logit and the runner-up, over all generated characters; generation time on this thread",
            );
        });
        ui.separator();
        ui.label(egui::RichText::new("Virtual token (content coordinates)").strong());
        ui.label(
            egui::RichText::new(
                "x_i = id(s_i)/V: coordinate i is character i. The rest of the token is zero; the model adds positions itself.",
            )
            .small()
            .weak(),
        );
        if let Some(b) = &self.built {
            let names: Vec<String> = b
                .model
                .config()
                .heads
                .iter()
                .enumerate()
                .map(|(i, h)| format!("head {i} = \"{}\"", h.name))
                .collect();
            ui.label(
                egui::RichText::new(format!(
                    "Views: {}. \"pos\" attends each position to itself, \"first\" attends every position to the virtual token.",
                    names.join(", ")
                ))
                .small()
                .weak(),
            );
        }
        let coords = self.coordinates().to_vec();
        let gen: Vec<char> = self.generated.chars().collect();
        let mut edits = Vec::new();
        egui::ScrollArea::vertical()
            .id_salt("construction coordinates")
            .auto_shrink([false, true])
            .show(ui, |ui| {
                // Wide sliders: 94 characters share the range, each needs a few pixels to be reachable.
                ui.spacing_mut().slider_width = (ui.available_width() - 140.0).max(120.0);
                for (i, &x) in coords.iter().enumerate() {
                    ui.horizontal(|ui| {
                        let mut v = x;
                        let resp = ui.add(
                            egui::Slider::new(&mut v, 0.0..=1.0)
                                .text(format!("x{i}"))
                                .smart_aim(false),
                        );
                        if resp.changed() {
                            edits.push((i, v));
                        }
                        let c = gen.get(i).copied().unwrap_or(' ');
                        ui.label(egui::RichText::new(format!("{c:?}")).monospace())
                            .on_hover_text(format!("character {i} as generated"));
                    });
                }
            });
        if !edits.is_empty() {
            // The generated text above was drawn before this edit: draw again at once.
            ui.ctx().request_repaint();
        }
        for (i, v) in edits {
            self.set_coordinate(i, v);
        }
        self.version != before
    }
}

impl PrefixScopeApp {
    /// The mode switch at the top of the controls: entering Construction mode opens the construction
    /// model; leaving it reopens the model shown before.
    pub(super) fn construction_switch(&mut self, ui: &mut egui::Ui) {
        let mut active = self.construction.active;
        ui.horizontal(|ui| {
            ui.selectable_value(&mut active, false, "Explore");
            ui.selectable_value(&mut active, true, "Construction");
        });
        if active != self.construction.active {
            self.set_construction_mode(active);
        }
    }

    pub fn set_construction_mode(&mut self, active: bool) {
        if active == self.construction.active {
            return;
        }
        self.construction.active = active;
        if active {
            self.explore = Some(ExploreState {
                loaded: self.loaded.as_ref().map(|m| super::worker::LoadedModel {
                    model_gen: m.model_gen,
                    model: m.model.clone(),
                    path: m.path.clone(),
                    info: m.info.clone(),
                    tokenizer: m.tokenizer.clone(),
                    load_time: m.load_time,
                }),
                loading: self.loading.as_ref().map(|j| j.path.clone()),
                prompt: self.prompt.clone(),
                editor: std::mem::take(&mut self.editor),
                views: self.views.clone(),
            });
            let dir = autosave_dir(&self.opts).unwrap_or_else(std::env::temp_dir);
            let file = dir.join(MODEL_FILE);
            let saved = std::fs::create_dir_all(&dir)
                .map_err(|e| crate::Error::io(&dir, e))
                .and_then(|()| {
                    self.construction
                        .built
                        .as_ref()
                        .map_or(Ok(()), |b| b.model.save(&file))
                });
            match saved {
                Ok(()) => {
                    self.construction.model_file = Some(file.clone());
                    self.construction.synced = None;
                    self.open_model(file);
                }
                Err(e) => self.construction.error = Some(e.one_line()),
            }
        } else if let Some(state) = self.explore.take() {
            self.restore_explore(state);
        }
    }

    /// Back to Explore mode: the model it showed becomes current again without a reload, and the
    /// prompt, the prefix (with its undo history) and the view settings are as they were.
    fn restore_explore(&mut self, state: ExploreState) {
        if let Some(job) = self.loading.take() {
            job.cancel();
        }
        self.prompt = state.prompt;
        self.editor = state.editor;
        self.views = state.views;
        self.shown = None;
        self.last_sent = None;
        match (state.loaded, state.loading) {
            (Some(m), _) => {
                let m = self.worker.reinstall(&m);
                self.model_panel.path_text = m.path.display().to_string();
                self.session.model_path = Some(m.path.clone());
                let tok = m.tokenizer.clone();
                self.prompt.ids.clear();
                self.prompt.tokenize(&tok);
                self.loaded = Some(m);
            }
            // Explore was still loading its model: load it again.
            (None, Some(path)) => self.open_model(path),
            (None, None) => self.loaded = None,
        }
    }

    /// Construction mode's controls (in place of the prompt and the prefix editor), and the sync of
    /// its virtual token and generated text into the app's prefix and prompt, which drive the views.
    pub(super) fn construction_ui(&mut self, ui: &mut egui::Ui) {
        self.construction.ui(ui);
        let Some(m) = &self.loaded else { return };
        let ours = self
            .construction
            .model_file
            .as_deref()
            .is_some_and(|f| super::same_file(f, &m.path));
        if !ours {
            if self.loading.is_some() {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("opening the construction model…");
                });
            }
            return;
        }
        let key = (m.model_gen, self.construction.version);
        if self.construction.synced == Some(key) {
            return;
        }
        let max_pos = m.info.max_positions.unwrap_or(usize::MAX);
        let tok = m.tokenizer.clone();
        if let Some(p) = self.construction.prefix() {
            self.editor.set_prefix(p.clone());
        }
        self.prompt.text = self.construction.content_text(max_pos);
        self.prompt.tokenize(&tok);
        self.construction.synced = Some(key);
    }
}
