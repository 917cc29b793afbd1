//! The attention views of one layer and head: raw attention with the prefix columns (a divider sets
//! them apart, the prefix mass of each row as a bar beside it), the attention renormalized over the
//! content, the pretrained attention, and renormalized - pretrained on a diverging scale.
//! Everything drawn here comes from the worker's [`Computed`]; this file only maps values to colours.

use super::colormap::{diverging, ColorMap, Norm, Scale};
use super::worker::Computed;
use crate::arrays::Array;
use crate::figure::ViewKind;
use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};

/// What the views draw: the answered request and the token labels of its ids.
pub struct ViewData<'a> {
    pub computed: &'a Computed,
    pub labels: &'a [String],
}

/// The view settings (saved with the session).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewsPanel {
    pub layer: usize,
    pub head: usize,
    pub norm: Norm,
    /// What the pointer is over, shown under the maps (`None` when nothing).
    #[serde(skip)]
    pub hover: Option<String>,
}

/// A cell value of head `h` in a `(H, rows, cols)` array.
fn at(a: &Array, h: usize, r: usize, c: usize) -> f32 {
    let (rows, cols) = (a.shape[1], a.shape[2]);
    a.data[(h * rows + r) * cols + c]
}

const LABEL_PX: f32 = 11.0;

/// A token as an axis label: spaces shown as '·', control characters escaped, long ones cut.
pub fn axis_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            ' ' => '·',
            '\n' => '↵',
            '\t' => '→',
            c if c.is_control() => '?',
            c => c,
        })
        .collect();
    if out.chars().count() > 9 {
        out = out.chars().take(8).collect::<String>() + "…";
    }
    if out.is_empty() {
        out = "∅".into();
    }
    out
}

impl ViewsPanel {
    /// Keep the selection inside the model's layers and heads.
    pub fn clamp(&mut self, n_layers: usize, n_heads: usize) {
        self.layer = self.layer.min(n_layers.saturating_sub(1));
        self.head = self.head.min(n_heads.saturating_sub(1));
    }

