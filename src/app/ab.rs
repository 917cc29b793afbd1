//! A/B: pin the current prefix as A, keep editing B (the live prefix), and see B − A of the raw and
//! the renormalized maps of the viewed layer and head, on the diverging scale (0 white) the
//! difference view uses, with its colour bar, a hover readout and what A is (kind, length, when it
//! was pinned).
//!
//! A's maps come from the compute thread ([`super::worker::Worker::compute_pinned`]) for the prompt
//! and layer on screen; the panel draws a difference only when A's answer is for exactly the tokens,
//! model and layer of B's answer on screen, so a prompt or model change never shows a stale A: it
//! says "computing A for …" until A's new maps arrive, or why A cannot be computed (its kind or shape
//! no longer fits the model). Raw maps of different prefix lengths share only their content
//! columns, and the panel says so.
//!
//! A is saved with the session (`autosave-pinned.npz` beside the prefix autosave) and restored on
//! start. The export writes the two difference maps with the screen's colour map and limit
//! (`figure::svg::Scale::Diverging`, the same `crate::colormap::diverging` table).

use super::colormap::diverging;
use super::worker::Computed;
use super::ViewsPanel;
use crate::capture::LayerCapture;
use crate::figure::svg::{Figure, Heatmap, Panel, Scale};
use crate::prefix::{Prefix, PrefixKind};
use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};
use std::path::Path;

/// What the session keeps about A besides its values (those are in the `.npz` beside it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PinnedMeta {
    pub kind: PrefixKind,
    pub len: usize,
    /// When A was pinned, in seconds since 1970 (UTC).
    pub pinned_unix: u64,
}

/// The pinned prefix A.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub prefix: Prefix,
    pub meta: PinnedMeta,
    /// Increases with every pin: A's answers carry the version they were computed for.
    pub version: u64,
}

impl PinnedMeta {
    /// "A: per-layer prefix (paper), P = 3, pinned 2026-11-30 17:45 UTC".
    pub fn describe(&self) -> String {
        format!(
            "A: {}, P = {}, pinned {}",
            self.kind.label(),
            self.len,
            utc_minute(self.pinned_unix)
        )
    }
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (the civil-from-days algorithm of H. Hinnant's `date`).
pub fn utc_minute(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3_600,
        secs % 3_600 / 60
    )
}

/// B − A of one head: the raw maps (`rows x raw_cols`, with the prefix columns when both prefixes
/// have the same length, else the content columns only) and the renormalized maps (`rows x rows`).
/// Keys after the query (the causal mask) are NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct AbMaps {
    pub n: usize,
    /// Prefix columns at the start of `raw` (0 when A's and B's lengths differ).
    pub raw_p: usize,
    pub raw: Vec<f32>,
    pub renorm: Vec<f32>,
    /// max |B − A| over both maps.
    pub max_abs: f32,
    /// `max_abs`, at least 1e-6 (so float rounding stays near white): the colour bar runs from
    /// −limit to +limit.
    pub limit: f32,
    /// (P of A, P of B).
    pub lens: (usize, usize),
}

impl AbMaps {
    pub fn raw_cols(&self) -> usize {
        self.raw_p + self.n
    }
}

