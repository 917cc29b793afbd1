//! The prefix editor's drawing: kind and length, the vector chooser, the virtualized slider list,
//! whole-vector tools, interpolation and files. Every change goes through the state's methods
//! (`mod.rs`), so undo/redo and the recompute requests see it.

use super::*;

impl PrefixEditor {
    /// Keyboard shortcuts: Ctrl+Z / Ctrl+Shift+Z / Ctrl+Y.
    pub fn shortcuts(&mut self, ctx: &egui::Context) {
        let (undo, redo) = ctx.input_mut(|i| {
            let redo = i.consume_key(
                egui::Modifiers::COMMAND | egui::Modifiers::SHIFT,
                egui::Key::Z,
            ) || i.consume_key(egui::Modifiers::COMMAND, egui::Key::Y);
            let undo = i.consume_key(egui::Modifiers::COMMAND, egui::Key::Z);
            (undo, redo)
        });
        if redo {
            self.redo();
        } else if undo {
            self.undo();
        }
    }

    /// Draw the editor; returns a request for the outside world, if any.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        info: Option<&ModelInfo>,
        tok: Option<&Tokenizer>,
    ) -> Option<EditorRequest> {
        let Some(info) = info else {
            ui.label("Load a model to edit a prefix.");
            return None;
        };
        let mut request = None;
        if !ui.input(|i| i.pointer.any_down()) {
            self.gesture = None;
        }
        self.clamp_selection(Some(info));

        // Kind and P.
        ui.horizontal_wrapped(|ui| {
            ui.label("kind");
            for k in [
                PrefixKind::SoftPrompt,
                PrefixKind::Hidden,
                PrefixKind::KeyValue,
            ] {
                if ui.radio(self.kind == k, k.label()).clicked() && self.kind != k {
                    self.set_kind(k, info);
                }
            }
        });
        ui.horizontal(|ui| {
            let max_p = info
                .max_positions
                .map_or(256, |m| m.saturating_sub(2).max(1))
                .min(256);
            let mut p = self.p;
            if ui
                .add(egui::DragValue::new(&mut p).range(1..=max_p).prefix("P = "))
                .on_hover_text("number of virtual tokens")
                .changed()
            {
                self.set_len(p, info);
            }
            let mut t = self.token;
            ui.add(
                egui::DragValue::new(&mut t)
                    .range(0..=self.p.saturating_sub(1))
                    .prefix("virtual token "),
            );
            if t != self.token {
                self.token = t;
                self.direction = None;
            }
            if self.kind != PrefixKind::SoftPrompt {
                let mut l = self.layer;
                ui.add(
                    egui::DragValue::new(&mut l)
                        .range(0..=info.n_layers.saturating_sub(1))
                        .prefix("layer "),
                );
                if l != self.layer {
                    self.layer = l;
                    self.direction = None;
                }
            } else {
                ui.label("layer —")
                    .on_hover_text("a soft prompt enters once, at the embeddings");
            }
        });
        if self.kind == PrefixKind::KeyValue {
            ui.horizontal(|ui| {
                let before = (self.kv_part, self.kv_head);
                ui.selectable_value(&mut self.kv_part, KvPart::Keys, "keys");
                ui.selectable_value(&mut self.kv_part, KvPart::Values, "values");
                ui.add(
                    egui::DragValue::new(&mut self.kv_head)
                        .range(0..=info.n_kv_heads.saturating_sub(1))
                        .prefix("kv head "),
                );
                if before != (self.kv_part, self.kv_head) {
                    self.direction = None;
                }
            });
        }
        let Some(current) = self.vector().map(|v| v.to_vec()) else {
            ui.label("no prefix");
            return None;
        };

        // One slider for a whole direction.
        ui.horizontal(|ui| {
            if ui
                .button("random dir")
                .on_hover_text("a seeded random unit vector")
                .clicked()
            {
                self.start_direction(true);
            }
            ui.add(
                egui::DragValue::new(&mut self.axis)
                    .range(0..=current.len().saturating_sub(1))
                    .prefix("d"),
            );
            if ui
                .button("axis dir")
                .on_hover_text("the unit vector of this dimension")
                .clicked()
            {
                self.start_direction(false);
            }
        });
        if let Some(d) = &self.direction {
            let mut alpha = d.alpha;
            let what = d.what.clone();
            let span = (self.range * 4.0).max(1.0);
            let resp = ui.add(
                egui::Slider::new(&mut alpha, -span..=span)
                    .text("direction")
                    .clamping(egui::SliderClamping::Never),
            );
            let resp = resp.on_hover_text(format!("move along {what}"));
            if resp.changed() {
                self.set_alpha(alpha, Some(resp.id));
            }
        }
        ui.horizontal(|ui| {
            ui.label(format!("norm {:.3}", norm(&current)));
            ui.add(
                egui::DragValue::new(&mut self.target_norm)
                    .speed(0.01)
                    .range(0.0..=1e4)
                    .prefix("→ "),
            );
            if ui.button("scale norm").clicked() {
                self.scale_norm();
            }
        });
        ui.horizontal(|ui| {
            if ui.button("zero").clicked() {
                self.zero();
            }
            if ui.button("randomize").clicked() {
                self.randomize();
            }
            ui.add(egui::DragValue::new(&mut self.seed).prefix("seed "));
            ui.add(
                egui::DragValue::new(&mut self.sigma)
                    .speed(0.01)
                    .range(0.0..=100.0)
                    .prefix("σ "),
            );
        });
        ui.horizontal(|ui| {
            let can_embed = self.kind != PrefixKind::KeyValue;
            let resp = ui.add_enabled(
                can_embed,
                egui::TextEdit::singleline(&mut self.token_text)
                    .hint_text("token text or #id")
                    .desired_width(110.0),
            );
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::TextInput, true, "embedding token")
            });
            if ui
                .add_enabled(can_embed, egui::Button::new("token embedding"))
                .clicked()
            {
                let text = self.token_text.trim();
                let id = if let Some(num) = text.strip_prefix('#') {
                    num.parse::<u32>()
                        .map_err(|_| format!("'{text}': expected #<token id>"))
                } else {
                    match tok.map(|t| t.encode(text, false)) {
                        Some(Ok(ids)) if ids.len() == 1 => Ok(ids[0]),
                        Some(Ok(ids)) => Err(format!(
                            "'{text}' is {} tokens; give one token (or #id)",
                            ids.len()
                        )),
                        Some(Err(e)) => Err(e.one_line()),
                        None => Err("no tokenizer".into()),
                    }
                };
                match id {
                    Ok(id) => {
                        self.waiting_for_embedding = Some(id);
                        request = Some(EditorRequest::Embedding(id));
                    }
                    Err(e) => self.message = Some((true, e)),
                }
            }
        });
        self.interpolation_ui(ui, info);
        self.files_ui(ui, info);
        if let Some(r) = self.adapter_ui(ui) {
            request = Some(r);
        }
        ui.horizontal(|ui| {
            if ui
                .add_enabled(self.can_undo(), egui::Button::new("↶ undo"))
                .clicked()
            {
                self.undo();
            }
            if ui
                .add_enabled(self.can_redo(), egui::Button::new("↷ redo"))
                .clicked()
            {
                self.redo();
            }
        });
        if let Some(m) = &self.message {
            crate::app::status_line(ui, m);
        }

        // The per-dimension sliders: a filtered, virtualized list (only visible rows are laid out).
        ui.horizontal(|ui| {
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.filter)
                    .hint_text("e.g. 0-63, 100")
                    .desired_width(100.0),
            );
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "filter dims"));
            ui.add(
                egui::DragValue::new(&mut self.range)
                    .speed(0.05)
                    .range(0.01..=1000.0)
                    .prefix("± "),
            )
            .on_hover_text("slider range");
        });
        let len = current.len();
        if self.filtered.0 != self.filter || self.filtered.1 != len {
            let list = parse_filter(&self.filter, len);
            self.filtered = (self.filter.clone(), len, list.clone().unwrap_or_default());
            if let Err(e) = list {
                self.message = Some((true, format!("filter {e}")));
            }
        }
        let indices = std::mem::take(&mut self.filtered.2);
        ui.label(
            egui::RichText::new(format!("{} of {len} dims", indices.len()))
                .small()
                .weak(),
        );
        let row_h = ui.spacing().interact_size.y;
        let range = self.range;
        let mut edits: Vec<(usize, f32, egui::Id)> = Vec::new();
        let mut first = None;
        // Inside the controls' own scroll area: at most what is left of its visible part (at least
        // six rows), so the list scrolls on its own instead of growing without end.
        let visible = ui.clip_rect().bottom() - ui.cursor().top();
        let list_h = visible.clamp(6.0 * row_h, ui.clip_rect().height().max(6.0 * row_h));
        egui::ScrollArea::vertical()
            .id_salt("dims")
            .max_height(list_h)
            .auto_shrink([false, true])
            .show_rows(ui, row_h, indices.len(), |ui, rows| {
                for &i in &indices[rows] {
                    let mut v = current[i];
                    let resp = ui.add(
                        egui::Slider::new(&mut v, -range..=range)
                            .text(format!("d{i}"))
                            .clamping(egui::SliderClamping::Never)
                            .fixed_decimals(3),
                    );
                    if first.is_none() {
                        first = Some((i, resp.rect, ui.spacing().slider_width));
                    }
                    if resp.changed() {
                        edits.push((i, v, resp.id));
                    }
                }
            });
        self.filtered.2 = indices;
        self.first_slider = first;
        for (i, v, id) in edits {
            self.set_dim(i, v, Some(id));
        }
        request
    }

    fn interpolation_ui(&mut self, ui: &mut egui::Ui, info: &ModelInfo) {
        egui::CollapsingHeader::new("interpolate between two saved prefixes")
            .id_salt("interp")
            .show(ui, |ui| {
                for second in [false, true] {
                    ui.horizontal(|ui| {
                        ui.label(if second { "B" } else { "A" });
                        let text = if second {
                            &mut self.interp.b_path
                        } else {
                            &mut self.interp.a_path
                        };
                        ui.add(
                            egui::TextEdit::singleline(text)
                                .desired_width(130.0)
                                .hint_text("prefix file"),
                        );
                        if ui.button("…").clicked() {
                            if let Some(p) = prefix_dialog().pick_file() {
                                *text = p.display().to_string();
                            }
                        }
                        if ui.button("load").clicked() {
                            self.load_interp_end(second, info);
                        }
                        let loaded = if second {
                            self.interp.b.is_some()
                        } else {
                            self.interp.a.is_some()
                        };
                        ui.label(if loaded { "loaded" } else { "" });
                    });
                }
                let ready = self.interp.a.is_some() && self.interp.b.is_some();
                let mut t = self.interp.t;
                let resp = ui.add_enabled(
                    ready,
                    egui::Slider::new(&mut t, 0.0..=1.0).text("t (A → B)"),
                );
                if resp.changed() {
                    self.interp.t = t;
                    self.apply_interpolation(Some(resp.id));
                }
            });
    }

    /// The path typed in the box, else one picked in a file dialog (and then shown in the box).
    /// Neither (a cancelled dialog, or none on this system) leaves a message saying what to do.
    fn chosen_path(&mut self, save: bool) -> Option<PathBuf> {
        let use_dialog = self.file_path.trim().is_empty();
        self.typed_or_picked(
            use_dialog,
            "no file chosen: type the prefix path in the box",
            || {
                let dialog = prefix_dialog();
                if save {
                    dialog.save_file()
                } else {
                    dialog.pick_file()
                }
            },
        )
    }

    /// The prefix editor's one path rule, for prefix files and PEFT adapters alike: the path typed
    /// in the box, or (when `use_dialog`) what `pick` returns, shown in the box afterwards; nothing
    /// chosen leaves `nothing` as the message.
    pub(super) fn typed_or_picked(
        &mut self,
        use_dialog: bool,
        nothing: &str,
        pick: impl FnOnce() -> Option<PathBuf>,
    ) -> Option<PathBuf> {
        let path = if use_dialog {
            pick()
        } else {
            Some(PathBuf::from(self.file_path.trim()))
        };
        match &path {
            Some(p) => self.file_path = p.display().to_string(),
            None => self.message = Some((true, nothing.into())),
        }
        path
    }

    fn files_ui(&mut self, ui: &mut egui::Ui, info: &ModelInfo) {
        ui.horizontal(|ui| {
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.file_path)
                    .desired_width(120.0)
                    .hint_text("prefix.npz"),
            );
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "prefix file"));
            if ui.button("load prefix…").clicked() {
                if let Some(p) = self.chosen_path(false) {
                    self.load_file(&p, info);
                }
            }
            if ui.button("save prefix…").clicked() {
                if let Some(p) = self.chosen_path(true) {
                    self.save_file(&p);
                }
            }
        });
    }
}

/// A file dialog for the prefix formats `Prefix::load` reads.
fn prefix_dialog() -> rfd::FileDialog {
    rfd::FileDialog::new().add_filter("prefix", &["npz", "npy", "safetensors"])
}
