//! The attention views of one layer and head: raw attention with the prefix columns (a divider sets
//! them apart, the prefix mass of each row as a bar beside it), the attention renormalized over the
//! content, the pretrained attention, and renormalized - pretrained on a diverging scale.
//! Everything drawn here comes from the worker's [`Computed`]; this file only maps values to colours.
//!
//! The maps are textures (one pixel per cell, built once per result and colour setting), so a
//! 1,024-token prompt costs four textured rectangles a frame. All four share one zoom window over the
//! (query, content key) square: Ctrl+scroll (or a pinch) zooms around the pointer, a drag pans, a
//! double click shows everything again. One labelling rule holds for every panel: content token `j`
//! is labelled when `j` is a multiple of the thinning step, counted from the first content token (the
//! prefix columns never shift it), and prefix columns carry the figures' names (`figure::prefix_labels`).

use super::colormap::{diverging, ColorMap, Norm, Scale};
use super::worker::Computed;
use crate::arrays::Array;
use crate::capture::LayerCapture;
use crate::figure::ViewKind;
use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};
use std::ops::Range;

/// What the views draw: the answered request and the token labels of its ids.
pub struct ViewData<'a> {
    pub computed: &'a Computed,
    pub labels: &'a [String],
    /// When the maps answer an older request than the one being computed: what to say over them
    /// (e.g. "showing N = 3, computing N = 120"); the maps are dimmed.
    pub stale: Option<String>,
}

/// The view settings (saved with the session).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewsPanel {
    pub layer: usize,
    pub head: usize,
    pub norm: Norm,
    /// Whether the overview grid is shown under the maps (hidden, the maps take its height).
    #[serde(default = "shown")]
    pub overview: bool,
    /// What the pointer is over, shown under the maps (`None` when nothing).
    #[serde(skip)]
    pub hover: Option<String>,
    /// The shared zoom window; `None` shows every token.
    #[serde(skip)]
    pub zoom: Option<Zoom>,
    #[serde(skip)]
    textures: Textures,
}

fn shown() -> bool {
    true
}

/// A square window over the (query, content key) matrix: first row and column, and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zoom {
    pub row0: usize,
    pub col0: usize,
    pub size: usize,
}

/// The maps' textures, rebuilt only when what they show changes.
#[derive(Default, Clone)]
struct Textures {
    maps: Vec<(TexKey, egui::TextureHandle)>,
    /// max |renormalized - pretrained| of (capture, layer, head): a pass over N² values, once.
    diff_max: Option<((usize, usize, usize), f32)>,
    /// The pass in which a texture was last built: one per frame, so that a new answer for a long
    /// prompt spreads its four textures over four frames instead of one long frame.
    built_in_pass: Option<u64>,
}
impl std::fmt::Debug for Textures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Textures({})", self.maps.len())
    }
}
impl PartialEq for Textures {
    /// A cache: never part of the settings' identity.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a texture shows: the capture (by address, alive while shown), layer, head, view and colours.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TexKey {
    capture: usize,
    layer: usize,
    head: usize,
    which: ViewKind,
    norm: (ColorMap, Scale, u32, u32),
    diff_max: u32,
}

/// A cell value of head `h` in a `(H, rows, cols)` array.
fn at(a: &Array, h: usize, r: usize, c: usize) -> f32 {
    let (rows, cols) = (a.shape[1], a.shape[2]);
    a.data[(h * rows + r) * cols + c]
}

const LABEL_PX: f32 = 11.0;
/// The most room a token label gets (row labels' width, rotated column labels' height).
const LABEL_ROOM_MAX: f32 = 58.0;
const AXIS_TITLE: f32 = 16.0;
const TITLE_H: f32 = 20.0;
const GAP: f32 = 18.0;
const MASS_W: f32 = 34.0;
/// A vertical colour bar and its tick labels.
const BAR_W: f32 = 62.0;
const DIVIDER: Color32 = Color32::from_rgb(90, 170, 255);

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

/// The thinning step: every k-th token is labelled when cells are smaller than the text.
pub fn label_step(cell: f32) -> usize {
    ((LABEL_PX - 1.0) / cell).ceil().max(1.0) as usize
}

/// The one labelling rule of every panel: the content tokens of `window` whose index is a multiple
/// of `step` (counted from the first content token, never from the prefix columns).
pub fn labelled(window: Range<usize>, step: usize) -> impl Iterator<Item = usize> {
    window.filter(move |j| j % step.max(1) == 0)
}

/// Where everything goes: cell size, whether the maps are in a 2 x 2 grid, each map's top-left
/// (title top), the colour bars' top-left, and the whole block.
struct Geometry {
    cell: f32,
    /// Room for the token labels: the row labels' width and the column labels' height.
    label_room: f32,
    grid: bool,
    origins: [Pos2; 4],
    /// (attention bar, difference bar): top-left of each vertical bar.
    bars: [Pos2; 2],
    map_h: f32,
    block: Rect,
}

