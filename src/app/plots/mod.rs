//! The plots (egui_plot), in a panel under the maps that the status bar's "plots" button opens:
//! (a) deviation by layer, (b) prefix mass per query, (c) the paper's bias plot, and (d) the head
//! metrics the overview can be coloured by (its "colour by" menu). One struct per plot, state apart
//! from drawing; the numbers come from the library (`crate::metrics`, `crate::bias`), computed on
//! the plots' thread ([`jobs`]) once per full answer, never in `ui`.

pub mod bias;
pub mod deviation;
pub mod jobs;
pub mod prefix_mass;

use super::worker::Computed;
use crate::metrics::HeadMetric;
use jobs::{Done, Grid, Job, Jobs, MetricsDone};
use std::borrow::Cow;
use std::hash::{Hash, Hasher};

#[derive(Default)]
pub struct PlotsPanel {
    /// Whether the panel is shown (the metrics are kept current either way, for the overview).
    pub open: bool,
    pub deviation: deviation::DeviationPlot,
    pub prefix_mass: prefix_mass::PrefixMassPlot,
    pub bias: bias::BiasPlot,
    jobs: Jobs,
    /// The answer (by [`capture_key`]) the metrics were last asked for.
    metrics_asked: u64,
    /// The metrics of the answer with that key.
    pub metrics: Option<MetricsDone>,
}

/// The plots' settings the session keeps: whether the panel is open, the bias plot's position,
/// prompts and dimensions, and what the overview is coloured by.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PlotsSettings {
    pub open: bool,
    pub bias_from_end: usize,
    pub bias_beginnings: bool,
    /// The extra prompts, one per line, as typed.
    pub bias_extra: String,
    pub bias_auto_dims: bool,
    pub bias_dims: (usize, usize),
    pub overview_metric: HeadMetric,
}

impl Default for PlotsSettings {
    fn default() -> Self {
        PlotsPanel::default().settings(HeadMetric::default())
    }
}

impl PlotsPanel {
    /// The settings to save (`metric`: the overview's colouring, kept by the overview panel).
    pub fn settings(&self, metric: HeadMetric) -> PlotsSettings {
        let b = &self.bias;
        PlotsSettings {
            open: self.open,
            bias_from_end: b.from_end,
            bias_beginnings: b.beginnings,
            bias_extra: b.extra.clone(),
            bias_auto_dims: b.auto_dims,
            bias_dims: b.dims,
            overview_metric: metric,
        }
    }

    /// Restore saved settings; returns the overview's colouring. The extra prompts are tokenized
    /// when the plot next asks for its points (a model is loaded by then).
    pub fn apply(&mut self, s: &PlotsSettings) -> HeadMetric {
        self.open = s.open;
        let b = &mut self.bias;
        b.from_end = s.bias_from_end;
        b.beginnings = s.bias_beginnings;
        b.extra = s.bias_extra.clone();
        b.auto_dims = s.bias_auto_dims;
        b.dims = s.bias_dims;
        b.retokenize = true;
        s.overview_metric
    }
}

/// An answer's identity: its model, request and completeness (not its address, which a later
/// answer may reuse once this one is freed).
fn capture_key(c: &Computed) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (c.model_gen, c.gen, c.full).hash(&mut h);
    h.finish()
}

impl PlotsPanel {
    /// The status bar's button that shows and hides the panel.
    pub fn toggle_ui(&mut self, ui: &mut egui::Ui) {
        let b = egui::Button::selectable(self.open, egui::RichText::new("plots").small()).small();
        if ui
            .add(b)
            .on_hover_text("deviation by layer, prefix mass, bias plot")
            .clicked()
        {
            self.open = !self.open;
        }
    }

    /// Whether the metrics on hand are for `shown`.
    pub fn metrics_current(&self, shown: &Computed) -> bool {
        self.metrics
            .as_ref()
            .is_some_and(|m| m.key == capture_key(shown))
    }

    /// The grid the overview colours by `metric`: the worker's for the deviation, else the plots'
    /// (all `None` while it is computed), with whether it is for the answer on screen.
    pub fn overview_grid<'a>(
        &'a self,
        metric: HeadMetric,
        shown: &'a Computed,
    ) -> (Cow<'a, [Vec<Option<f32>>]>, bool) {
        if metric == HeadMetric::Deviation {
            return (Cow::Borrowed(&shown.overview), shown.overview_fresh);
        }
        let grid: Option<&Grid> = self
            .metrics
            .as_ref()
            .and_then(|m| m.grids.iter().find(|(k, _)| *k == metric))
            .map(|(_, g)| g);
        match grid {
            Some(g) => (Cow::Borrowed(g), self.metrics_current(shown)),
            None => (
                Cow::Owned(shown.overview.iter().map(|r| vec![None; r.len()]).collect()),
                false,
            ),
        }
    }
}

