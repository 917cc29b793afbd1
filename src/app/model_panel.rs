//! The model panel: open a checkpoint (file dialog, folder dialog, typed path, drag and drop, recent
//! files), the loading progress with Cancel, the loaded model's sizes, and the last load error.

use super::worker::LoadJob;
use crate::model::ModelInfo;
use std::path::{Path, PathBuf};

pub const MAX_RECENT: usize = 8;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelPanel {
    /// The path box (also the fallback when no file dialog is available).
    pub path_text: String,
    pub recent: Vec<PathBuf>,
    /// The library's message for the last failed load (the previous model stays).
    #[serde(skip)]
    pub error: Option<String>,
    /// A note when the file dialog could not open (no desktop portal).
    #[serde(skip)]
    pub note: Option<String>,
    /// Keep GGUF weights quantized at the next load (less memory, the same numbers).
    #[serde(default)]
    pub quantized: bool,
}

pub enum ModelAction {
    Open(PathBuf),
    Cancel,
}

/// What the panel shows about the current model.
pub struct ModelStatus<'a> {
    pub path: Option<&'a Path>,
    pub info: Option<&'a ModelInfo>,
    pub tokenizer: Option<String>,
    pub loading: Option<&'a LoadJob>,
}

impl ModelPanel {
    pub fn push_recent(&mut self, p: &Path) {
        self.recent.retain(|x| x != p);
        self.recent.insert(0, p.to_path_buf());
        self.recent.truncate(MAX_RECENT);
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, st: &ModelStatus<'_>) -> Option<ModelAction> {
        let mut action = None;
        match (st.path, st.info) {
            (Some(p), Some(info)) => {
                let name = p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().to_string(),
                );
                ui.label(egui::RichText::new(format!("Model  {name}")).strong())
                    .on_hover_text(p.display().to_string());
                ui.label(
                    egui::RichText::new(format!(
                        "{} · {} layers · {} heads ({} kv) · d {} · {}",
                        info.arch,
                        info.n_layers,
                        info.n_heads,
                        info.n_kv_heads,
                        info.d_model,
                        info.dtype
                    ))
                    .small(),
                );
                if let Some(t) = &st.tokenizer {
                    ui.label(egui::RichText::new(format!("tokenizer: {t}")).small());
                }
            }
            _ => {
                ui.label(egui::RichText::new("No model loaded").strong());
                ui.label("Open a checkpoint: a prefixscope .safetensors, a .gguf, or a Hugging Face folder.");
            }
        }
        ui.horizontal(|ui| {
            if ui.button("Open file…").clicked() {
                let t0 = std::time::Instant::now();
                match rfd::FileDialog::new()
                    .add_filter("checkpoints", &["safetensors", "gguf"])
                    .pick_file()
                {
                    Some(p) => action = Some(ModelAction::Open(p)),
                    None => self.note_no_dialog(t0),
                }
            }
            if ui.button("Open folder…").clicked() {
                let t0 = std::time::Instant::now();
                match rfd::FileDialog::new().pick_folder() {
                    Some(p) => action = Some(ModelAction::Open(p)),
                    None => self.note_no_dialog(t0),
                }
            }
            if !self.recent.is_empty() {
                ui.menu_button("Recent", |ui| {
                    for p in self.recent.clone() {
                        if ui.button(p.display().to_string()).clicked() {
                            action = Some(ModelAction::Open(p));
                            ui.close();
                        }
                    }
                });
            }
        });
        ui.horizontal(|ui| {
            let resp = ui.add(
                egui::TextEdit::singleline(&mut self.path_text)
                    .hint_text("or type / drop a path here")
                    .desired_width((ui.available_width() - 70.0).max(60.0)),
            );
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::TextInput, true, "model path")
            });
            let enter = resp.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.button("Load").clicked() || enter) && !self.path_text.trim().is_empty() {
                action = Some(ModelAction::Open(PathBuf::from(self.path_text.trim())));
            }
        });
        ui.checkbox(&mut self.quantized, "keep GGUF weights quantized")
            .on_hover_text(
                "Less memory (SmolLM2: 292 MB instead of 658 MB), the same numbers: each weight is \
                 dequantized when it is used. Applies to the next load; chosen automatically when \
                 f32 would not fit in memory.",
            );
        if let Some(note) = &self.note {
            ui.label(egui::RichText::new(note).small().weak());
        }
        if let Some(job) = st.loading {
            ui.horizontal(|ui| {
                ui.add(
                    egui::ProgressBar::new(job.progress())
                        .desired_width((ui.available_width() - 80.0).max(60.0))
                        .text(format!(
                            "loading {} ({:.1} s)",
                            job.path
                                .file_name()
                                .map_or_else(String::new, |n| n.to_string_lossy().to_string()),
                            job.started.elapsed().as_secs_f32()
                        )),
                );
                if ui.button("Cancel").clicked() {
                    action = Some(ModelAction::Cancel);
                }
            });
        }
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, format!("Load failed: {e}"));
        }
        action
    }

    /// rfd answers None at once when there is no dialog to show (no desktop portal); a None after a
    /// while is the user cancelling, which needs no note.
    fn note_no_dialog(&mut self, asked: std::time::Instant) {
        if asked.elapsed() > std::time::Duration::from_millis(500) {
            return;
        }
        self.note = Some(
            "No file dialog is available here (no desktop portal): type the path in the box, or drop the file on the window."
                .into(),
        );
    }
}