impl Geometry {
    /// Fit `m` query rows and `m` content columns (plus `p` prefix columns in the raw map) into
    /// `avail`, in one row of four maps or, when that gives clearly bigger cells, a 2 x 2 grid.
    fn fit(
        ui: &egui::Ui,
        avail: Vec2,
        (m, p): (usize, usize),
        mass: bool,
        label_room: f32,
    ) -> Geometry {
        let mass_w = if mass { MASS_W } else { 0.0 };
        let left = AXIS_TITLE + label_room;
        let below = label_room + AXIS_TITLE;
        // The hover line and the stale note under the block.
        let reserve = 28.0;
        let fit = |cols: usize, rows: usize, bands: f32, fixed_w: f32| {
            let w = avail.x - left - fixed_w;
            let h = (avail.y - bands * (TITLE_H + below) - reserve).max(40.0);
            (w / cols as f32)
                .min(h / rows.max(1) as f32)
                .clamp(0.05, 40.0)
        };
        // Row: raw | mass | renorm | pretrained | attention bar | difference | difference bar.
        let in_row = fit((m + p) + 3 * m, m, 1.0, mass_w + 3.0 * GAP + 2.0 * BAR_W);
        // Grid: raw | mass | renorm | attention bar over pretrained | difference | difference bar.
        let in_grid = fit((m + p) + m, 2 * m, 2.0, mass_w + GAP + BAR_W);
        let grid = in_grid > 1.25 * in_row;
        let cell = if grid { in_grid } else { in_row };
        let map_h = cell * m as f32;
        let band_h = TITLE_H + map_h + below;
        let raw_w = cell * (m + p) as f32 + mass_w;
        let map_w = cell * m as f32;
        let width = if grid {
            left + raw_w + GAP + map_w + BAR_W
        } else {
            left + raw_w + 3.0 * GAP + 3.0 * map_w + 2.0 * BAR_W
        };
        let height = if grid { 2.0 * band_h } else { band_h };
        let top_left = ui.cursor().min;
        let block = Rect::from_min_size(top_left, Vec2::new(width.min(avail.x), height));
        let x0 = block.left() + left;
        let x1 = x0 + raw_w + GAP;
        let y0 = block.top();
        let (origins, bars) = if grid {
            let y1 = y0 + band_h;
            let bar_x = x1 + map_w + 6.0;
            (
                [(x0, y0), (x1, y0), (x0, y1), (x1, y1)],
                [(bar_x, y0 + TITLE_H), (bar_x, y1 + TITLE_H)],
            )
        } else {
            let x2 = x1 + map_w + GAP;
            let bar1 = x2 + map_w + 6.0;
            let x3 = x2 + map_w + BAR_W + GAP;
            let bar2 = x3 + map_w + 6.0;
            (
                [(x0, y0), (x1, y0), (x2, y0), (x3, y0)],
                [(bar1, y0 + TITLE_H), (bar2, y0 + TITLE_H)],
            )
        };
        Geometry {
            cell,
            label_room,
            grid,
            origins: origins.map(|(x, y)| Pos2::new(x, y)),
            bars: bars.map(|(x, y)| Pos2::new(x, y)),
            map_h,
            block,
        }
    }
}

/// The view a map shows and its data.
struct MapSpec<'a> {
    which: ViewKind,
    title: &'static str,
    short: &'static str,
    source: Option<&'a Array>,
}

impl Default for ViewsPanel {
    fn default() -> Self {
        ViewsPanel {
            layer: 0,
            head: 0,
            norm: Norm::default(),
            overview: true,
            hover: None,
            zoom: None,
            textures: Textures::default(),
        }
    }
}

impl ViewsPanel {
    /// Keep the selection inside the model's layers and heads.
    pub fn clamp(&mut self, n_layers: usize, n_heads: usize) {
        self.layer = self.layer.min(n_layers.saturating_sub(1));
        self.head = self.head.min(n_heads.saturating_sub(1));
    }

