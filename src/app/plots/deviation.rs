//! (a) Deviation by layer: max and mean |renormalized − pretrained| per layer, for the selected head
//! and over all heads ([`crate::metrics::deviations`]). The paper's cross-layer effect at a glance:
//! rounding level (about 1e-7) in layer 0, where a prefix can only rescale attention, and growing
//! after it, where the prefix has changed the layer's inputs.

use crate::metrics::LayerDeviations;
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints, Points};

/// The smallest value drawn on the log axis (exact zeros sit here).
const LOG_FLOOR: f64 = 1e-9;

pub struct DeviationPlot {
    /// log10 y axis (the default: layer 0's rounding and the deep layers' order-1 values both show).
    pub log_y: bool,
}

impl Default for DeviationPlot {
    fn default() -> Self {
        DeviationPlot { log_y: true }
    }
}

/// The four series: `(name, [(layer, value)])`.
pub fn series(devs: &[LayerDeviations], head: usize) -> Vec<(String, Vec<(usize, f32)>)> {
    let pick = |f: &dyn Fn(&LayerDeviations) -> Option<f32>| -> Vec<(usize, f32)> {
        devs.iter().filter_map(|d| Some((d.layer, f(d)?))).collect()
    };
    vec![
        (
            format!("head {head}: max"),
            pick(&|d| Some(d.head(head)?.0)),
        ),
        (
            format!("head {head}: mean"),
            pick(&|d| Some(d.head(head)?.1)),
        ),
        ("all heads: max".into(), pick(&|d| Some(d.all().0))),
        ("all heads: mean".into(), pick(&|d| Some(d.all().1))),
    ]
}

impl DeviationPlot {
    /// `devs`: the current capture's deviations (`None` while they are computed); `head` the
    /// selected head.
    pub fn ui(&mut self, ui: &mut egui::Ui, devs: Option<&[LayerDeviations]>, head: usize) {
        ui.horizontal(|ui| {
            ui.label(egui::RichText::new("Deviation by layer").strong());
            ui.checkbox(&mut self.log_y, "log scale");
        });
        let Some(devs) = devs else {
            ui.label("computing…");
            return;
        };
        if devs.is_empty() {
            ui.label("no prefix: renormalized and pretrained are the same attention");
            return;
        }
        let series = series(devs, head);
        let log_y = self.log_y;
        let y = move |v: f32| {
            if log_y {
                (v as f64).max(LOG_FLOOR).log10()
            } else {
                v as f64
            }
        };
        let colors = [
            egui::Color32::from_rgb(230, 85, 13),
            egui::Color32::from_rgb(253, 174, 107),
            egui::Color32::from_rgb(49, 130, 189),
            egui::Color32::from_rgb(158, 202, 225),
        ];
        let summary = series
            .iter()
            .map(|(name, pts)| {
                let last = pts.last().map_or("–".into(), |p| format!("{:.2e}", p.1));
                format!("{name} at the last layer {last}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        let resp = Plot::new("deviation_by_layer")
            .legend(
                Legend::default()
                    .position(egui_plot::Corner::RightBottom)
                    .text_style(egui::TextStyle::Small),
            )
            .x_axis_label("layer")
            .y_axis_label(if log_y {
                "|renormalized − pretrained| (log10)"
            } else {
                "|renormalized − pretrained|"
            })
            .y_axis_formatter(move |m, _| {
                if log_y {
                    format!("1e{:.0}", m.value)
                } else {
                    format!("{:.2}", m.value)
                }
            })
            .allow_scroll(false)
            .show(ui, |p| {
                for (k, (name, pts)) in series.into_iter().enumerate() {
                    let xy: Vec<[f64; 2]> = pts.iter().map(|&(l, v)| [l as f64, y(v)]).collect();
                    let style = if k % 2 == 0 {
                        LineStyle::Solid
                    } else {
                        LineStyle::dashed_loose()
                    };
                    p.line(
                        Line::new(name.clone(), PlotPoints::from(xy.clone()))
                            .color(colors[k])
                            .style(style),
                    );
                    p.points(
                        Points::new(name, PlotPoints::from(xy))
                            .color(colors[k])
                            .radius(3.0),
                    );
                }
            });
        resp.response.widget_info(|| {
            egui::WidgetInfo::labeled(
                egui::Role::Image,
                true,
                format!("deviation by layer plot: {summary}"),
            )
        });
    }
}
