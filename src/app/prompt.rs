//! The prompt: a text box, its tokens as chips, and the BOS choice. Tokenizing is the library's
//! tokenizer; this panel keeps the text and the last tokenization.

use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PromptPanel {
    pub text: String,
    pub bos: bool,
    #[serde(skip)]
    pub ids: Vec<u32>,
    #[serde(skip)]
    pub labels: Vec<String>,
    /// The labels are the tokenizer's, not yet made drawable.
    #[serde(skip)]
    pub labels_raw: bool,
    /// The tokenizer's complaint about the text (shown under the box).
    #[serde(skip)]
    pub error: Option<String>,
}

/// A default prompt for the model's tokenizer: digits for the toys, a sentence for real tokenizers.
pub fn default_text(tok: &Tokenizer) -> String {
    match tok {
        Tokenizer::Digits { vocab } => {
            // Ten numbers from 0..7 and the first nine of their ascending sort: the sorter's task as
            // the paper lays it out (20 positions with one prefix position in front).
            let v = (*vocab).clamp(2, 10) as u32;
            [3u32, 1, 4, 1, 5, 7, 2, 6, 5, 3, 1, 1, 2, 3, 3, 4, 5, 5, 6]
                .iter()
                .map(|d| (d % v).to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }
        Tokenizer::Ascii { .. } => "hello world".into(),
        Tokenizer::Hf { .. } | Tokenizer::Gguf(_) | Tokenizer::Unavailable { .. } => {
            "The quick brown fox jumps over the lazy dog, and then it runs back home to sleep under the old oak tree by the river."
                .into()
        }
    }
}

impl PromptPanel {
    /// Re-tokenize with `tok`; true when the ids changed.
    pub fn tokenize(&mut self, tok: &Tokenizer) -> bool {
        match tok.encode(&self.text, self.bos) {
            Ok(ids) => {
                self.error = None;
                if ids != self.ids {
                    self.labels = tok.labels(&ids);
                    self.labels_raw = true;
                    self.ids = ids;
                    return true;
                }
                false
            }
            Err(e) => {
                self.error = Some(e.one_line());
                false
            }
        }
    }

    /// Draw; returns true when the text or the BOS choice changed (the caller re-tokenizes).
    pub fn ui(&mut self, ui: &mut egui::Ui, tok: Option<&Tokenizer>) -> bool {
        let mut changed = false;
        // A long prompt scrolls inside its box instead of pushing the prefix editor away.
        let width = ui.available_width() - 16.0;
        let resp = egui::ScrollArea::vertical()
            .id_salt("prompt text")
            .max_height(110.0)
            .show(ui, |ui| {
                ui.add(
                    egui::TextEdit::multiline(&mut self.text)
                        .desired_rows(2)
                        .desired_width(width)
                        .hint_text("prompt text"),
                )
            })
            .inner;
        resp.widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::MultilineTextInput, true, "prompt")
        });
        changed |= resp.changed();
        ui.horizontal(|ui| {
            let has_bos = tok.is_some_and(|t| t.bos_id().is_some());
            changed |= ui
                .add_enabled(has_bos, egui::Checkbox::new(&mut self.bos, "BOS"))
                .on_hover_text("prepend the tokenizer's beginning-of-sequence token")
                .on_disabled_hover_text("this tokenizer has no BOS token")
                .changed();
            ui.label(format!("N = {} tokens", self.ids.len()));
        });
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        // Token chips.
        egui::ScrollArea::vertical()
            .id_salt("chips")
            .max_height(56.0)
            .show(ui, |ui| {
                ui.horizontal_wrapped(|ui| {
                    ui.spacing_mut().item_spacing = egui::vec2(3.0, 3.0);
                    for (i, (id, l)) in self.ids.iter().zip(&self.labels).enumerate() {
                        // A framed, non-interactive button: its size is known before it is placed,
                        // so the wrapped row breaks before it instead of squeezing it.
                        ui.add(
                            egui::Button::new(
                                egui::RichText::new(super::views::axis_label(l))
                                    .small()
                                    .monospace(),
                            )
                            .small()
                            .wrap_mode(egui::TextWrapMode::Extend)
                            .frame_when_inactive(true)
                            .sense(egui::Sense::hover()),
                        )
                        .on_hover_text(format!("token {i}: id {id}, {l:?}"));
                    }
                });
            });
        changed
    }
}