    /// The header: which head is shown and the colour settings.
    pub fn controls_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
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
            ui.checkbox(&mut self.overview, "overview")
                .on_hover_text("the grid of every layer and head under the maps; hide it to give the maps its height");
            if self.zoom.is_some() && ui.button("show all tokens").clicked() {
                self.zoom = None;
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
        // The capture's index of the viewed head: a long prompt's answer holds that head only.
        let Some(h) = data.computed.head_index(self.head) else {
            ui.label(format!("computing head {}…", self.head));
            return;
        };
        let h = h.min(lc.n_heads().saturating_sub(1));
        let n = lc.pretrained.shape[1];
        let p = cap.p;
        let diff = data
            .computed
            .difference
            .iter()
            .find(|(l, _)| *l == self.layer)
            .and_then(|(_, d)| d.as_ref());
        let diff_key = (cap_key(data.computed), self.layer, h);
        let diff_max = match self.textures.diff_max {
            Some((k, v)) if k == diff_key => v,
            _ => {
                let v = lc
                    .max_renorm_diff(Some(h))
                    .unwrap_or(0.0)
                    // Below 1e-6 a difference is float rounding: keep such maps near white
                    // instead of stretching noise over the whole colour range.
                    .max(1e-6);
                self.textures.diff_max = Some((diff_key, v));
                v
            }
        };
        let zoom = self.zoom_window(n);
        let m = zoom.size;
        let room = label_room(ui, data.labels, p);
        let geo = Geometry::fit(
            ui,
            ui.available_size(),
            (m, p),
            lc.prefix_mass.is_some(),
            room,
        );
        let (block, _) = ui.allocate_exact_size(geo.block.size(), Sense::hover());
        let maps = [
            MapSpec {
                which: ViewKind::Raw,
                title: "raw, with prefix",
                short: "raw",
                source: lc.with_prefix.as_ref(),
            },
            MapSpec {
                which: ViewKind::Renormalized,
                title: "renormalized over content",
                short: "renormalized",
                source: lc.renormalized.as_ref(),
            },
            MapSpec {
                which: ViewKind::Pretrained,
                title: "pretrained (no prefix)",
                short: "pretrained",
                source: Some(&lc.pretrained),
            },
            MapSpec {
                which: ViewKind::Difference,
                title: "renormalized − pretrained",
                short: "renorm − pretr.",
                source: diff,
            },
        ];
        let ctx = MapCtx {
            labels: data.labels,
            n,
            p,
            h,
            zoom,
            geo: &geo,
            diff_max,
        };
        // Registered before the maps so that their hover readouts sit on top of the zoom's drag area.
        self.zoom_input(ui, &ctx, block);
        self.row_labels(ui, &ctx);
        let mut hovered = None;
        for (spec, origin) in maps.iter().zip(geo.origins) {
            if let Some(hit) = self.draw_map(ui, &ctx, spec, origin, cap_key(data.computed)) {
                hovered = Some(hit);
            }
        }
        if let Some(mass) = &lc.prefix_mass {
            self.mass_bar(ui, &ctx, mass);
        }
        self.colour_bar(ui, geo.bars[0], geo.map_h, false, 1.0);
        self.colour_bar(ui, geo.bars[1], geo.map_h, true, diff_max);
        if let Some(note) = &data.stale {
            // An older answer than the one being computed: dimmed, and said so.
            let painter = ui.painter_at(block);
            painter.rect_filled(block, 0.0, Color32::from_black_alpha(150));
            let r = ui.interact(block, ui.scope_id().with("stale"), Sense::hover());
            painter.text(
                block.center_top() + Vec2::new(0.0, TITLE_H + 8.0),
                egui::Align2::CENTER_TOP,
                note,
                egui::FontId::proportional(16.0),
                Color32::WHITE,
            );
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, note));
        }
        if let Some((which, r, c)) = hovered {
            self.hover = Some(hover_text(lc, data.labels, diff, h, p, which, r, c));
        }
        let hover_text = self.hover.take().unwrap_or_else(|| {
            "hover: exact values · Ctrl+scroll: zoom · drag: pan · double click: all".into()
        });
        ui.label(egui::RichText::new(hover_text).small().monospace());
    }

    /// The zoom window, kept inside `n` tokens.
    fn zoom_window(&mut self, n: usize) -> Zoom {
        let z = self.zoom.unwrap_or(Zoom {
            row0: 0,
            col0: 0,
            size: n,
        });
        let size = z.size.clamp(1.min(n), n.max(1));
        let z = Zoom {
            row0: z.row0.min(n.saturating_sub(size)),
            col0: z.col0.min(n.saturating_sub(size)),
            size,
        };
        self.zoom = (size < n).then_some(z);
        z
    }

    /// Ctrl+scroll / pinch over the maps zooms around the pointer, a drag pans, a double click resets.
    fn zoom_input(&mut self, ui: &egui::Ui, ctx: &MapCtx<'_>, block: Rect) {
        let resp = ui.interact(block, ui.scope_id().with("zoom"), Sense::click_and_drag());
        let n = ctx.n;
        let z = ctx.zoom;
        let cell = ctx.geo.cell;
        if resp.double_clicked() {
            self.zoom = None;
            return;
        }
        let Some(pos) = resp.hover_pos() else {
            return;
        };
        let factor = ui.input(|i| i.zoom_delta());
        if factor != 1.0 && n > 1 {
            // The content cell under the pointer stays under it (in the map the pointer is over).
            let fr =
                ((pos.y - ctx.geo.origins[0].y - TITLE_H) / (cell * z.size as f32)).clamp(0.0, 1.0);
            let size = ((z.size as f32 / factor).round() as usize).clamp(8.min(n), n);
            let anchor_r = z.row0 as f32 + fr * z.size as f32;
            let row0 = (anchor_r - fr * size as f32).max(0.0) as usize;
            self.zoom = Some(Zoom {
                row0,
                col0: row0,
                size,
            });
        }
        if resp.dragged() && self.zoom.is_some() {
            let d = resp.drag_delta() / cell;
            if let Some(zz) = &mut self.zoom {
                let mv = |v: usize, dv: f32| (v as f32 - dv).round().max(0.0) as usize;
                zz.row0 = mv(zz.row0, d.y);
                zz.col0 = mv(zz.col0, d.x);
            }
        }
    }

    /// Row labels (query tokens) left of the first map of each band, and the axis title "query".
    fn row_labels(&self, ui: &egui::Ui, ctx: &MapCtx<'_>) {
        let geo = ctx.geo;
        let painter = ui.painter();
        let text_col = ui.visuals().text_color();
        let font = egui::FontId::proportional(LABEL_PX);
        let step = label_step(geo.cell);
        let tops: Vec<f32> = if geo.grid {
            vec![geo.origins[0].y, geo.origins[2].y]
        } else {
            vec![geo.origins[0].y]
        };
        let z = ctx.zoom;
        for (band, top) in tops.into_iter().enumerate() {
            let top = top + TITLE_H;
            for r in labelled(z.row0..z.row0 + z.size, step) {
                painter.text(
                    Pos2::new(
                        geo.origins[0].x - 4.0,
                        top + ((r - z.row0) as f32 + 0.5) * geo.cell,
                    ),
                    egui::Align2::RIGHT_CENTER,
                    axis_label(ctx.label(r)),
                    font.clone(),
                    text_col,
                );
            }
            let title = ui.painter().layout_no_wrap(
                "query".into(),
                egui::FontId::proportional(12.0),
                ui.visuals().weak_text_color(),
            );
            let x = geo.origins[0].x - geo.label_room - AXIS_TITLE + 1.0;
            let y = top + geo.map_h / 2.0 + title.size().x / 2.0;
            let area = Rect::from_min_size(
                Pos2::new(x, y - title.size().x),
                Vec2::new(title.size().y, title.size().x),
            );
            axis_title(ui, area, ("query axis", band), "query");
            painter.add(
                egui::epaint::TextShape::new(Pos2::new(x, y), title, text_col)
                    .with_angle(-std::f32::consts::FRAC_PI_2),
            );
        }
    }

    /// One map: title, texture, divider, column labels, axis title "key"; returns the hovered cell
    /// as (view, query row, column of that map).
    fn draw_map(
        &mut self,
        ui: &egui::Ui,
        ctx: &MapCtx<'_>,
        spec: &MapSpec<'_>,
        origin: Pos2,
        capture: usize,
    ) -> Option<(ViewKind, usize, usize)> {
        let frame = MapFrame::new(ctx, spec, origin);
        map_title(ui, spec, &frame, origin);
        let painter = ui.painter();
        painter.rect_filled(frame.rect, 0.0, ui.visuals().panel_fill);
        let resp = ui.interact(
            frame.rect,
            ui.scope_id().with(("heatmap", spec.title)),
            Sense::hover(),
        );
        self.describe_map(&resp, ctx, spec, &frame);
        match spec.source {
            None => {
                painter.text(
                    frame.rect.center(),
                    egui::Align2::CENTER_CENTER,
                    "no prefix",
                    egui::FontId::proportional(LABEL_PX),
                    ui.visuals().weak_text_color(),
                );
            }
            Some(a) => {
                let Some(tex) = self.texture(ui.ctx(), ctx, spec.which, a, capture) else {
                    // Built in a coming frame (one texture per frame).
                    ui.ctx().request_repaint();
                    return None;
                };
                paint_texture(painter, tex, ctx, &frame);
            }
        }
        column_labels(ui, ctx, spec, &frame);
        hovered_cell(ui, ctx, spec, &frame, &resp)
    }

    /// The map's accessible name and value: what it shows, and the key labels as drawn (prefix
    /// names, then content labels), for screen readers and tests.
    fn describe_map(
        &self,
        resp: &egui::Response,
        ctx: &MapCtx<'_>,
        spec: &MapSpec<'_>,
        frame: &MapFrame,
    ) {
        let key_labels: Vec<String> = frame
            .prefix_shown
            .iter()
            .map(|&k| frame.prefix_names[k].clone())
            .chain(frame.content.iter().map(|&j| axis_label(ctx.label(j))))
            .collect();
        let access = format!(
            "{} heatmap, layer {}, head {}, {} queries by {} keys",
            spec.title,
            self.layer,
            self.head,
            ctx.n,
            if frame.raw { ctx.p + ctx.n } else { ctx.n }
        );
        let value = format!("key labels: {}", key_labels.join(" | "));
        resp.widget_info(|| {
            let mut info = egui::WidgetInfo::labeled(egui::Role::Image, true, &access);
            info.current_text_value = Some(value.clone());
            info
        });
    }

    /// The map of `which` as a texture, one pixel per cell (masked cells transparent).
    fn texture(
        &mut self,
        ctx: &egui::Context,
        m: &MapCtx<'_>,
        which: ViewKind,
        a: &Array,
        capture: usize,
    ) -> Option<egui::TextureId> {
        let key = TexKey {
            capture,
            layer: self.layer,
            head: m.h,
            which,
            norm: (
                self.norm.cmap,
                self.norm.scale,
                self.norm.gamma.to_bits(),
                self.norm.log_floor.to_bits(),
            ),
            diff_max: m.diff_max.to_bits(),
        };
        let slot = self
            .textures
            .maps
            .iter()
            .position(|(k, _)| k.which == which);
        if let Some(i) = slot {
            if self.textures.maps[i].0 == key {
                return Some(self.textures.maps[i].1.id());
            }
        }
        let (n, cols) = (a.shape[1], a.shape[2]);
        // Small maps are built together; large ones one per frame.
        let pass = ctx.cumulative_pass_nr();
        if n * cols > 1 << 16 {
            if self.textures.built_in_pass == Some(pass) {
                return None;
            }
            self.textures.built_in_pass = Some(pass);
        }
        let offset = cols - n;
        // Colours from a table over the colour-bar position (4096 steps, finer than the maps' 256
        // colours), rows in parallel: a 1,024-token map is a million cells.
        const STEPS: usize = 4096;
        let lut: Vec<Color32> = (0..STEPS)
            .map(|k| {
                let t = k as f32 / (STEPS - 1) as f32;
                match which {
                    ViewKind::Difference => diverging(2.0 * t - 1.0),
                    _ => super::colormap::sample(self.norm.cmap, t),
                }
            })
            .collect();
        let norm = self.norm;
        let diff_max = m.diff_max;
        let position = move |v: f32| match which {
            ViewKind::Difference => (0.5 + 0.5 * v / diff_max).clamp(0.0, 1.0),
            _ => norm.position(v, 1.0),
        };
        let head = &a.data[m.h * n * cols..(m.h + 1) * n * cols];
        let mut pixels = vec![Color32::TRANSPARENT; n * cols];
        use rayon::prelude::*;
        pixels
            .par_chunks_mut(cols)
            .zip(head.par_chunks(cols))
            .enumerate()
            .for_each(|(r, (out, values))| {
                // Causal: content key j is visible to query i only for j <= i.
                let visible = (offset + r + 1).min(cols);
                for (px, &v) in out[..visible].iter_mut().zip(&values[..visible]) {
                    let t = position(v);
                    let t = if t.is_finite() { t } else { 0.0 };
                    *px = lut[(t * (STEPS - 1) as f32).round() as usize];
                }
            });
        let image = egui::ColorImage::new([cols, n], pixels);
        let options = egui::TextureOptions {
            magnification: egui::TextureFilter::Nearest,
            minification: egui::TextureFilter::Linear,
            ..Default::default()
        };
        let handle = ctx.load_texture(format!("map {}", which.name()), image, options);
        let id = handle.id();
        match slot {
            Some(i) => self.textures.maps[i] = (key, handle),
            None => self.textures.maps.push((key, handle)),
        }
        Some(id)
    }

    /// Prefix mass a_i of each query row, as a bar right of the raw map, with a 0 / 0.5 / 1 scale.
    fn mass_bar(&mut self, ui: &egui::Ui, ctx: &MapCtx<'_>, mass: &Array) {
        let geo = ctx.geo;
        let (cell, z, n, h) = (geo.cell, ctx.zoom, ctx.n, ctx.h);
        let top = geo.origins[0].y + TITLE_H;
        let left = geo.origins[0].x + cell * (ctx.p + z.size) as f32 + 4.0;
        let bar = Rect::from_min_size(Pos2::new(left, top), Vec2::new(MASS_W - 8.0, geo.map_h));
        let painter = ui.painter();
        let text_col = ui.visuals().text_color();
        painter.rect_stroke(
            bar,
            0.0,
            Stroke::new(1.0, ui.visuals().widgets.noninteractive.bg_stroke.color),
            egui::StrokeKind::Outside,
        );
        for r in z.row0..z.row0 + z.size {
            let a = mass.data[h * n + r];
            let y = top + (r - z.row0) as f32 * cell;
            painter.rect_filled(
                Rect::from_min_size(
                    Pos2::new(bar.left(), y + cell * 0.1),
                    Vec2::new(bar.width() * a.clamp(0.0, 1.0), (cell * 0.8).max(0.5)),
                ),
                0.0,
                DIVIDER,
            );
        }
        // The scale: ticks at 0, 0.5 and 1 under the bar, and what it is.
        let font = egui::FontId::proportional(9.0);
        for (t, text, align) in [
            (0.0, "0", egui::Align2::LEFT_TOP),
            (0.5, ".5", egui::Align2::CENTER_TOP),
            (1.0, "1", egui::Align2::RIGHT_TOP),
        ] {
            let x = bar.left() + t * bar.width();
            painter.line_segment(
                [Pos2::new(x, bar.bottom()), Pos2::new(x, bar.bottom() + 3.0)],
                Stroke::new(1.0, text_col),
            );
            painter.text(
                Pos2::new(x, bar.bottom() + 4.0),
                align,
                text,
                font.clone(),
                text_col,
            );
        }
        painter.text(
            Pos2::new(bar.center().x, bar.bottom() + 16.0),
            egui::Align2::CENTER_TOP,
            "mass",
            egui::FontId::proportional(LABEL_PX),
            ui.visuals().weak_text_color(),
        );
        let bresp = ui.interact(bar, ui.scope_id().with("prefix-mass"), Sense::hover());
        bresp.widget_info(|| {
            egui::WidgetInfo::labeled(
                egui::Role::Image,
                true,
                format!(
                    "prefix mass bars, layer {}, head {h}, scale 0 to 1",
                    self.layer
                ),
            )
        });
        if let Some(pos) = bresp.hover_pos() {
            let r = z.row0 + ((pos.y - top) / cell).floor() as usize;
            if r < n {
                self.hover = Some(format!(
                    "query {r} '{}': prefix mass a = {:.6}",
                    ctx.label(r),
                    mass.data[h * n + r]
                ));
            }
        }
    }

    /// A vertical colour bar beside the maps it explains (high values at the top), five ticks.
    fn colour_bar(&self, ui: &egui::Ui, top_left: Pos2, height: f32, signed: bool, hi: f32) {
        let height = height.max(40.0);
        let bar = Rect::from_min_size(top_left, Vec2::new(12.0, height));
        let painter = ui.painter();
        let steps = 96;
        let mut mesh = egui::Mesh::default();
        for k in 0..steps {
            // Top of the bar is t = 1.
            let t = 1.0 - (k as f32 + 0.5) / steps as f32;
            let color = if signed {
                diverging(2.0 * t - 1.0)
            } else {
                super::colormap::sample(self.norm.cmap, t)
            };
            let y0 = bar.top() + height * k as f32 / steps as f32;
            mesh.add_colored_rect(
                Rect::from_min_max(
                    Pos2::new(bar.left(), y0),
                    Pos2::new(bar.right(), y0 + height / steps as f32 + 0.5),
                ),
                color,
            );
        }
        painter.add(egui::Shape::mesh(mesh));
        let text_col = ui.visuals().text_color();
        let ticks: usize = if height < 120.0 { 2 } else { 4 };
        for k in 0..=ticks {
            let t = k as f32 / ticks as f32;
            let value = if signed {
                (2.0 * t - 1.0) * hi
            } else {
                self.norm.value_at(t, hi)
            };
            let y = bar.bottom() - t * height;
            painter.line_segment(
                [Pos2::new(bar.right(), y), Pos2::new(bar.right() + 3.0, y)],
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
            painter.text(
                Pos2::new(bar.right() + 5.0, y),
                egui::Align2::LEFT_CENTER,
                text,
                egui::FontId::proportional(LABEL_PX - 1.0),
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
        let resp = ui.interact(
            bar,
            ui.scope_id().with(("colour bar", signed)),
            Sense::hover(),
        );
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &label));
    }
}

