//! The prefix editor's PEFT adapter row: open an adapter (typed path, else a folder or file dialog, or
//! a recent one; dropped folders and files come through [`PrefixEditor::open_adapter`] too) and save
//! the prefix as one.
//! Both go out as [`EditorRequest`]s because they need the loaded model, which the editor does not hold.

use super::{EditorRequest, PrefixEditor};
use crate::model::{ModelInfo, Transformer};
use std::path::{Path, PathBuf};

const MAX_RECENT: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    Folder,
    File,
    NewFolder,
}

impl PrefixEditor {
    /// Open the adapter at `path` for the model loaded from `model_path`. On success the prefix
    /// becomes the adapter's (one undo step; its kind follows the adapter); on failure the current
    /// prefix stays and the message is the one-line refusal.
    pub fn open_adapter(&mut self, path: &Path, info: &ModelInfo, model_path: &Path) {
        match crate::peft::open(path, info, model_path) {
            Ok(a) => {
                self.begin_edit(None);
                self.kind = a.prefix.kind();
                self.p = a.prefix.len();
                let what = format!(
                    "opened {} ({} as a {}, P = {})",
                    a.weights_path.display(),
                    a.peft_type.name(),
                    a.prefix.kind().label(),
                    a.prefix.len()
                );
                self.prefix = Some(a.prefix);
                self.recent_adapters.retain(|x| x != path);
                self.recent_adapters.insert(0, path.to_path_buf());
                self.recent_adapters.truncate(MAX_RECENT);
                self.direction = None;
                self.clamp_selection(Some(info));
                self.changed();
                self.message = Some(match a.warning {
                    Some(w) => (false, format!("{what}; warning: {w}")),
                    None => (false, what),
                });
            }
            Err(e) => self.message = Some((true, e.one_line())),
        }
    }

    /// Save the prefix as a PEFT adapter folder `dir` for `model` (loaded from `model_path`).
    pub fn save_adapter(
        &mut self,
        dir: &Path,
        model: &dyn Transformer,
        model_path: &Path,
        replace: bool,
    ) {
        let Some(p) = &self.prefix else { return };
        let base = model_path.display().to_string();
        self.message = Some(match crate::peft::save(dir, p, model, &base, replace) {
            Ok(t) => (false, format!("saved {} ({})", dir.display(), t.name())),
            Err(e) => (true, e.one_line()),
        });
    }

    /// The row under the prefix files: "open adapter…", "save as PEFT adapter…" and "replace".
    pub(super) fn adapter_ui(&mut self, ui: &mut egui::Ui) -> Option<EditorRequest> {
        let mut request = None;
        ui.horizontal_wrapped(|ui| {
            if ui
                .button("open adapter…")
                .on_hover_text("a PEFT adapter folder or its adapter_model.safetensors: the path in the box, else a folder dialog")
                .clicked()
            {
                if let Some(p) = self.adapter_path(Pick::Folder) {
                    request = Some(EditorRequest::OpenAdapter(p));
                }
            }
            if ui
                .small_button("file…")
                .on_hover_text("pick an adapter's adapter_model.safetensors in a file dialog")
                .clicked()
            {
                if let Some(p) = self.adapter_path(Pick::File) {
                    request = Some(EditorRequest::OpenAdapter(p));
                }
            }
            let id = ui.scope_id().with("replace adapter");
            let mut replace = ui.data(|d| d.get_temp::<bool>(id)).unwrap_or(false);
            if ui
                .button("save as PEFT adapter…")
                .on_hover_text("soft prompt: PROMPT_TUNING; key/value prefix and the paper's prefix: PREFIX_TUNING")
                .clicked()
            {
                if let Some(p) = self.adapter_path(Pick::NewFolder) {
                    request = Some(EditorRequest::SaveAdapter(p, replace));
                }
            }
            if ui
                .checkbox(&mut replace, "replace")
                .on_hover_text("replace an existing adapter folder")
                .changed()
            {
                ui.data_mut(|d| d.insert_temp(id, replace));
            }
        });
        self.sync_recent(ui);
        if !self.recent_adapters.is_empty() {
            egui::ComboBox::from_label("recent adapters")
                .selected_text("open again…")
                .show_ui(ui, |ui| {
                    for p in &self.recent_adapters {
                        let name = p.display().to_string();
                        if ui.selectable_label(false, name).clicked() {
                            request = Some(EditorRequest::OpenAdapter(p.clone()));
                        }
                    }
                });
        }
        request
    }

    /// The recent list lives in egui's persisted memory (saved with the window's state): filled from
    /// it when empty, written back when it changed.
    fn sync_recent(&mut self, ui: &egui::Ui) {
        let key = egui::Id::unique("prefixscope recent PEFT adapters");
        ui.data_mut(|d| {
            let kept = d.get_persisted::<Vec<PathBuf>>(key);
            if self.recent_adapters.is_empty() {
                if let Some(v) = kept {
                    self.recent_adapters = v;
                }
            } else if kept.as_ref() != Some(&self.recent_adapters) {
                d.insert_persisted(key, self.recent_adapters.clone());
            }
        });
    }

    /// The typed path, else a dialog: an adapter folder, an adapter file, or a new folder's name.
    /// "file…" always opens its dialog (the box may hold the folder just opened).
    fn adapter_path(&mut self, pick: Pick) -> Option<PathBuf> {
        let use_dialog = self.file_path.trim().is_empty() || pick == Pick::File;
        self.typed_or_picked(
            use_dialog,
            "nothing chosen: type the adapter's path in the box",
            || {
                let dialog = rfd::FileDialog::new();
                match pick {
                    Pick::Folder => dialog.pick_folder(),
                    Pick::File => dialog
                        .add_filter("PEFT adapter", &["safetensors", "json", "bin"])
                        .pick_file(),
                    Pick::NewFolder => dialog.set_file_name("adapter").save_file(),
                }
            },
        )
    }
}