/// B − A of one head from the two layers' captures (`pa`, `pb`: their prefix lengths; `ha`, `hb`: the
/// head's index in each capture's head axis, which differ when one answer holds the viewed head only,
/// `Computed::head_index`). An error names what is missing (a capture without a prefix has no raw or
/// renormalized map).
pub fn difference(
    (a, pa, ha): (&LayerCapture, usize, usize),
    (b, pb, hb): (&LayerCapture, usize, usize),
) -> Result<AbMaps, String> {
    let (Some(wa), Some(wb), Some(ra), Some(rb)) = (
        &a.with_prefix,
        &b.with_prefix,
        &a.renormalized,
        &b.renormalized,
    ) else {
        return Err("A or B has no prefix: there is no raw or renormalized map to compare".into());
    };
    let n = b.pretrained.shape[1];
    if a.pretrained.shape[1] != n || ha >= a.n_heads() || hb >= b.n_heads() {
        return Err(format!(
            "A's maps ({} queries, {} heads) do not match B's ({n} queries, {} heads)",
            a.pretrained.shape[1],
            a.n_heads(),
            b.n_heads()
        ));
    }
    let raw_p = if pa == pb { pa } else { 0 };
    let cols = raw_p + n;
    let (ca, cb) = (pa + n, pb + n);
    let mut raw = vec![f32::NAN; n * cols];
    let mut renorm = vec![f32::NAN; n * n];
    for i in 0..n {
        // Prefix columns (same length only), then the visible content keys j <= i.
        for k in 0..raw_p {
            raw[i * cols + k] = wb.data[(hb * n + i) * cb + k] - wa.data[(ha * n + i) * ca + k];
        }
        for j in 0..=i {
            raw[i * cols + raw_p + j] =
                wb.data[(hb * n + i) * cb + pb + j] - wa.data[(ha * n + i) * ca + pa + j];
            renorm[i * n + j] = rb.data[(hb * n + i) * n + j] - ra.data[(ha * n + i) * n + j];
        }
    }
    let max_abs = raw
        .iter()
        .chain(&renorm)
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    Ok(AbMaps {
        n,
        raw_p,
        raw,
        renorm,
        max_abs,
        limit: max_abs.max(1e-6),
        lens: (pa, pb),
    })
}

/// The screen's colour of a difference `v` on the scale −limit..+limit (the exported figure's
/// `Scale::Diverging` maps it through the same table).
pub fn cell_colour(v: f32, limit: f32) -> Color32 {
    if !v.is_finite() {
        return Color32::TRANSPARENT;
    }
    diverging((v / limit).clamp(-1.0, 1.0))
}

/// The cell under the pointer: its query row, its key (`None`: prefix column `k`), and B − A there.
#[derive(Debug, Clone, PartialEq)]
pub struct AbHover {
    pub row: usize,
    /// The content key, or `None` for a prefix column of the raw map.
    pub key: Option<usize>,
    pub prefix_col: Option<usize>,
    pub raw: Option<f32>,
    pub renorm: Option<f32>,
    pub text: String,
}

/// The key of A's answer the panel waits for: (model generation, token ids, layer, A's version).
type AskKey = (u64, Vec<u32>, usize, u64);

#[derive(Default)]
pub struct AbPanel {
    pub pinned: Option<Pinned>,
    next_version: u64,
    next_gen: u64,
    /// The A request last sent (its generation and what it asked for).
    asked: Option<(u64, AskKey)>,
    /// The head that request asked for: on the long-prompt path the answer holds that head only, so a
    /// head switch asks again unless the answer holds every head.
    asked_head: usize,
    /// A's newest answer.
    pub answer: Option<Box<Computed>>,
    /// Why A has no maps now (it no longer fits the model, or the worker refused it).
    pub error: Option<String>,
    /// The cell under the pointer in the last frame.
    pub hovered: Option<AbHover>,
    /// The difference on screen (for the export and the tests).
    pub maps: Option<AbMaps>,
    textures: Option<(u64, [egui::TextureHandle; 2])>,
    pub export_path: String,
    pub overwrite: bool,
    pub message: Option<(bool, String)>,
    /// The A version written to the autosave.
    pub saved_version: Option<u64>,
}

/// What the panel asks of the app.
pub enum AbAction {
    Unpin,
}

impl AbPanel {
    /// Pin `prefix` as A, now.
    pub fn pin(&mut self, prefix: Prefix) {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let meta = PinnedMeta {
            kind: prefix.kind(),
            len: prefix.len(),
            pinned_unix: unix,
        };
        self.restore(prefix, meta);
    }