/// Where one map goes and which of its columns are labelled.
struct MapFrame {
    rect: Rect,
    raw: bool,
    /// Cell columns drawn: the prefix columns (raw map) and the zoom window's content columns.
    shown_cols: usize,
    /// The thinning step, the content tokens labelled, the prefix columns labelled, their names.
    step: usize,
    content: Vec<usize>,
    prefix_shown: Vec<usize>,
    prefix_names: Vec<String>,
}

impl MapFrame {
    fn new(ctx: &MapCtx<'_>, spec: &MapSpec<'_>, origin: Pos2) -> MapFrame {
        let (cell, p, z) = (ctx.geo.cell, ctx.p, ctx.zoom);
        let raw = spec.which == ViewKind::Raw;
        let shown_cols = if raw { p + z.size } else { z.size };
        let rect = Rect::from_min_size(
            Pos2::new(origin.x, origin.y + TITLE_H),
            Vec2::new(cell * shown_cols as f32, ctx.geo.map_h),
        );
        let step = label_step(cell);
        MapFrame {
            rect,
            raw,
            shown_cols,
            step,
            content: labelled(z.col0..z.col0 + z.size, step).collect(),
            prefix_shown: if raw {
                (0..p).step_by(step).collect()
            } else {
                vec![]
            },
            prefix_names: crate::figure::prefix_labels(p),
        }
    }
}

