//! The overview: every layer (columns) and head (rows), each cell coloured by that head's
//! max |renormalized - pretrained| (computed by the worker with `LayerCapture::max_renorm_diff`),
//! or by another head metric (`crate::metrics::HeadMetric`, chosen in its "colour by" menu).
//! Click a cell to select its layer and head.

use super::colormap::ColorMap;
use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};

/// The overview's colours span four decades below the largest value: the layer-0 heads (rounding
/// error, ~1e-7) and the deep heads (order 1) both stay readable.
const FLOOR: f32 = 1e-4;

fn log_position(x: f32, hi: f32) -> f32 {
    let r = (x / hi).max(FLOOR);
    1.0 - r.log10() / FLOOR.log10()
}

/// Cell heights of the grid (it takes what the maps leave, between the two), and what the grid needs
/// besides its cells (title, layer numbers, the colour bar and its ticks).
const CELL_H_MIN: f32 = 10.0;
const CELL_H_MAX: f32 = 28.0;
/// Title, layer numbers, the "colour by" menu and the colour bar, with the spacing between them.
/// Title, layer numbers, and the row of the "colour by" menu and the colour bar, with the spacing
/// between them.
const FRAME_H: f32 = 18.0 + 16.0 + 28.0 + 3.0 * 4.0;

/// The height the central panel keeps free for the overview of `n_heads` heads.
pub fn min_height(n_heads: usize) -> f32 {
    FRAME_H + CELL_H_MIN * n_heads as f32 + 8.0
}

#[derive(Default)]
pub struct OverviewPanel {
    hover: Option<(usize, usize, Option<f32>)>,
    /// What the cells show.
    pub metric: crate::metrics::HeadMetric,
}

impl OverviewPanel {
    /// `grid[layer][head]`; returns the clicked (layer, head).
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        grid: &[Vec<Option<f32>>],
        fresh: bool,
        selected: (usize, usize),
        cmap: ColorMap,
    ) -> Option<(usize, usize)> {
        let n_layers = grid.len();
        let n_heads = grid.first().map_or(0, |g| g.len());
        if n_layers == 0 || n_heads == 0 {
            return None;
        }
        let hi = grid
            .iter()
            .flatten()
            .filter_map(|x| *x)
            .fold(0f32, f32::max)
            // Rounding-level differences (layer 0) must not take the top colour when nothing larger
            // is on the grid: the scale spans at least 1e-7 .. 1e-3.
            .max(1e-3);
        let (what, log) = (self.metric.label(), self.metric.log_scale());
        let scale = if log {
            format!("log colour {:.0e} → {hi:.2e}", hi * FLOOR)
        } else {
            format!("colour 0 → {hi:.3}")
        };
        let updating = if fresh { "" } else { " · updating…" };
        ui.label(
            egui::RichText::new(format!(
                "overview: {what} per head (click to select; {scale}){updating}"
            ))
            .strong(),
        );
        let label_w = 30.0;
        let avail = ui.available_size();
        let cell_w = ((avail.x - label_w - 10.0) / n_layers as f32).clamp(4.0, 60.0);
        let cell_h = ((avail.y - FRAME_H) / n_heads as f32).clamp(4.0, CELL_H_MAX);
        let size = Vec2::new(
            label_w + cell_w * n_layers as f32,
            cell_h * n_heads as f32 + 16.0,
        );
        let (rect, resp) = ui.allocate_exact_size(size, Sense::click());
        let painter = ui.painter_at(rect);
        let origin = Pos2::new(rect.left() + label_w, rect.top());
        let text_col = ui.visuals().text_color();
        let font = egui::FontId::proportional(10.0);
        let mut mesh = egui::Mesh::default();
        for (l, heads) in grid.iter().enumerate() {
            for (h, v) in heads.iter().enumerate() {
                let r = Rect::from_min_size(
                    origin + Vec2::new(l as f32 * cell_w, h as f32 * cell_h),
                    Vec2::new(cell_w - 1.0, cell_h - 1.0),
                );
                let color = match v {
                    Some(x) if log => super::colormap::sample(cmap, log_position(*x, hi)),
                    Some(x) => super::colormap::sample(cmap, (x / hi).clamp(0.0, 1.0)),
                    None => Color32::from_gray(60),
                };
                mesh.add_colored_rect(r, color);
            }
        }
        painter.add(egui::Shape::mesh(mesh));
        let every_h = (12.0 / cell_h).ceil().max(1.0) as usize;
        for h in (0..n_heads).step_by(every_h) {
            painter.text(
                Pos2::new(
                    rect.left() + label_w - 3.0,
                    origin.y + (h as f32 + 0.5) * cell_h,
                ),
                egui::Align2::RIGHT_CENTER,
                format!("h{h}"),
                font.clone(),
                text_col,
            );
        }
        let every_l = (16.0 / cell_w).ceil().max(1.0) as usize;
        for l in (0..n_layers).step_by(every_l) {
            painter.text(
                Pos2::new(
                    origin.x + (l as f32 + 0.5) * cell_w,
                    origin.y + n_heads as f32 * cell_h + 2.0,
                ),
                egui::Align2::CENTER_TOP,
                l.to_string(),
                font.clone(),
                text_col,
            );
        }
        let (sl, sh) = selected;
        painter.rect_stroke(
            Rect::from_min_size(
                origin + Vec2::new(sl as f32 * cell_w, sh as f32 * cell_h),
                Vec2::new(cell_w - 1.0, cell_h - 1.0),
            ),
            0.0,
            Stroke::new(2.0, Color32::from_rgb(255, 80, 60)),
            egui::StrokeKind::Outside,
        );
        let cell_at = |pos: Pos2| -> Option<(usize, usize)> {
            let l = ((pos.x - origin.x) / cell_w).floor();
            let h = ((pos.y - origin.y) / cell_h).floor();
            (l >= 0.0 && h >= 0.0 && (l as usize) < n_layers && (h as usize) < n_heads)
                .then_some((l as usize, h as usize))
        };
        self.hover = resp
            .hover_pos()
            .and_then(cell_at)
            .map(|(l, h)| (l, h, grid[l][h]));
        let sel_value = grid.get(sl).and_then(|g| g.get(sh)).copied().flatten();
        resp.widget_info(|| {
            egui::WidgetInfo::labeled(
                egui::Role::Grid,
                true,
                format!(
                    "overview of {n_layers} layers by {n_heads} heads; selected layer {sl} head {sh}, {what} {}",
                    sel_value.map_or("n/a".into(), |v| format!("{v:.3e}"))
                ),
            )
        });
        let resp = match self.hover {
            Some((l, h, v)) => resp.on_hover_text(format!(
                "layer {l}, head {h}: {what} = {}",
                v.map_or("n/a".into(), |v| format!("{v:.6e}"))
            )),
            None => resp,
        };
        // Under the grid, where they move nothing above it: the menu and the colour bar on one row
        // (the overview's frame is then one row shorter, which the maps get).
        ui.horizontal(|ui| {
            super::plots::metric_selector(ui, &mut self.metric);
            let width = (cell_w * n_layers as f32).min(ui.available_width() - 12.0);
            colour_bar(ui, width, hi, cmap);
        });
        if resp.clicked() {
            return resp.interact_pointer_pos().and_then(cell_at);
        }
        None
    }
}

