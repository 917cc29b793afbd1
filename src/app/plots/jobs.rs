//! The plots' background thread: head-metric grids over a whole capture, and the bias plot's extra
//! forwards, off the UI thread and below its priority (like the compute thread). Jobs are asked for
//! only when a full answer arrives (the pointer rests) or a plot setting changes, so they never
//! compete with a slider drag; of each kind only the newest pending job runs.

use crate::bias::{block_output_at, BiasPoint};
use crate::capture::Capture;
use crate::metrics::{deviations, head_metric_grid, HeadMetric, LayerDeviations};
use crate::model::Transformer;
use crate::prefix::Prefix;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// `grid[layer][head]`, the overview's layout.
pub type Grid = Vec<Vec<Option<f32>>>;

/// One prompt of the bias plot: its label and token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasPrompt {
    pub label: String,
    pub ids: Vec<u32>,
}

pub enum Job {
    /// Everything the plots read from one capture.
    Metrics {
        key: u64,
        capture: Arc<Capture>,
        n_layers: usize,
        n_heads: usize,
    },
    /// The attention block output at one position of each prompt, without and with `prefix`.
    Bias {
        key: u64,
        model: Arc<dyn Transformer>,
        prompts: Vec<BiasPrompt>,
        prefix: Prefix,
        layer: usize,
        from_end: usize,
    },
}

/// The metrics of one capture.
pub struct MetricsDone {
    pub key: u64,
    pub deviations: Vec<LayerDeviations>,
    /// One grid per [`HeadMetric`] other than the deviation (the worker's overview has that one).
    pub grids: Vec<(HeadMetric, Grid)>,
}

pub enum Done {
    Metrics(MetricsDone),
    Bias {
        key: u64,
        layer: usize,
        /// Per prompt: its point, or the one-line reason it has none.
        result: Vec<(BiasPrompt, Result<BiasPoint, String>)>,
    },
}

/// The UI's handle on the thread (started on first use).
#[derive(Default)]
pub struct Jobs {
    tx: Option<Sender<(Job, egui::Context)>>,
    rx: Option<Receiver<Done>>,
}

impl Jobs {
    pub fn send(&mut self, job: Job, ctx: &egui::Context) {
        if self.tx.is_none() {
            let (tx, rx_job) = channel::<(Job, egui::Context)>();
            let (tx_done, rx) = channel::<Done>();
            let spawned = std::thread::Builder::new()
                .name("prefixscope-plots".into())
                .spawn(move || run(rx_job, tx_done));
            if spawned.is_err() {
                return;
            }
            self.tx = Some(tx);
            self.rx = Some(rx);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send((job, ctx.clone()));
        }
    }

    /// Results that arrived since the last call.
    pub fn poll(&self) -> Vec<Done> {
        self.rx
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }
}

fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with who = 0 changes only the calling thread's nice value on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

fn run(rx: Receiver<(Job, egui::Context)>, tx: Sender<Done>) {
    lower_priority();
    while let Ok(first) = rx.recv() {
        // Keep only the newest job of each kind.
        let (mut metrics, mut bias) = (None, None);
        let mut ctx = None;
        for (job, c) in std::iter::once(first).chain(rx.try_iter()) {
            ctx = Some(c);
            match job {
                j @ Job::Metrics { .. } => metrics = Some(j),
                j @ Job::Bias { .. } => bias = Some(j),
            }
        }
        for job in [metrics, bias].into_iter().flatten() {
            let done = match job {
                Job::Metrics {
                    key,
                    capture,
                    n_layers,
                    n_heads,
                } => Done::Metrics(MetricsDone {
                    key,
                    deviations: deviations(&capture),
                    grids: HeadMetric::ALL
                        .into_iter()
                        .filter(|m| *m != HeadMetric::Deviation)
                        .map(|m| (m, head_metric_grid(&capture, n_layers, n_heads, m)))
                        .collect(),
                }),
                Job::Bias {
                    key,
                    model,
                    prompts,
                    prefix,
                    layer,
                    from_end,
                } => Done::Bias {
                    key,
                    layer,
                    result: prompts
                        .into_iter()
                        .map(|p| {
                            let r =
                                block_output_at(model.as_ref(), &p.ids, &prefix, layer, from_end)
                                    .map_err(|e| e.one_line());
                            (p, r)
                        })
                        .collect(),
                },
            };
            if tx.send(done).is_err() {
                return;
            }
            if let Some(c) = &ctx {
                c.request_repaint();
            }
        }
    }
}