/// The full title when it fits above the map, a short one when it does not.
fn map_title(ui: &egui::Ui, spec: &MapSpec<'_>, frame: &MapFrame, origin: Pos2) {
    let painter = ui.painter();
    let text_col = ui.visuals().text_color();
    let font = egui::FontId::proportional(13.0);
    let full = painter.layout_no_wrap(spec.title.into(), font.clone(), text_col);
    let title = if full.size().x <= frame.rect.width() + GAP - 4.0 {
        spec.title
    } else {
        spec.short
    };
    painter.text(
        Pos2::new(frame.rect.center().x, origin.y + 2.0),
        egui::Align2::CENTER_TOP,
        title,
        font,
        text_col,
    );
}

/// The texture's zoom window into the map's rectangle (the raw map: all prefix columns, then the
/// window's content columns), and the divider after the prefix columns.
fn paint_texture(painter: &egui::Painter, tex: egui::TextureId, ctx: &MapCtx<'_>, f: &MapFrame) {
    let (cell, p, z, rect) = (ctx.geo.cell, ctx.p, ctx.zoom, f.rect);
    let n = ctx.n as f32;
    let tint = Color32::WHITE;
    let v = [z.row0 as f32 / n, (z.row0 + z.size) as f32 / n];
    let uv = |u0: f32, u1: f32| Rect::from_min_max(Pos2::new(u0, v[0]), Pos2::new(u1, v[1]));
    if !f.raw {
        let u = [z.col0 as f32 / n, (z.col0 + z.size) as f32 / n];
        painter.image(tex, rect, uv(u[0], u[1]), tint);
        return;
    }
    let total = (p + ctx.n) as f32;
    let xd = rect.left() + cell * p as f32;
    if p > 0 {
        let pr = Rect::from_min_max(rect.min, Pos2::new(xd, rect.bottom()));
        painter.image(tex, pr, uv(0.0, p as f32 / total), tint);
    }
    let cr = Rect::from_min_max(Pos2::new(xd, rect.top()), rect.max);
    let u = [
        (p + z.col0) as f32 / total,
        (p + z.col0 + z.size) as f32 / total,
    ];
    painter.image(tex, cr, uv(u[0], u[1]), tint);
    if p > 0 {
        painter.line_segment(
            [
                Pos2::new(xd, rect.top() - 3.0),
                Pos2::new(xd, rect.bottom() + 3.0),
            ],
            Stroke::new(2.0, DIVIDER),
        );
    }
}

