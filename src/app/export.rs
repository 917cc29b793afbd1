//! The export row under the views: Export figure (SVG, PNG, PDF), Export data (CSV, JSON, NPZ, NPY)
//! and Copy PNG, for the visible views of the shown head or the one chosen. Every file and pixel comes
//! from `prefixscope::figure` (the same drawing as `prefixscope render`); this panel only picks the
//! path, the views and the options, and shows the library's one-line message.

use crate::arrays::extension;
use crate::capture::Capture;
use crate::error::Error;
use crate::figure::{export_views, views_rgba, ExportOptions, ViewKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FIGURE_EXTS: [&str; 3] = ["svg", "png", "pdf"];
const DATA_EXTS: [&str; 4] = ["csv", "json", "npz", "npy"];

/// What is exported: the shown capture, its token labels and the selected head.
pub struct ExportData<'a> {
    pub capture: &'a Capture,
    pub labels: &'a [String],
    pub layer: usize,
    pub head: usize,
    /// The colour map on screen: the exported figure uses it too.
    pub cmap: crate::colormap::ColorMap,
    /// The value scale on screen (linear, log, power): the exported figure uses it too.
    pub value_scale: crate::colormap::ValueScale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Figure,
    Data,
}

/// The export settings and the last outcome.
#[derive(Debug, Clone)]
pub struct ExportPanel {
    /// The output path box: where the buttons write when it is filled, and the fallback when no file
    /// dialog is available.
    pub path_text: String,
    /// Replace an existing file; without it an existing file is refused with a message.
    pub overwrite: bool,
    /// One view only; `None` exports every visible view.
    pub chosen: Option<ViewKind>,
    /// PNG scale (figure and clipboard).
    pub scale: f32,
    /// The last outcome: (is an error, one line).
    pub message: Option<(bool, String)>,
}

impl Default for ExportPanel {
    fn default() -> Self {
        ExportPanel {
            path_text: String::new(),
            overwrite: false,
            chosen: None,
            scale: 2.0,
            message: None,
        }
    }
}

/// The views the central panel shows for a capture: all four with a prefix, else the pretrained one.
pub fn visible_views(cap: &Capture) -> Vec<ViewKind> {
    if cap.p > 0 {
        vec![
            ViewKind::Raw,
            ViewKind::Renormalized,
            ViewKind::Pretrained,
            ViewKind::Difference,
        ]
    } else {
        vec![ViewKind::Pretrained]
    }
}

impl ExportPanel {
    fn views(&self, cap: &Capture) -> Vec<ViewKind> {
        self.chosen.map_or_else(|| visible_views(cap), |v| vec![v])
    }