    /// Make `prefix` A with the session's `meta` (a restored pin keeps its time).
    pub fn restore(&mut self, prefix: Prefix, meta: PinnedMeta) {
        self.next_version += 1;
        self.pinned = Some(Pinned {
            prefix,
            meta,
            version: self.next_version,
        });
        self.clear_answer();
    }

    pub fn unpin(&mut self) {
        self.pinned = None;
        self.clear_answer();
    }

    fn clear_answer(&mut self) {
        self.answer = None;
        self.error = None;
        self.asked = None;
        self.maps = None;
        self.hovered = None;
        self.textures = None;
    }

    /// The request for A's maps of `layer` on `ids`, when it differs from the last one sent; `Err`
    /// (shown in the panel) when A no longer fits the model.
    pub fn request(
        &mut self,
        info: &crate::model::ModelInfo,
        model_gen: u64,
        ids: &[u32],
        layer: usize,
        head: usize,
    ) -> Option<super::worker::ComputeRequest> {
        let pin = self.pinned.as_ref()?;
        let key: AskKey = (model_gen, ids.to_vec(), layer, pin.version);
        if let Some((gen, k)) = &self.asked {
            let all_heads = self
                .answer
                .as_ref()
                .is_some_and(|a| a.gen == *gen && a.only_head.is_none());
            if *k == key && (self.asked_head == head || all_heads) {
                return None;
            }
        }
        if let Err(e) = pin.prefix.check(info, Path::new("pinned prefix A")) {
            self.error = Some(format!(
                "A ({}, P = {}) does not fit this model: {}",
                pin.meta.kind.label(),
                pin.meta.len,
                e.one_line()
            ));
            self.asked = Some((0, key));
            return None;
        }
        self.error = None;
        self.next_gen += 1;
        self.asked = Some((self.next_gen, key));
        self.asked_head = head;
        Some(super::worker::ComputeRequest {
            gen: self.next_gen,
            model_gen,
            ids: ids.to_vec(),
            prefix: Some(pin.prefix.clone()),
            view_layer: layer,
            view_head: head,
        })
    }

    /// A's answer arrived; kept only when it answers the newest request.
    pub fn arrived(&mut self, c: Box<Computed>) {
        if self.asked.as_ref().is_some_and(|(g, _)| *g == c.gen) {
            self.answer = Some(c);
            self.error = None;
        }
    }

    pub fn failed(&mut self, gen: u64, message: String) {
        if self.asked.as_ref().is_some_and(|(g, _)| *g == gen) {
            self.error = Some(format!("A could not be computed: {message}"));
        }
    }