/// Column labels (key tokens), rotated: content by the one rule, prefix columns by name (in the
/// corner under the row labels when labels are thinned), and the axis title "key".
fn column_labels(ui: &egui::Ui, ctx: &MapCtx<'_>, spec: &MapSpec<'_>, f: &MapFrame) {
    let painter = ui.painter();
    let (cell, p, z, rect) = (ctx.geo.cell, ctx.p, ctx.zoom, f.rect);
    let text_col = ui.visuals().text_color();
    let font = egui::FontId::proportional(LABEL_PX);
    let col_x = |shown: usize| rect.left() + (shown as f32 + 0.5) * cell;
    // When the cells are narrower than a label, the prefix columns' names would sit on the first
    // content label: they go into the free corner under the row labels, pointing at the prefix
    // columns, in the divider's colour.
    let prefix_below = f.step == 1;
    if f.raw && p > 0 && !prefix_below {
        let name = if p == 1 {
            f.prefix_names[0].clone()
        } else {
            format!("{}–{}", f.prefix_names[0], f.prefix_names[p - 1])
        };
        painter.text(
            Pos2::new(rect.left() - 2.0, rect.bottom() + 4.0),
            egui::Align2::RIGHT_TOP,
            format!("{name} ▸"),
            font.clone(),
            DIVIDER,
        );
    }
    let placed = f
        .prefix_shown
        .iter()
        .filter(|_| prefix_below)
        .map(|&k| (col_x(k), f.prefix_names[k].clone(), DIVIDER))
        .chain(f.content.iter().map(|&j| {
            let shown = if f.raw { p + j - z.col0 } else { j - z.col0 };
            (col_x(shown), axis_label(ctx.label(j)), text_col)
        }));
    for (x, text, colour) in placed {
        let galley = painter.layout_no_wrap(text, font.clone(), colour);
        let w = galley.size().x.min(ctx.geo.label_room - 4.0);
        let pos = Pos2::new(x - galley.size().y / 2.0, rect.bottom() + 4.0 + w);
        painter.add(
            egui::epaint::TextShape::new(pos, galley, colour)
                .with_angle(-std::f32::consts::FRAC_PI_2),
        );
    }
    let key = painter.text(
        Pos2::new(rect.center().x, rect.bottom() + ctx.geo.label_room + 1.0),
        egui::Align2::CENTER_TOP,
        "key",
        egui::FontId::proportional(12.0),
        ui.visuals().weak_text_color(),
    );
    axis_title(ui, key, ("key axis", spec.title), "key");
}