/// The overview's colour bar: the log scale from `hi`·1e-4 to `hi`, a tick per decade.
fn colour_bar(ui: &mut egui::Ui, width: f32, hi: f32, cmap: ColorMap) {
    let width = width.clamp(120.0, 480.0);
    let (rect, _) = ui.allocate_exact_size(Vec2::new(width + 12.0, 28.0), Sense::hover());
    let bar = Rect::from_min_size(
        Pos2::new(rect.left() + 6.0, rect.top() + 2.0),
        Vec2::new(width, 9.0),
    );
    let painter = ui.painter();
    let steps = 64;
    let mut mesh = egui::Mesh::default();
    for k in 0..steps {
        let t = (k as f32 + 0.5) / steps as f32;
        let x0 = bar.left() + width * k as f32 / steps as f32;
        mesh.add_colored_rect(
            Rect::from_min_max(
                Pos2::new(x0, bar.top()),
                Pos2::new(x0 + width / steps as f32 + 0.5, bar.bottom()),
            ),
            super::colormap::sample(cmap, t),
        );
    }
    painter.add(egui::Shape::mesh(mesh));
    let text_col = ui.visuals().text_color();
    let decades = -FLOOR.log10() as i32;
    // A tick per decade where there is room for its label, else the ends and the middle.
    let every = if width >= 60.0 * decades as f32 { 1 } else { 2 };
    for k in (0..=decades).step_by(every) {
        let t = k as f32 / decades as f32;
        let x = bar.left() + t * width;
        let value = hi * 10f32.powi(k - decades);
        painter.line_segment(
            [Pos2::new(x, bar.bottom()), Pos2::new(x, bar.bottom() + 3.0)],
            Stroke::new(1.0, text_col),
        );
        let align = match k {
            0 => egui::Align2::LEFT_TOP,
            k if k == decades => egui::Align2::RIGHT_TOP,
            _ => egui::Align2::CENTER_TOP,
        };
        painter.text(
            Pos2::new(x, bar.bottom() + 4.0),
            align,
            format!("{value:.0e}"),
            egui::FontId::proportional(10.0),
            text_col,
        );
    }
    let resp = ui.interact(
        bar,
        ui.scope_id().with("overview colour bar"),
        Sense::hover(),
    );
    resp.widget_info(|| {
        egui::WidgetInfo::labeled(
            egui::Role::Image,
            true,
            format!(
                "overview colour bar: max |renormalized − pretrained|, log scale {:.0e} to {hi:.2e}",
                hi * FLOOR
            ),
        )
    });
}