    fn options(&self, data: &ExportData<'_>) -> ExportOptions {
        ExportOptions {
            scale: self.scale,
            overwrite: self.overwrite,
            cmap: Some(data.cmap),
            value_scale: data.value_scale,
            ..Default::default()
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, data: &ExportData<'_>) {
        // Wrapped: the row is wider than a narrow central panel.
        ui.horizontal_wrapped(|ui| {
            ui.label(egui::RichText::new("Export").strong());
            let resp = ui.add(
                egui::TextEdit::singleline(&mut self.path_text)
                    .hint_text("path: .svg .png .pdf .csv .json .npz")
                    .desired_width((ui.available_width() - 670.0).clamp(140.0, 360.0)),
            );
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::TextInput, true, "export path")
            });
            let chosen = self.chosen.map_or("visible views", |v| v.name());
            let views = egui::ComboBox::from_id_salt("export views")
                .selected_text(chosen)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.chosen, None, "visible views");
                    for v in visible_views(data.capture) {
                        ui.selectable_value(&mut self.chosen, Some(v), v.name());
                    }
                });
            // No visible label (the row is narrow): the name screen readers and tests find them by.
            named_combo(&views.response, "export views", chosen);
            let scale = egui::ComboBox::from_id_salt("export scale")
                .selected_text(format!("PNG {}x", self.scale))
                .show_ui(ui, |ui| {
                    for s in [1.0, 2.0, 4.0] {
                        ui.selectable_value(&mut self.scale, s, format!("PNG {s}x"));
                    }
                });
            named_combo(
                &scale.response,
                "export scale",
                &format!("PNG {}x", self.scale),
            );
            ui.checkbox(&mut self.overwrite, "overwrite");
            if ui.button("Export figure").clicked() {
                self.export(Kind::Figure, data);
            }
            if ui.button("Export data").clicked() {
                self.export(Kind::Data, data);
            }
            if ui.button("Copy PNG").clicked() {
                self.copy_png(ui.ctx(), data);
            }
        });
        if let Some(m) = &self.message {
            super::status_line(ui, m);
        }
    }

    /// The path box when filled, else a save dialog; `None` (with a note) when neither gives one.
    fn target(&mut self, kind: Kind, data: &ExportData<'_>) -> Option<PathBuf> {
        let typed = self.path_text.trim();
        if !typed.is_empty() {
            return Some(PathBuf::from(typed));
        }
        let (exts, default): (&[&str], &str) = match kind {
            Kind::Figure => (&FIGURE_EXTS, "svg"),
            Kind::Data => (&DATA_EXTS, "json"),
        };
        let asked = Instant::now();
        let picked = rfd::FileDialog::new()
            .add_filter(
                if kind == Kind::Figure {
                    "figure"
                } else {
                    "data"
                },
                exts,
            )
            .set_file_name(format!("layer{}_head{}.{default}", data.layer, data.head))
            .save_file();
        match picked {
            Some(mut p) => {
                if extension(&p).is_empty() {
                    p.set_extension(default);
                }
                self.path_text = p.display().to_string();
                Some(p)
            }
            None => {
                // rfd answers None at once when there is no dialog (no desktop portal); later, the
                // user cancelled.
                self.message = (asked.elapsed() < Duration::from_millis(500)).then(|| {
                    (true, "No file dialog is available here: type the output path in the box, then click again.".to_string())
                });
                None
            }
        }
    }

    fn export(&mut self, kind: Kind, data: &ExportData<'_>) {
        let Some(path) = self.target(kind, data) else {
            return;
        };
        self.message = Some(match self.write(kind, data, &path) {
            Ok(()) => (false, format!("wrote {}", path.display())),
            Err(e) => (true, e.one_line()),
        });
    }

    fn write(&self, kind: Kind, data: &ExportData<'_>, path: &Path) -> crate::Result<()> {
        // Each button writes its own kind: a data extension under Export figure (or the reverse) is
        // refused rather than silently writing the other kind.
        let ext = extension(path);
        let (ok, what, expected): (&[&str], _, _) = match kind {
            Kind::Figure => (&FIGURE_EXTS, "figure format", ".svg, .png, .pdf"),
            Kind::Data => (&DATA_EXTS, "data format", ".csv, .json, .npy, .npz"),
        };
        if !ok.contains(&ext.as_str()) {
            return Err(Error::unsupported(
                path,
                what,
                format!("'.{ext}'"),
                expected,
            ));
        }
        export_views(
            data.capture,
            data.labels,
            data.layer,
            data.head,
            &self.views(data.capture),
            path,
            &self.options(data),
        )
    }

    fn copy_png(&mut self, ctx: &egui::Context, data: &ExportData<'_>) {
        let views = self.views(data.capture);
        self.message = Some(
            match views_rgba(
                data.capture,
                data.labels,
                data.layer,
                data.head,
                &views,
                &self.options(data),
            ) {
                Ok((w, h, rgba)) => {
                    ctx.copy_image(egui::ColorImage::from_rgba_unmultiplied(
                        [w as usize, h as usize],
                        &rgba,
                    ));
                    (
                        false,
                        format!("copied a {w}\u{d7}{h} image to the clipboard"),
                    )
                }
                Err(e) => (true, e.one_line()),
            },
        );
    }
}

/// Give a label-less combo box an accessible name (and keep its current value).
fn named_combo(r: &egui::Response, name: &str, value: &str) {
    r.widget_info(|| {
        let mut info = egui::WidgetInfo::labeled(egui::Role::ComboBox, r.enabled(), name);
        info.current_text_value = Some(value.to_string());
        info
    });
}
