//! (c) The paper's bias plot, live: the attention block output (`blocks.{l}.hook_attn_out`) at one
//! position of several prompts, without the prefix (hollow) and with it (filled), one line per
//! prompt, in the two residual dimensions the prefix moves most (or two chosen ones). Parallel lines
//! of similar length are the paper's claim: a prefix adds a nearly constant bias to the output.
//! The forwards run on the plots' thread ([`super::jobs`]), never in `ui`.

use super::jobs::BiasPrompt;
use crate::bias::{top_shift_dims, BiasPoint};
use crate::tokenizer::Tokenizer;
use egui_plot::{Legend, Line, MarkerShape, Plot, PlotPoints, Points};

/// How many shorter beginnings of the prompt are added as prompts of their own.
const BEGINNINGS: usize = 4;

/// Okabe-Ito: colour-blind-safe, as the exported figure (c) uses.
const COLORS: [egui::Color32; 8] = [
    egui::Color32::from_rgb(0, 114, 178),
    egui::Color32::from_rgb(213, 94, 0),
    egui::Color32::from_rgb(0, 158, 115),
    egui::Color32::from_rgb(204, 121, 167),
    egui::Color32::from_rgb(230, 159, 0),
    egui::Color32::from_rgb(86, 180, 233),
    egui::Color32::from_rgb(240, 228, 66),
    egui::Color32::from_rgb(120, 120, 120),
];

/// An answer: the settings it was computed for and one point (or error) per prompt.
#[derive(Debug, Clone)]
pub struct BiasResult {
    pub key: u64,
    pub layer: usize,
    pub points: Vec<(BiasPrompt, Result<BiasPoint, String>)>,
}

impl BiasResult {
    pub fn ok_points(&self) -> Vec<BiasPoint> {
        self.points
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().cloned())
            .collect()
    }
}

pub struct BiasPlot {
    /// More prompts, one per line (tokenized with the model's tokenizer, no BOS).
    pub extra: String,
    /// Add the prompt's shorter beginnings (its first N−1, …, N−4 tokens) as prompts.
    pub beginnings: bool,
    /// The position, counted from each prompt's end (0 = its last token).
    pub from_end: usize,
    /// Draw the two dimensions the prefix moves most; else `dims`.
    pub auto_dims: bool,
    pub dims: (usize, usize),
    /// The key of the last job sent.
    pub asked: Option<u64>,
    pub result: Option<BiasResult>,
    /// The extra prompts, tokenized.
    pub extra_prompts: Vec<BiasPrompt>,
    /// Prompts that could not be tokenized.
    pub prompt_errors: Vec<String>,
    /// The extra prompts were restored from a session and are not tokenized yet.
    pub retokenize: bool,
}

impl Default for BiasPlot {
    fn default() -> Self {
        BiasPlot {
            extra: String::new(),
            beginnings: true,
            from_end: 0,
            auto_dims: true,
            dims: (0, 1),
            asked: None,
            result: None,
            extra_prompts: Vec::new(),
            prompt_errors: Vec::new(),
            retokenize: false,
        }
    }
}

/// Mean shift length (full dimension) and mean cosine of each shift with the mean shift, as the
/// exported figure's caption gives them.
pub fn shift_stats(points: &[BiasPoint]) -> Option<(f32, f32)> {
    let d = points.first()?.with.len();
    let shifts: Vec<Vec<f32>> = points
        .iter()
        .map(|p| p.with.iter().zip(&p.without).map(|(a, b)| a - b).collect())
        .collect();
    let mean: Vec<f32> = (0..d)
        .map(|i| shifts.iter().map(|s| s[i]).sum::<f32>() / shifts.len() as f32)
        .collect();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let len = shifts.iter().map(|s| norm(s)).sum::<f32>() / shifts.len() as f32;
    let cos = shifts
        .iter()
        .map(|s| {
            s.iter().zip(&mean).map(|(a, b)| a * b).sum::<f32>()
                / (norm(s) * norm(&mean)).max(1e-12)
        })
        .sum::<f32>()
        / shifts.len() as f32;
    Some((len, cos))
}