    /// The header: which head is shown and the colour settings.
    pub fn controls_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading(format!("Layer {}, head {}", self.layer, self.head));
            ui.label("(← → layers, ↑ ↓ heads)");
            ui.separator();
            egui::ComboBox::from_label("colour map")
                .selected_text(self.norm.cmap.label())
                .show_ui(ui, |ui| {
                    for c in ColorMap::ALL {
                        ui.selectable_value(&mut self.norm.cmap, c, c.label());
                    }
                });
            egui::ComboBox::from_label("scale")
                .selected_text(self.norm.scale.label())
                .show_ui(ui, |ui| {
                    for s in Scale::ALL {
                        ui.selectable_value(&mut self.norm.scale, s, s.label());
                    }
                });
            match self.norm.scale {
                Scale::Power => {
                    ui.add(
                        egui::Slider::new(&mut self.norm.gamma, 0.1..=2.0)
                            .text("gamma")
                            .logarithmic(true),
                    );
                }
                Scale::Log => {
                    ui.add(
                        egui::Slider::new(&mut self.norm.log_floor, 1e-6..=1e-1)
                            .text("log floor")
                            .logarithmic(true),
                    );
                }
                Scale::Linear => {}
            }
        });
    }

    /// The four maps, their colour bars and the hover readout.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &ViewData<'_>) {
        let cap = &data.computed.capture;
        let Some(lc) = cap.layer(self.layer) else {
            ui.label("this layer was not captured");
            return;
        };
        let h = self.head.min(lc.n_heads().saturating_sub(1));
        let n = lc.pretrained.shape[1];
        let p = cap.p;
        let labels = data.labels;
        let label = |i: usize| labels.get(i).map(|s| s.as_str()).unwrap_or("?");
        let col_label = |c: usize, raw: bool| -> String {
            if raw && c < p {
                format!("(p{c})")
            } else {
                axis_label(label(if raw { c - p } else { c }))
            }
        };
        let diff = data
            .computed
            .difference
            .iter()
            .find(|(l, _)| *l == self.layer)
            .and_then(|(_, d)| d.as_ref());
        let diff_max = lc
            .max_renorm_diff(Some(h))
            .unwrap_or(0.0)
            // Below 1e-6 a difference is float rounding: keep such maps near white instead of
            // stretching noise over the whole colour range.
            .max(1e-6);

        // Sizes: four maps side by side (the raw one P columns wider) plus the row labels, the mass bar
        // and the gaps; cells square, no larger than fits the height we were given. A short prompt
        // leaves most of that height empty, so when two rows of two maps give clearly bigger cells
        // the maps go in a grid: raw | renormalized over pretrained | difference.
        let font = egui::FontId::proportional(LABEL_PX);
        let row_label_w = 64.0;
        let col_label_h = 58.0;
        let title_h = 20.0;
        let gap = 18.0;
        let mass_w = if lc.with_prefix.is_some() { 34.0 } else { 0.0 };
        let avail = ui.available_size();
        // The cell size for `cols` cell columns and `rows` cell rows over `bands` bands of maps.
        let fit = |cols: usize, rows: usize, bands: f32| {
            let gaps = if bands > 1.0 { 2.0 } else { 4.0 };
            let w = avail.x - row_label_w - mass_w - gaps * gap;
            let h = (avail.y - bands * (title_h + col_label_h) - 60.0).max(40.0);
            (w / cols as f32)
                .min(h / rows.max(1) as f32)
                .clamp(1.0, 40.0)
        };
        let in_row = fit((n + p) + 3 * n, n, 1.0);
        let in_grid = fit((n + p) + n, 2 * n, 2.0);
        let grid = in_grid > 1.25 * in_row;
        let cell = if grid { in_grid } else { in_row };
        let map_h = cell * n as f32;
        let band_h = title_h + map_h + col_label_h;
        let block_h = if grid { 2.0 * band_h } else { band_h };
        let (block, _) = ui.allocate_exact_size(Vec2::new(avail.x, block_h), Sense::hover());
        let painter = ui.painter_at(block.expand(2.0));
        let text_col = ui.visuals().text_color();
        let weak = ui.visuals().weak_text_color();
        let bg = ui.visuals().panel_fill;
        // Every k-th label when the cells are smaller than the text.
        let every = ((LABEL_PX - 1.0) / cell).ceil().max(1.0) as usize;
        // Where each map's band starts: (left, top of its title).
        let x0 = block.left() + row_label_w;
        let raw_extent = cell * (n + p) as f32
            + if lc.prefix_mass.is_some() {
                mass_w + 4.0
            } else {
                gap
            };
        let step = cell * n as f32 + gap;
        let (x1, y0) = (x0 + raw_extent, block.top());
        let origins: [Pos2; 4] = if grid {
            let y1 = y0 + band_h;
            [(x0, y0), (x1, y0), (x0, y1), (x1, y1)].map(|(x, y)| Pos2::new(x, y))
        } else {
            [x0, x1, x1 + step, x1 + 2.0 * step].map(|x| Pos2::new(x, y0))
        };
        // Row labels (query tokens), left of the first map of each band.
        let band_tops: &[f32] = if grid { &[y0, y0 + band_h] } else { &[y0] };
        for &band_top in band_tops {
            for r in (0..n).step_by(every) {
                painter.text(
                    Pos2::new(
                        block.left() + row_label_w - 4.0,
                        band_top + title_h + (r as f32 + 0.5) * cell,
                    ),
                    egui::Align2::RIGHT_CENTER,
                    axis_label(label(r)),
                    font.clone(),
                    text_col,
                );
            }
        }

        let mut hovered: Option<(ViewKind, usize, usize)> = None;
        let mut hovered_resp: Option<egui::Response> = None;
        let maps: [(ViewKind, &str, usize); 4] = [
            (ViewKind::Raw, "raw, with prefix", n + p),
            (ViewKind::Renormalized, "renormalized over content", n),
            (ViewKind::Pretrained, "pretrained (no prefix)", n),
            (ViewKind::Difference, "renormalized − pretrained", n),
        ];
        for ((which, title, cols), origin) in maps.into_iter().zip(origins) {
            let top = origin.y + title_h;
            let source: Option<&Array> = match which {
                ViewKind::Raw => lc.with_prefix.as_ref(),
                ViewKind::Renormalized => lc.renormalized.as_ref(),
                ViewKind::Pretrained => Some(&lc.pretrained),
                ViewKind::Difference => diff,
                // The window shows the four maps above; `scaled` is a figure panel only.
                ViewKind::Scaled => None,
            };
            let rect = Rect::from_min_size(
                Pos2::new(origin.x, top),
                Vec2::new(cell * cols as f32, map_h),
            );
            // The full title when it fits above the map, a short one when it does not.
            let title_font = egui::FontId::proportional(13.0);
            let full = ui
                .painter()
                .layout_no_wrap(title.to_string(), title_font.clone(), text_col);
            let shown_title = if full.size().x <= rect.width() + gap - 4.0 {
                title
            } else {
                match which {
                    ViewKind::Raw => "raw",
                    ViewKind::Renormalized => "renormalized",
                    ViewKind::Pretrained => "pretrained",
                    ViewKind::Difference => "renorm − pretr.",
                    ViewKind::Scaled => "scaled",
                }
            };
            painter.text(
                Pos2::new(rect.center().x, origin.y + 2.0),
                egui::Align2::CENTER_TOP,
                shown_title,
                title_font,
                text_col,
            );
            painter.rect_filled(rect, 0.0, bg);
            let id = ui.scope_id().with(("heatmap", title));
            let resp = ui.interact(rect, id, Sense::hover());
            let access = format!(
                "{title} heatmap, layer {}, head {h}, {n} queries by {cols} keys",
                self.layer
            );
            resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &access));
            match source {
                None => {
                    painter.text(
                        rect.center(),
                        egui::Align2::CENTER_CENTER,
                        "no prefix",
                        font.clone(),
                        weak,
                    );
                }
                Some(a) => {
                    let mut mesh = egui::Mesh::default();
                    for r in 0..n {
                        for c in 0..cols {
                            // Causal: content key j is visible to query i only for j <= i.
                            let content_c = if which == ViewKind::Raw {
                                c.checked_sub(p)
                            } else {
                                Some(c)
                            };
                            if content_c.is_some_and(|j| j > r) {
                                continue;
                            }
                            let v = at(a, h, r, c);
                            let color = match which {
                                ViewKind::Difference => diverging(v / diff_max),
                                _ => self.norm.color(v, 1.0),
                            };
                            let min =
                                Pos2::new(rect.left() + c as f32 * cell, top + r as f32 * cell);
                            mesh.add_colored_rect(
                                Rect::from_min_size(min, Vec2::splat(cell)),
                                color,
                            );
                        }
                    }
                    painter.add(egui::Shape::mesh(mesh));
                }
            }
            if which == ViewKind::Raw && p > 0 {
                // The divider between the prefix columns and the content.
                let xd = rect.left() + p as f32 * cell;
                painter.line_segment(
                    [Pos2::new(xd, top - 3.0), Pos2::new(xd, top + map_h + 3.0)],
                    Stroke::new(2.0, Color32::from_rgb(90, 170, 255)),
                );
            }
            // Column labels (key tokens), rotated.
            for c in (0..cols).step_by(every) {
                let text = col_label(c, which == ViewKind::Raw);
                let galley = ui.painter().layout_no_wrap(text, font.clone(), text_col);
                let w = galley.size().x.min(col_label_h - 4.0);
                let pos = Pos2::new(
                    rect.left() + (c as f32 + 0.5) * cell - galley.size().y / 2.0,
                    rect.bottom() + 4.0 + w,
                );
                painter.add(
                    egui::epaint::TextShape::new(pos, galley, text_col)
                        .with_angle(-std::f32::consts::FRAC_PI_2),
                );
            }
            if let Some(pos) = resp.hover_pos() {
                let c = ((pos.x - rect.left()) / cell).floor() as usize;
                let r = ((pos.y - rect.top()) / cell).floor() as usize;
                if r < n && c < cols {
                    hovered = Some((which, r, c));
                    hovered_resp = Some(resp.clone());
                    painter.rect_stroke(
                        Rect::from_min_size(
                            Pos2::new(rect.left() + c as f32 * cell, top + r as f32 * cell),
                            Vec2::splat(cell),
                        ),
                        0.0,
                        Stroke::new(1.5, Color32::WHITE),
                        egui::StrokeKind::Outside,
                    );
                }
            }
            if which == ViewKind::Raw {
                if let Some(mass) = &lc.prefix_mass {
                    // Prefix mass a_i of each query row, as a bar.
                    let bar = Rect::from_min_size(
                        Pos2::new(rect.right() + 4.0, top),
                        Vec2::new(mass_w - 8.0, map_h),
                    );
                    painter.rect_stroke(
                        bar,
                        0.0,
                        Stroke::new(1.0, ui.visuals().widgets.noninteractive.bg_stroke.color),
                        egui::StrokeKind::Outside,
                    );
                    for r in 0..n {
                        let a = mass.data[h * n + r];
                        let y = top + r as f32 * cell;
                        painter.rect_filled(
                            Rect::from_min_size(
                                Pos2::new(bar.left(), y + cell * 0.1),
                                Vec2::new(bar.width() * a.clamp(0.0, 1.0), cell * 0.8),
                            ),
                            0.0,
                            Color32::from_rgb(90, 170, 255),
                        );
                    }
                    painter.text(
                        Pos2::new(bar.center().x, bar.bottom() + 4.0),
                        egui::Align2::CENTER_TOP,
                        "mass",
                        font.clone(),
                        weak,
                    );
                    let bresp = ui.interact(bar, ui.scope_id().with("prefix-mass"), Sense::hover());
                    bresp.widget_info(|| {
                        egui::WidgetInfo::labeled(
                            egui::Role::Image,
                            true,
                            format!("prefix mass bars, layer {}, head {h}", self.layer),
                        )
                    });
                    if let Some(pos) = bresp.hover_pos() {
                        let r = ((pos.y - top) / cell).floor() as usize;
                        if r < n {
                            self.hover = Some(format!(
                                "query {r} '{}': prefix mass a = {:.6}",
                                label(r),
                                mass.data[h * n + r]
                            ));
                        }
                    }
                }
            }
        }

        // Colour bars: one for the three attention maps, one (diverging) for the difference.
        ui.add_space(4.0);
        // The attention bar spans the columns up to the difference map, which has the other bar.
        let diff_left = origins[3].x;
        ui.horizontal(|ui| {
            let attn_w = (diff_left - gap - x0).max(60.0);
            ui.add_space(x0 - ui.min_rect().left());
            self.colour_bar(ui, attn_w, false, 1.0);
            ui.add_space(gap - ui.spacing().item_spacing.x);
            self.colour_bar(ui, (cell * n as f32).max(80.0), true, diff_max);
        });

        if let Some((which, r, c)) = hovered {
            let q = format!("query {r} '{}'", label(r));
            let (key, j) = if which == ViewKind::Raw {
                if c < p {
                    (format!("prefix {c}"), None)
                } else {
                    (format!("key {} '{}'", c - p, label(c - p)), Some(c - p))
                }
            } else {
                (format!("key {c} '{}'", label(c)), Some(c))
            };
            let mut s = format!("{q} → {key}:");
            if let Some(w) = &lc.with_prefix {
                s += &format!(
                    " raw {:.6}",
                    at(w, h, r, if which == ViewKind::Raw { c } else { c + p })
                );
            }
            if let Some(j) = j {
                if let Some(rn) = &lc.renormalized {
                    s += &format!(" · renormalized {:.6}", at(rn, h, r, j));
                }
                s += &format!(" · pretrained {:.6}", at(&lc.pretrained, h, r, j));
                if let Some(d) = diff {
                    s += &format!(" · difference {:+.3e}", at(d, h, r, j));
                }
            }
            // A tooltip at the pointer, and the same line under the maps.
            if let Some(r) = hovered_resp {
                r.on_hover_text_at_pointer(s.replace(" · ", "\n").replace(": ", ":\n"));
            }
            self.hover = Some(s);
        }
        let hover_text = self
            .hover
            .take()
            .unwrap_or_else(|| "hover a cell for its exact values".into());
        ui.label(egui::RichText::new(hover_text).small().monospace());
    }

    /// A horizontal colour bar with five ticks.
    fn colour_bar(&self, ui: &mut egui::Ui, width: f32, signed: bool, hi: f32) {
        let (rect, resp) = ui.allocate_exact_size(Vec2::new(width, 30.0), Sense::hover());
        let bar = Rect::from_min_size(rect.min, Vec2::new(width, 10.0));
        let painter = ui.painter_at(rect.expand(8.0));
        let steps = 96;
        let mut mesh = egui::Mesh::default();
        for k in 0..steps {
            let t = (k as f32 + 0.5) / steps as f32;
            let color = if signed {
                diverging(2.0 * t - 1.0)
            } else {
                super::colormap::sample(self.norm.cmap, t)
            };
            let x0 = bar.left() + width * k as f32 / steps as f32;
            mesh.add_colored_rect(
                Rect::from_min_max(
                    Pos2::new(x0, bar.top()),
                    Pos2::new(x0 + width / steps as f32 + 0.5, bar.bottom()),
                ),
                color,
            );
        }
        painter.add(egui::Shape::mesh(mesh));
        let text_col = ui.visuals().text_color();
        let ticks: usize = if width < 220.0 { 2 } else { 4 };
        for k in 0..=ticks {
            let t = k as f32 / ticks as f32;
            let value = if signed {
                (2.0 * t - 1.0) * hi
            } else {
                self.norm.value_at(t, hi)
            };
            let xk = bar.left() + t * width;
            painter.line_segment(
                [
                    Pos2::new(xk, bar.bottom()),
                    Pos2::new(xk, bar.bottom() + 3.0),
                ],
                Stroke::new(1.0, text_col),
            );
            let text = if signed && value == 0.0 {
                "0".to_string()
            } else if signed {
                format!("{value:+.0e}")
            } else if value != 0.0 && value.abs() < 0.01 {
                format!("{value:.0e}")
            } else {
                format!("{value:.2}")
            };
            let align = if k == 0 {
                egui::Align2::LEFT_TOP
            } else if k == ticks {
                egui::Align2::RIGHT_TOP
            } else {
                egui::Align2::CENTER_TOP
            };
            painter.text(
                Pos2::new(xk, bar.bottom() + 4.0),
                align,
                text,
                egui::FontId::proportional(LABEL_PX),
                text_col,
            );
        }
        let label = if signed {
            format!("colour bar: renormalized − pretrained, −{hi:.2e} to +{hi:.2e}")
        } else {
            format!(
                "colour bar: attention, {} {} scale, 0 to {hi}",
                self.norm.cmap.label(),
                self.norm.scale.label()
            )
        };
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &label));
    }
}