    /// A's layer capture, prefix length and index of `head` when A's answer is for exactly B's
    /// tokens, model, the viewed layer and holds that head.
    fn a_for<'a>(
        &'a self,
        b: &Computed,
        layer: usize,
        head: usize,
    ) -> Option<(&'a LayerCapture, usize, usize)> {
        let pin = self.pinned.as_ref()?;
        let (_, key) = self.asked.as_ref()?;
        let a = self.answer.as_ref()?;
        let current = key.3 == pin.version
            && a.gen == self.asked.as_ref()?.0
            && a.model_gen == b.model_gen
            && a.capture.token_ids == b.capture.token_ids;
        if !current {
            return None;
        }
        Some((a.capture.layer(layer)?, a.capture.p, a.head_index(head)?))
    }

    /// The panel: what A and B are, the two difference maps, the colour bar and the hover line.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        b: &Computed,
        labels: &[String],
        views: &ViewsPanel,
    ) -> Option<AbAction> {
        let Some(pin) = &self.pinned else {
            return None;
        };
        let (layer, head) = (views.layer, views.head);
        // The panel keeps its height (a resizable panel otherwise shrinks to a short first content).
        ui.set_min_height(ui.available_height());
        let mut action = None;
        ui.horizontal_wrapped(|ui| {
            ui.label(
                egui::RichText::new(format!("A/B · layer {layer}, head {head}: B − A"))
                    .strong()
                    .size(15.0),
            );
            ui.separator();
            ui.label(egui::RichText::new(pin.meta.describe()).strong())
                .on_hover_text("the pinned prefix; B is the live prefix in the editor");
            ui.label(format!("· B: the live prefix, P = {}", b.capture.p));
            if ui
                .button("✕ unpin")
                .on_hover_text("unpin A: close the A/B panel")
                .clicked()
            {
                action = Some(AbAction::Unpin);
            }
        });
        if action.is_some() {
            return action;
        }
        let b_layer = b.capture.layer(layer);
        let maps = match (b_layer, b.head_index(head), self.a_for(b, layer, head)) {
            (Some(bl), Some(hb), Some((al, pa, ha))) => {
                difference((al, pa, ha), (bl, b.capture.p, hb))
            }
            _ => Err(match &self.error {
                Some(e) => e.clone(),
                None => format!(
                    "computing A for these {} tokens, layer {layer}…",
                    b.capture.token_ids.len()
                ),
            }),
        };
        let maps = match maps {
            Ok(m) => m,
            Err(why) => {
                self.maps = None;
                self.hovered = None;
                let col = if self.error.is_some() {
                    ui.visuals().error_fg_color
                } else {
                    ui.visuals().weak_text_color()
                };
                let r = ui.colored_label(col, &why);
                r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, &why));
                return None;
            }
        };
        self.export_row(ui, &maps, labels, layer, head, &pin.meta.describe());
        self.draw(ui, &maps, labels, b, layer, head);
        self.maps = Some(maps);
        None
    }

    fn export_row(
        &mut self,
        ui: &mut egui::Ui,
        maps: &AbMaps,
        labels: &[String],
        layer: usize,
        head: usize,
        a_label: &str,
    ) {
        ui.horizontal(|ui| {
            // Rounding level: A and B give the same maps (A is computed from scratch, B by the
            // incremental evaluator, so equal prefixes differ by float rounding only).
            let same = if maps.max_abs <= 1e-6 {
                " (rounding level: the same maps)"
            } else {
                ""
            };
            ui.label(format!("max |B − A| = {:.2e}{same}", maps.max_abs));
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.export_path)
                    .hint_text("path: .svg .png .pdf .csv .json .npz")
                    .desired_width(260.0),
            );
            r.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::TextInput, true, "A/B export path")
            });
            ui.checkbox(&mut self.overwrite, "overwrite");
            if ui.button("Export A/B").clicked() {
                let path = std::path::PathBuf::from(self.export_path.trim());
                self.message = Some(
                    match export(maps, labels, layer, head, a_label, &path, self.overwrite) {
                        Ok(()) => (false, format!("wrote {}", path.display())),
                        Err(e) => (true, e.one_line()),
                    },
                );
            }
            if let Some(m) = &self.message {
                super::status_line(ui, m);
            }
        });
    }

    fn draw(
        &mut self,
        ui: &mut egui::Ui,
        maps: &AbMaps,
        labels: &[String],
        b: &Computed,
        layer: usize,
        head: usize,
    ) {
        const TITLE: f32 = 18.0;
        const LEFT: f32 = 64.0;
        const BELOW: f32 = 22.0;
        const GAP: f32 = 24.0;
        const BAR: f32 = 80.0;
        let n = maps.n;
        let avail = ui.available_size() - Vec2::new(0.0, 22.0);
        let cell = ((avail.x - LEFT - GAP - BAR) / (maps.raw_cols() + n) as f32)
            .min((avail.y - TITLE - BELOW) / n as f32)
            .clamp(0.5, 40.0);
        let map_h = cell * n as f32;
        let widths = [cell * maps.raw_cols() as f32, cell * n as f32];
        let size = Vec2::new(
            LEFT + widths[0] + GAP + widths[1] + BAR,
            TITLE + map_h + BELOW,
        );
        let (block, _) = ui.allocate_exact_size(size, Sense::hover());
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let a = self.answer.as_ref().map(|a| (a.gen, a.model_gen));
            (a, b.gen, b.model_gen, b.full, layer, head).hash(&mut h);
            h.finish()
        };
        if self.textures.as_ref().is_none_or(|(k, _)| *k != key) {
            let tex = |name: &str, vals: &[f32], cols: usize| {
                let px: Vec<Color32> = vals.iter().map(|&v| cell_colour(v, maps.limit)).collect();
                ui.ctx().load_texture(
                    name,
                    egui::ColorImage::new([cols, n], px),
                    egui::TextureOptions::NEAREST,
                )
            };
            self.textures = Some((
                key,
                [
                    tex("ab raw", &maps.raw, maps.raw_cols()),
                    tex("ab renorm", &maps.renorm, n),
                ],
            ));
        }
        let Some((_, tex)) = &self.textures else {
            return;
        };
        let painter = ui.painter();
        let text_col = ui.visuals().text_color();
        let weak = ui.visuals().weak_text_color();
        let font = egui::FontId::proportional(11.0);
        let label = |i: usize| labels.get(i).map_or("?", |s| s.as_str());
        let step = super::views::label_step(cell);
        let x0 = block.left() + LEFT;
        let rects = [
            Rect::from_min_size(
                Pos2::new(x0, block.top() + TITLE),
                Vec2::new(widths[0], map_h),
            ),
            Rect::from_min_size(
                Pos2::new(x0 + widths[0] + GAP, block.top() + TITLE),
                Vec2::new(widths[1], map_h),
            ),
        ];
        let titles = [
            if maps.raw_p > 0 || maps.lens.0 == 0 {
                "raw, with prefix: B − A".to_string()
            } else {
                format!(
                    "raw: B − A, content keys only (P: A {}, B {})",
                    maps.lens.0, maps.lens.1
                )
            },
            "renormalized over content: B − A".to_string(),
        ];
        // Short titles over narrow maps.
        let shown_titles = [
            (titles[0].as_str(), "raw B − A"),
            (titles[1].as_str(), "renorm. B − A"),
        ]
        .map(|(full, short)| {
            let w = painter
                .layout_no_wrap(full.into(), egui::FontId::proportional(13.0), text_col)
                .size()
                .x;
            (w, full, short)
        });
        let mut hovered = None;
        for (k, rect) in rects.iter().enumerate() {
            painter.rect_filled(*rect, 0.0, ui.visuals().panel_fill);
            painter.image(
                tex[k].id(),
                *rect,
                Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
                Color32::WHITE,
            );
            let (w, full, short) = shown_titles[k];
            painter.text(
                Pos2::new(rect.center().x, block.top() + 1.0),
                egui::Align2::CENTER_TOP,
                if w <= rect.width() + GAP - 4.0 {
                    full
                } else {
                    short
                },
                egui::FontId::proportional(13.0),
                text_col,
            );
            if k == 0 && maps.raw_p > 0 {
                let xd = rect.left() + cell * maps.raw_p as f32;
                painter.line_segment(
                    [
                        Pos2::new(xd, rect.top() - 3.0),
                        Pos2::new(xd, rect.bottom() + 3.0),
                    ],
                    Stroke::new(2.0, Color32::from_rgb(90, 170, 255)),
                );
            }
            painter.text(
                Pos2::new(rect.center().x, rect.bottom() + 4.0),
                egui::Align2::CENTER_TOP,
                "key",
                egui::FontId::proportional(12.0),
                weak,
            );
            let resp = ui.interact(*rect, ui.scope_id().with(("ab map", k)), Sense::hover());
            let access = format!(
                "A/B {} heatmap, layer {layer}, head {head}, {n} queries",
                titles[k]
            );
            resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &access));
            if let Some(pos) = resp.hover_pos() {
                let c = ((pos.x - rect.left()) / cell).floor() as usize;
                let r = ((pos.y - rect.top()) / cell).floor() as usize;
                let cols = if k == 0 { maps.raw_cols() } else { n };
                if r < n && c < cols {
                    painter.rect_stroke(
                        Rect::from_min_size(
                            Pos2::new(rect.left() + c as f32 * cell, rect.top() + r as f32 * cell),
                            Vec2::splat(cell.max(2.0)),
                        ),
                        0.0,
                        Stroke::new(1.5, Color32::BLACK),
                        egui::StrokeKind::Outside,
                    );
                    let (key, prefix_col) = if k == 0 && c < maps.raw_p {
                        (None, Some(c))
                    } else if k == 0 {
                        (Some(c - maps.raw_p), None)
                    } else {
                        (Some(c), None)
                    };
                    hovered = Some(hover(maps, labels, r, key, prefix_col));
                }
            }
        }
        // Row labels, thinned by the views' rule.
        for r in super::views::labelled(0..n, step) {
            painter.text(
                Pos2::new(x0 - 4.0, rects[0].top() + (r as f32 + 0.5) * cell),
                egui::Align2::RIGHT_CENTER,
                super::views::axis_label(label(r)),
                font.clone(),
                text_col,
            );
        }
        painter.text(
            Pos2::new(block.left(), rects[0].center().y),
            egui::Align2::LEFT_CENTER,
            "query",
            egui::FontId::proportional(12.0),
            weak,
        );
        self.colour_bar(
            ui,
            Pos2::new(rects[1].right() + 8.0, rects[1].top()),
            map_h,
            maps.limit,
        );
        let text = match &hovered {
            Some(h) => h.text.clone(),
            None => "hover a cell: B − A there, and B's and A's values".to_string(),
        };
        self.hovered = hovered;
        let r = ui.label(egui::RichText::new(&text).small().monospace());
        r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, &text));
    }

    fn colour_bar(&self, ui: &egui::Ui, top_left: Pos2, height: f32, limit: f32) {
        let height = height.max(30.0);
        let bar = Rect::from_min_size(top_left, Vec2::new(12.0, height));
        let painter = ui.painter();
        let steps = 64;
        let mut mesh = egui::Mesh::default();
        for k in 0..steps {
            let t = 1.0 - (k as f32 + 0.5) / steps as f32;
            let y0 = bar.top() + height * k as f32 / steps as f32;
            mesh.add_colored_rect(
                Rect::from_min_max(
                    Pos2::new(bar.left(), y0),
                    Pos2::new(bar.right(), y0 + height / steps as f32 + 0.5),
                ),
                cell_colour((2.0 * t - 1.0) * limit, limit),
            );
        }
        painter.add(egui::Shape::mesh(mesh));
        let text_col = ui.visuals().text_color();
        for (t, v) in [(1.0, limit), (0.5, 0.0), (0.0, -limit)] {
            let y = bar.bottom() - t * height;
            painter.line_segment(
                [Pos2::new(bar.right(), y), Pos2::new(bar.right() + 3.0, y)],
                Stroke::new(1.0, text_col),
            );
            let text = if v == 0.0 {
                "0".to_string()
            } else {
                format!("{v:+.1e}")
            };
            painter.text(
                Pos2::new(bar.right() + 5.0, y),
                egui::Align2::LEFT_CENTER,
                text,
                egui::FontId::proportional(10.0),
                text_col,
            );
        }
        let label = format!("A/B colour bar: B − A, −{limit:.2e} to +{limit:.2e}, 0 white");
        let resp = ui.interact(bar, ui.scope_id().with("ab colour bar"), Sense::hover());
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &label));
    }
}

