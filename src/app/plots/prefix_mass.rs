//! (b) Prefix mass per query: `a_i`, the attention content query `i` puts on the prefix
//! (`blocks.{l}.attn.hook_prefix_mass`), for the selected layer and head as bars, with the mean over
//! the layer's heads as a line. `1 - a_i` is the factor the paper's identity scales query `i`'s
//! content attention by.

use crate::capture::LayerCapture;
use crate::metrics::prefix_mass_per_query;
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints};

#[derive(Default)]
pub struct PrefixMassPlot {}

/// The mean over heads of `a_i`, per query.
pub fn mean_over_heads(lc: &LayerCapture) -> Option<Vec<f32>> {
    let m = lc.prefix_mass.as_ref()?;
    let (h, n) = (m.shape[0], m.shape[1]);
    Some(
        (0..n)
            .map(|i| (0..h).map(|k| m.data[k * n + i]).sum::<f32>() / h.max(1) as f32)
            .collect(),
    )
}

impl PrefixMassPlot {
    /// `lc`: the selected layer (`None` until it is computed); `head`: the model's head number (what
    /// the titles say) and its index in `lc`'s head axis, which differ on the long-prompt path where
    /// the capture holds the viewed head only (then there is no mean over heads to draw);
    /// `labels`: the content tokens' labels.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        lc: Option<&LayerCapture>,
        (head, local): (usize, usize),
        labels: &[String],
    ) {
        let title = match lc {
            Some(lc) => format!("Prefix mass per query (layer {}, head {head})", lc.layer),
            None => "Prefix mass per query".into(),
        };
        ui.label(egui::RichText::new(title).strong());
        let Some(lc) = lc else {
            ui.label("computing…");
            return;
        };
        let Some(mass) = prefix_mass_per_query(lc, local) else {
            ui.label("no prefix");
            return;
        };
        // One head held (a long prompt): its mean would be that head's own bars, so none is drawn.
        let mean = if lc.n_heads() > 1 {
            mean_over_heads(lc)
        } else {
            None
        };
        let bars: Vec<Bar> = mass
            .iter()
            .enumerate()
            .map(|(i, &a)| Bar::new(i as f64, a as f64).width(0.8))
            .collect();
        let line: Option<Vec<[f64; 2]>> = mean.map(|mean| {
            mean.iter()
                .enumerate()
                .map(|(i, &a)| [i as f64, a as f64])
                .collect()
        });
        let labels: Vec<String> = labels
            .iter()
            .map(|l| super::super::views::axis_label(l))
            .collect();
        let n = mass.len();
        // Tokens per label so that labels sit at least 28 px apart (the y axis takes about 60).
        let px_per_token = ((ui.available_width() - 60.0) / n.max(1) as f32).max(1.0);
        let step = (28.0 / px_per_token).ceil().max(1.0) as f64;
        let resp = Plot::new("prefix_mass_per_query")
            .legend(Legend::default().text_style(egui::TextStyle::Small))
            .y_axis_label("a_i (attention on the prefix)")
            .include_y(0.0)
            .include_y(1.0)
            // A labelled mark on every token while labels fit about 28 px apart, else on every k-th.
            .x_grid_spacer(move |input| {
                let (lo, hi) = input.bounds;
                let mut v = (lo / step).ceil() * step;
                let mut out = Vec::new();
                while v <= hi {
                    out.push(egui_plot::GridMark {
                        value: v,
                        step_size: step,
                    });
                    v += step;
                }
                out
            })
            .custom_x_axes(vec![egui_plot::AxisHints::new_x()
                .label("query token")
                .label_spacing(20.0..=28.0)
                .formatter(move |m, _| {
                    let i = m.value.round();
                    if (m.value - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                        labels[i as usize].clone()
                    } else {
                        String::new()
                    }
                })])
            .allow_scroll(false)
            .show(ui, |p| {
                p.bar_chart(
                    BarChart::new(format!("head {head}"), bars)
                        .color(egui::Color32::from_rgb(49, 130, 189)),
                );
                if let Some(line) = line {
                    p.line(
                        Line::new("mean over heads", PlotPoints::from(line))
                            .color(egui::Color32::from_rgb(230, 85, 13)),
                    );
                }
            });
        let max = mass.iter().copied().fold(0f32, f32::max);
        resp.response.widget_info(|| {
            egui::WidgetInfo::labeled(
                egui::Role::Image,
                true,
                format!("prefix mass per query plot: {n} queries, largest {max:.3}"),
            )
        });
    }
}