/// The overview's "colour by" menu (the one line `overview.rs` calls).
pub fn metric_selector(ui: &mut egui::Ui, metric: &mut HeadMetric) {
    egui::ComboBox::from_label("colour by")
        .selected_text(metric.label())
        .show_ui(ui, |ui| {
            for m in HeadMetric::ALL {
                ui.selectable_value(metric, m, m.label());
            }
        });
}

impl super::PrefixScopeApp {
    /// Every frame: collect the plots' results, ask for new ones when a full answer arrived or a
    /// setting changed, and draw the panel (under the maps, beside the controls) when it is open.
    pub(super) fn show_plots(&mut self, ui: &mut egui::Ui) {
        for done in self.plots.jobs.poll() {
            match done {
                Done::Metrics(m) => self.plots.metrics = Some(m),
                Done::Bias { key, layer, result } => {
                    self.plots.bias.result = Some(bias::BiasResult {
                        key,
                        layer,
                        points: result,
                    })
                }
            }
        }
        let ctx = ui.ctx().clone();
        let (Some(shown), Some(m)) = (&self.shown, &self.loaded) else {
            return;
        };
        let (n_layers, n_heads) = (m.info.n_layers, m.info.n_heads);
        // Metrics once per full answer (a quick answer lacks most layers).
        let key = capture_key(shown);
        if shown.full && self.plots.metrics_asked != key {
            self.plots.metrics_asked = key;
            match &shown.summaries {
                // A long prompt's answer brings its summaries, streamed head by head (its capture
                // holds one head only).
                Some(s) => {
                    self.plots.metrics = Some(MetricsDone {
                        key,
                        deviations: s.deviations.clone(),
                        grids: s
                            .grids
                            .iter()
                            .filter(|(m, _)| *m != HeadMetric::Deviation)
                            .cloned()
                            .collect(),
                    })
                }
                None if shown.only_head.is_none() => self.plots.jobs.send(
                    Job::Metrics {
                        key,
                        capture: shown.capture.clone(),
                        n_layers,
                        n_heads,
                    },
                    &ctx,
                ),
                None => {}
            }
        }
        if !self.plots.open {
            return;
        }
        let (layer, head) = (self.views.layer, self.views.head);
        let d_model = m.info.d_model;
        let mut resend = false;
        egui::Panel::bottom("plots")
            .resizable(true)
            .default_size(300.0)
            .size_range(self.bottom_range(ui, 180.0, self.ab.pinned.is_some()))
            .show(ui, |ui| {
                ui.columns(3, |cols| {
                    let devs = self.plots.metrics.as_ref().map(|m| m.deviations.as_slice());
                    self.plots.deviation.ui(&mut cols[0], devs, head);
                    // The capture's index of the viewed head (a long prompt's holds one head).
                    let local = shown.head_index(head);
                    self.plots.prefix_mass.ui(
                        &mut cols[1],
                        local.and(shown.capture.layer(layer)),
                        (head, local.unwrap_or(0)),
                        &self.shown_labels,
                    );
                    resend = self.plots.bias.ui(&mut cols[2], d_model);
                });
            });
        // The bias plot's forwards: for the full answer on screen, the viewed layer and the prompts.
        let Some(prefix) = &self.editor.prefix else {
            return;
        };
        if !shown.full {
            return;
        }
        if resend || self.plots.bias.retokenize {
            self.plots.bias.retokenize = false;
            self.plots.bias.tokenize_extra(Some(m.tokenizer.as_ref()));
        }
        let prompts = self.plots.bias.prompts(&shown.capture.token_ids);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let from_end = self.plots.bias.from_end;
        (key, m.model_gen, layer, from_end, self.editor.version).hash(&mut h);
        for p in &prompts {
            p.ids.hash(&mut h);
        }
        let bias_key = h.finish();
        if self.plots.bias.asked != Some(bias_key) {
            self.plots.bias.asked = Some(bias_key);
            self.plots.jobs.send(
                Job::Bias {
                    key: bias_key,
                    model: m.model.clone(),
                    prompts,
                    prefix: prefix.clone(),
                    layer,
                    from_end,
                },
                &ctx,
            );
        }
    }
}