impl BiasPlot {
    /// Tokenize the extra prompts (when their box loses focus), keeping the errors to show.
    pub fn tokenize_extra(&mut self, tok: Option<&Tokenizer>) {
        self.extra_prompts.clear();
        self.prompt_errors.clear();
        for line in self.extra.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match tok.map(|t| t.encode(line, false)) {
                Some(Ok(ids)) if !ids.is_empty() => self.extra_prompts.push(BiasPrompt {
                    label: line.chars().take(24).collect(),
                    ids,
                }),
                Some(Ok(_)) => self.prompt_errors.push(format!("'{line}': no tokens")),
                Some(Err(e)) => self.prompt_errors.push(e.one_line()),
                None => self.prompt_errors.push("no tokenizer".into()),
            }
        }
    }

    /// The prompts to run: the current prompt, its shorter beginnings (when on), and the extra ones.
    pub fn prompts(&self, current: &[u32]) -> Vec<BiasPrompt> {
        let mut out = vec![BiasPrompt {
            label: "the prompt".into(),
            ids: current.to_vec(),
        }];
        if self.beginnings {
            for k in 1..=BEGINNINGS {
                let m = current.len().saturating_sub(k);
                if m > self.from_end {
                    out.push(BiasPrompt {
                        label: format!("its first {m} tokens"),
                        ids: current[..m].to_vec(),
                    });
                }
            }
        }
        out.extend(self.extra_prompts.iter().cloned());
        out
    }

    /// The dimensions drawn.
    pub fn shown_dims(&self) -> (usize, usize) {
        match (&self.result, self.auto_dims) {
            (Some(r), true) => top_shift_dims(&r.ok_points()),
            _ => self.dims,
        }
    }

    /// Settings and the plot; `d_model` bounds the dimension choosers. Returns true when the extra
    /// prompts were edited (to be tokenized again); other settings are part of the job's key.
    pub fn ui(&mut self, ui: &mut egui::Ui, d_model: usize) -> bool {
        let mut changed = false;
        let title = match &self.result {
            Some(r) => format!("Bias plot (layer {} attention output)", r.layer),
            None => "Bias plot".into(),
        };
        ui.label(egui::RichText::new(title).strong());
        ui.horizontal_wrapped(|ui| {
            ui.label("position from the end");
            ui.add(egui::DragValue::new(&mut self.from_end).range(0..=512));
            ui.checkbox(&mut self.beginnings, "and the prompt's beginnings");
            ui.checkbox(&mut self.auto_dims, "most moved dimensions");
            if !self.auto_dims {
                let top = d_model.saturating_sub(1);
                ui.add(
                    egui::DragValue::new(&mut self.dims.0)
                        .range(0..=top)
                        .prefix("x: d"),
                );
                ui.add(
                    egui::DragValue::new(&mut self.dims.1)
                        .range(0..=top)
                        .prefix("y: d"),
                );
            }
        });
        let edit = ui.add(
            egui::TextEdit::multiline(&mut self.extra)
                .desired_rows(1)
                .desired_width(f32::INFINITY)
                .hint_text("more prompts, one per line"),
        );
        edit.widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::MultilineTextInput, true, "bias plot prompts")
        });
        // A prompt is sent when the box loses focus, not at every keystroke.
        changed |= edit.lost_focus();
        for e in &self.prompt_errors {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        let Some(r) = &self.result else {
            ui.label("computing…");
            return changed;
        };
        if self.asked != Some(r.key) {
            ui.weak("updating…");
        }
        for (p, e) in r
            .points
            .iter()
            .filter_map(|(p, r)| Some((p, r.as_ref().err()?)))
        {
            ui.colored_label(ui.visuals().error_fg_color, format!("{}: {e}", p.label));
        }
        let ok = r.ok_points();
        let (dx, dy) = self.shown_dims();
        if let Some((len, cos)) = shift_stats(&ok) {
            ui.label(format!(
                "{} prompts · mean shift length {len:.3} · mean cosine to the mean shift {cos:.3}",
                ok.len()
            ));
        }
        let items: Vec<(String, [f64; 2], [f64; 2])> = r
            .points
            .iter()
            .filter_map(|(p, res)| {
                let b = res.as_ref().ok()?;
                let at = |v: &[f32]| Some([*v.get(dx)? as f64, *v.get(dy)? as f64]);
                Some((p.label.clone(), at(&b.without)?, at(&b.with)?))
            })
            .collect();
        let n_lines = items.len();
        let resp = Plot::new("bias_plot")
            .legend(
                Legend::default()
                    .position(egui_plot::Corner::LeftTop)
                    .text_style(egui::TextStyle::Small)
                    .background_alpha(0.4),
            )
            .x_axis_label(format!("attention output, dimension {dx}"))
            .y_axis_label(format!("dimension {dy}"))
            .allow_scroll(false)
            .show(ui, |p| {
                for (k, (label, from, to)) in items.into_iter().enumerate() {
                    let c = COLORS[k % COLORS.len()];
                    p.line(Line::new(label.clone(), PlotPoints::from(vec![from, to])).color(c));
                    p.points(
                        Points::new(label.clone(), PlotPoints::from(vec![from]))
                            .color(c)
                            .shape(MarkerShape::Circle)
                            .filled(false)
                            .radius(4.0),
                    );
                    p.points(
                        Points::new(label, PlotPoints::from(vec![to]))
                            .color(c)
                            .shape(MarkerShape::Circle)
                            .radius(4.0),
                    );
                }
            });
        resp.response.widget_info(|| {
            egui::WidgetInfo::labeled(
                egui::Role::Image,
                true,
                format!("bias plot: {n_lines} prompts, dimensions {dx} and {dy}"),
            )
        });
        changed
    }
}