/// The readout of one cell: B − A of both maps where they have the cell, or "masked".
fn hover(
    maps: &AbMaps,
    labels: &[String],
    r: usize,
    key: Option<usize>,
    prefix_col: Option<usize>,
) -> AbHover {
    let label = |i: usize| labels.get(i).map_or("?", |s| s.as_str());
    let q = format!("query {r} '{}'", label(r));
    let n = maps.n;
    let (what, raw, renorm) = match (key, prefix_col) {
        (_, Some(k)) => (
            format!(
                "prefix column {}",
                crate::figure::prefix_labels(maps.raw_p)[k]
            ),
            Some(maps.raw[r * maps.raw_cols() + k]),
            None,
        ),
        (Some(j), None) if j > r => {
            return AbHover {
                row: r,
                key,
                prefix_col,
                raw: None,
                renorm: None,
                text: format!(
                    "{q} → key {j} '{}': masked (the causal mask hides it)",
                    label(j)
                ),
            }
        }
        (Some(j), None) => (
            format!("key {j} '{}'", label(j)),
            Some(maps.raw[r * maps.raw_cols() + maps.raw_p + j]),
            Some(maps.renorm[r * n + j]),
        ),
        (None, None) => (String::new(), None, None),
    };
    let mut text = format!("{q} → {what}:");
    if let Some(v) = raw {
        text += &format!(" B−A raw {v:+.6e}");
    }
    if let Some(v) = renorm {
        text += &format!(" · B−A renormalized {v:+.6e}");
    }
    AbHover {
        row: r,
        key,
        prefix_col,
        raw,
        renorm,
        text,
    }
}