/// The cell under the pointer, outlined, as (view, query row, column of the full matrix; the raw
/// map's columns count its prefix columns).
fn hovered_cell(
    ui: &egui::Ui,
    ctx: &MapCtx<'_>,
    spec: &MapSpec<'_>,
    f: &MapFrame,
    resp: &egui::Response,
) -> Option<(ViewKind, usize, usize)> {
    let (cell, p, z, rect) = (ctx.geo.cell, ctx.p, ctx.zoom, f.rect);
    let pos = resp.hover_pos()?;
    let c = ((pos.x - rect.left()) / cell).floor() as usize;
    let r = ((pos.y - rect.top()) / cell).floor() as usize;
    if r >= z.size || c >= f.shown_cols {
        return None;
    }
    ui.painter().rect_stroke(
        Rect::from_min_size(
            Pos2::new(rect.left() + c as f32 * cell, rect.top() + r as f32 * cell),
            Vec2::splat(cell.max(2.0)),
        ),
        0.0,
        Stroke::new(1.5, Color32::WHITE),
        egui::StrokeKind::Outside,
    );
    // Back to the full matrix: rows and content columns shift by the zoom window.
    let col = if f.raw && c < p {
        c
    } else if f.raw {
        p + z.col0 + (c - p)
    } else {
        z.col0 + c
    };
    Some((spec.which, z.row0 + r, col))
}

/// The room the widest token label (or prefix column name) needs, at most [`LABEL_ROOM_MAX`]: short
/// labels (digits) leave the space to the maps.
fn label_room(ui: &egui::Ui, labels: &[String], p: usize) -> f32 {
    let font = egui::FontId::proportional(LABEL_PX);
    let painter = ui.painter();
    // At most 64 labels, evenly spread: a 1,024-token prompt must not lay out every label for this.
    let stride = labels.len().div_ceil(64).max(1);
    let widest = labels
        .iter()
        .step_by(stride)
        .map(|l| axis_label(l))
        .chain(crate::figure::prefix_labels(p))
        .map(|t| {
            painter
                .layout_no_wrap(t, font.clone(), Color32::WHITE)
                .size()
                .x
        })
        .fold(0f32, f32::max);
    (widest + 8.0).clamp(16.0, LABEL_ROOM_MAX)
}

/// An axis title as an accessible label over the painted text.
fn axis_title(ui: &egui::Ui, area: Rect, salt: impl std::hash::Hash + std::fmt::Debug, text: &str) {
    let r = ui.interact(area, ui.scope_id().with(salt), Sense::hover());
    r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, text));
}

/// What every map of one frame shares.
struct MapCtx<'a> {
    labels: &'a [String],
    n: usize,
    p: usize,
    h: usize,
    zoom: Zoom,
    geo: &'a Geometry,
    diff_max: f32,
}

impl MapCtx<'_> {
    fn label(&self, i: usize) -> &str {
        self.labels.get(i).map(|s| s.as_str()).unwrap_or("?")
    }
}

/// The capture's identity while it is shown (its address).
fn cap_key(c: &Computed) -> usize {
    std::sync::Arc::as_ptr(&c.capture) as usize
}

/// The readout of cell (`r`, `c`) of map `which` (`c` counts the raw map's prefix columns): every
/// view's value there, or "masked" for a key after the query (the causal mask).
#[allow(clippy::too_many_arguments)]
fn hover_text(
    lc: &LayerCapture,
    labels: &[String],
    diff: Option<&Array>,
    h: usize,
    p: usize,
    which: ViewKind,
    r: usize,
    c: usize,
) -> String {
    let label = |i: usize| labels.get(i).map(|s| s.as_str()).unwrap_or("?");
    let q = format!("query {r} '{}'", label(r));
    let (key, j) = if which == ViewKind::Raw && c < p {
        (
            format!("prefix column {}", crate::figure::prefix_labels(p)[c]),
            None,
        )
    } else {
        let j = if which == ViewKind::Raw { c - p } else { c };
        (format!("key {j} '{}'", label(j)), Some(j))
    };
    if j.is_some_and(|j| j > r) {
        return format!("{q} → {key}: masked (a later token; the causal mask hides it)");
    }
    let mut s = format!("{q} → {key}:");
    if let Some(w) = &lc.with_prefix {
        s += &format!(" raw {:.6}", at(w, h, r, j.map_or(c, |j| j + p)));
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
    s
}