/// The two difference maps as figure panels, on the screen's diverging scale and limit.
pub fn heatmaps(
    maps: &AbMaps,
    labels: &[String],
    layer: usize,
    head: usize,
) -> crate::Result<Vec<Heatmap>> {
    let scale = Scale::Diverging { limit: maps.limit };
    let mut cols = crate::figure::prefix_labels(maps.raw_p);
    cols.truncate(maps.raw_p);
    cols.extend_from_slice(labels);
    let mut raw = crate::figure::attention_heatmap(
        format!("ab_raw_L{layer}_H{head}"),
        "raw: B − A",
        labels,
        &cols,
        &maps.raw,
        maps.raw_p,
        scale,
    )?;
    let mut renorm = crate::figure::attention_heatmap(
        format!("ab_renormalized_L{layer}_H{head}"),
        "renormalized: B − A",
        labels,
        labels,
        &maps.renorm,
        0,
        scale,
    )?;
    raw.value_label = "B − A".into();
    renorm.value_label = "B − A".into();
    Ok(vec![raw, renorm])
}

/// Write the A/B difference to `path`: a figure (`.svg`, `.png`, `.pdf`) or its data (`.csv`,
/// `.json`, `.npz`).
pub fn export(
    maps: &AbMaps,
    labels: &[String],
    layer: usize,
    head: usize,
    a_label: &str,
    path: &Path,
    overwrite: bool,
) -> crate::Result<()> {
    if path.as_os_str().is_empty() {
        return Err(crate::Error::input(
            "A/B export path",
            "a file path (.svg .png .pdf .csv .json .npz)",
            "an empty box",
        ));
    }
    let hm = heatmaps(maps, labels, layer, head)?;
    match crate::arrays::extension(path).as_str() {
        "csv" | "json" | "npz" => {
            let meta = crate::figure::data::Meta {
                token_ids: vec![],
                tokens: labels.to_vec(),
                prefix_len: maps.raw_p,
                layer: Some(layer),
                head: Some(head),
            };
            crate::figure::data::write_heatmaps(path, &hm, &meta, overwrite)
        }
        _ => {
            let mut fig = Figure::new(hm.into_iter().map(Panel::Heatmap).collect(), 2);
            fig.title = Some(format!("Layer {layer}, head {head}: B − A"));
            fig.note = Some(format!(
                "{a_label}; B: the live prefix, P = {}. Diverging scale ±{:.2e}, 0 white.",
                maps.lens.1, maps.limit
            ));
            crate::figure::save_figure(&fig, path, 2.0, overwrite)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_minute_matches_known_dates() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        // 2000-02-29 12:34:56 UTC (a leap day): 951827696.
        assert_eq!(utc_minute(951_827_696), "2000-02-29 12:34 UTC");
        // 2026-11-30 17:21:36 UTC: 1796059296.
        assert_eq!(utc_minute(1_796_059_296), "2026-11-30 17:21 UTC");
    }
}
