//! The Tune panel: tune the prefix by gradient descent on the loaded model (every weight frozen,
//! `crate::tune`) and watch the views while it trains: layer 0's renormalized attention stays the
//! pretrained one while the loss falls, deeper layers move.
//!
//! The panel's state (settings, the loss history, the run) is apart from its drawing. Training runs
//! on its own thread; the UI thread only reads its messages ([`TunePanel::poll`]) and sets two flags
//! (pause, stop), each read before every step, so Pause and Stop take effect within one step. Every
//! few steps the thread sends the current prefix, which the app puts in the editor (the views then
//! redraw from it); the first such update is one undo step and the rest replace it, so undo takes
//! back a whole run.

use crate::model::Transformer;
use crate::prefix::{Prefix, PrefixKind};
use crate::tokenizer::Tokenizer;
use crate::tune::output::Output;
use crate::tune::{initial_prefix, Example, StepStats, TuneConfig, Tuner};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Send the current prefix to the editor at most this often (and at the end).
const PREVIEW_EVERY: Duration = Duration::from_millis(300);

/// What the app needs to start or save a run.
pub struct TuneInputs<'a> {
    pub model: Option<&'a Arc<dyn Transformer>>,
    /// Which load of the model this is (a run on an older model is stopped and ignored).
    pub model_gen: u64,
    pub model_path: Option<&'a Path>,
    pub tokenizer: Option<&'a Tokenizer>,
    /// The prompt's token ids (the app's prompt box), and whether BOS is on for data-file prompts.
    pub prompt: &'a [u32],
    pub bos: bool,
    /// The editor's prefix: tuning starts from it when it has the chosen kind and length.
    pub current: Option<&'a Prefix>,
}

/// What the run asks of the editor.
#[derive(Debug, Clone)]
pub enum TuneEvent {
    /// The prefix the run starts from: record the state before it as one undo step.
    Started(Prefix),
    /// The current prefix during the run, and the final one.
    Prefix(Prefix),
}

enum Msg {
    Started(Prefix),
    Step(StepStats),
    Prefix(Prefix),
    Done(Result<Prefix, String>),
}

#[derive(Default)]
struct Control {
    pause: AtomicBool,
    stop: AtomicBool,
}

struct Run {
    ctrl: Arc<Control>,
    rx: mpsc::Receiver<Msg>,
    model_gen: u64,
    steps: usize,
}

/// The panel's settings and the state of its run.
pub struct TunePanel {
    /// The continuation to make likely after the app's prompt.
    pub target: String,
    /// A JSON-lines file of prompt/target pairs; when set it replaces the prompt and target.
    pub data_path: String,
    pub kind: PrefixKind,
    pub length: usize,
    pub steps: usize,
    pub lr: f64,
    pub seed: u64,
    pub save_path: String,
    run: Option<Run>,
    history: Vec<StepStats>,
    /// The latest prefix the run reported (what Save writes).
    latest: Option<Prefix>,
    status: Option<(bool, String)>,
    /// Where Save last wrote (the one existing path it may replace).
    saved_to: Option<std::path::PathBuf>,
}

impl Default for TunePanel {
    fn default() -> Self {
        TunePanel {
            target: String::new(),
            data_path: String::new(),
            kind: PrefixKind::SoftPrompt,
            length: 4,
            steps: 100,
            lr: 0.01,
            seed: 0,
            save_path: String::new(),
            run: None,
            history: Vec::new(),
            latest: None,
            status: None,
            saved_to: None,
        }
    }
}

impl TunePanel {
    /// The steps of the current (or last) run so far, in order.
    pub fn history(&self) -> &[StepStats] {
        &self.history
    }

    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.run
            .as_ref()
            .is_some_and(|r| r.ctrl.pause.load(Ordering::Relaxed))
    }

    /// The last outcome or error, for the status line.
    pub fn status(&self) -> Option<&(bool, String)> {
        self.status.as_ref()
    }

    /// Read what the run sent since the last frame; `model_gen` is the model now loaded (a run on
    /// another one is stopped and its messages dropped).
    pub fn poll(&mut self, model_gen: u64) -> Vec<TuneEvent> {
        let mut out = Vec::new();
        let Some(run) = &self.run else { return out };
        if run.model_gen != model_gen {
            run.ctrl.stop.store(true, Ordering::Relaxed);
            self.run = None;
            self.status = Some((true, "stopped: another model was loaded".into()));
            return out;
        }
        let mut finished = false;
        while let Ok(m) = run.rx.try_recv() {
            match m {
                Msg::Started(p) => out.push(TuneEvent::Started(p)),
                Msg::Step(s) => self.history.push(s),
                Msg::Prefix(p) => {
                    self.latest = Some(p.clone());
                    out.push(TuneEvent::Prefix(p));
                }
                Msg::Done(r) => {
                    finished = true;
                    match r {
                        Ok(p) => {
                            self.status = Some((false, self.summary("done")));
                            self.latest = Some(p.clone());
                            out.push(TuneEvent::Prefix(p));
                        }
                        Err(e) => self.status = Some((true, e)),
                    }
                }
            }
        }
        if finished {
            self.run = None;
        }
        out
    }

    fn summary(&self, what: &str) -> String {
        match (self.history.first(), self.history.last()) {
            (Some(a), Some(b)) => format!(
                "{what}: {} steps, loss {:.4} → {:.4}, p(target) {:.4} → {:.4}",
                b.step + 1,
                a.loss,
                b.loss,
                a.p_target,
                b.p_target
            ),
            _ => what.to_string(),
        }
    }

    /// Start a run on a background thread.
    fn start(&mut self, ctx: &egui::Context, inp: &TuneInputs) {
        let (Some(model), Some(tok)) = (inp.model, inp.tokenizer) else {
            self.status = Some((true, "open a model first".into()));
            return;
        };
        let examples = match self.examples(inp.prompt, inp.bos, tok) {
            Ok(e) => e,
            Err(e) => {
                self.status = Some((true, e));
                return;
            }
        };
        let cfg = TuneConfig {
            kind: self.kind,
            length: self.length,
            lr: self.lr,
            seed: self.seed,
        };
        let from = inp
            .current
            .filter(|p| p.kind() == self.kind && p.len() == self.length)
            .cloned();
        let ctrl = Arc::new(Control::default());
        let (tx, rx) = mpsc::channel();
        let (model, steps, c) = (model.clone(), self.steps, ctrl.clone());
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("prefixscope-tune".into())
            .spawn(move || {
                let done = train(model, examples, cfg, from, steps, &c, &tx, &ctx);
                let _ = tx.send(Msg::Done(done.map_err(|e| e.one_line())));
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => {
                self.history.clear();
                self.latest = None;
                self.status = None;
                self.run = Some(Run {
                    ctrl,
                    rx,
                    model_gen: inp.model_gen,
                    steps,
                });
            }
            Err(e) => self.status = Some((true, format!("could not start tuning: {e}"))),
        }
    }

    /// The pairs to tune on: the data file's, else the app's prompt with the target.
    fn examples(
        &self,
        prompt: &[u32],
        bos: bool,
        tok: &Tokenizer,
    ) -> std::result::Result<Vec<Example>, String> {
        let data = self.data_path.trim();
        let pairs: Vec<(Vec<u32>, String)> = if data.is_empty() {
            if self.target.is_empty() {
                return Err("type a target (the continuation to make likely)".into());
            }
            vec![(prompt.to_vec(), self.target.clone())]
        } else {
            crate::tune::read_pairs(Path::new(data))
                .map_err(|e| e.one_line())?
                .into_iter()
                .map(|(p, t)| Ok((tok.encode(&p, bos).map_err(|e| e.one_line())?, t)))
                .collect::<std::result::Result<_, String>>()?
        };
        pairs
            .into_iter()
            .map(|(prompt, t)| {
                Ok(Example {
                    prompt,
                    target: tok.encode(&t, false).map_err(|e| e.one_line())?,
                })
            })
            .collect()
    }

    fn stop(&self) {
        if let Some(r) = &self.run {
            r.ctrl.stop.store(true, Ordering::Relaxed);
            r.ctrl.pause.store(false, Ordering::Relaxed);
        }
    }

    fn save(&mut self, inp: &TuneInputs) {
        let path = self.save_path.trim();
        let (Some(p), Some(model)) = (&self.latest, inp.model) else {
            self.status = Some((true, "nothing tuned to save yet".into()));
            return;
        };
        if path.is_empty() {
            self.status = Some((
                true,
                "type a path: .npz/.safetensors/.npy, or a folder for a PEFT adapter".into(),
            ));
            return;
        }
        let out = Output::for_path(Path::new(path));
        // Replace only what this panel saved before: anything else at the path is kept.
        if out.path().exists() && self.saved_to.as_deref() != Some(out.path()) {
            self.status = Some((true, format!("{path} exists: choose another path")));
            return;
        }
        let base = inp
            .model_path
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.status = Some(match out.save(p, model.as_ref(), &base) {
            Ok(()) => {
                self.saved_to = Some(out.path().to_path_buf());
                (false, format!("saved {path}"))
            }
            Err(e) => (true, e.one_line()),
        });
    }

    /// Draw the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, inp: &TuneInputs) {
        let running = self.run.is_some();
        ui.add_enabled_ui(!running, |ui| {
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.target)
                    .desired_width(ui.available_width() - 16.0)
                    .hint_text("target: the continuation after the prompt"),
            );
            r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "tune target"));
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.data_path)
                    .desired_width(ui.available_width() - 16.0)
                    .hint_text("or a .jsonl file of {\"prompt\", \"target\"}"),
            );
            r.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::TextInput, true, "tune data file")
            });
            ui.horizontal(|ui| {
                egui::ComboBox::from_id_salt("tune-kind")
                    .selected_text(kind_name(self.kind))
                    .show_ui(ui, |ui| {
                        for k in [
                            PrefixKind::SoftPrompt,
                            PrefixKind::KeyValue,
                            PrefixKind::Hidden,
                        ] {
                            ui.selectable_value(&mut self.kind, k, kind_name(k));
                        }
                    });
                ui.label("P");
                ui.add(egui::DragValue::new(&mut self.length).range(1..=64));
                ui.label("steps");
                ui.add(egui::DragValue::new(&mut self.steps).range(1..=100_000));
            });
            ui.horizontal(|ui| {
                ui.label("lr");
                ui.add(
                    egui::DragValue::new(&mut self.lr)
                        .range(1e-5..=1.0)
                        .speed(0.001)
                        .max_decimals(5),
                );
                ui.label("seed");
                ui.add(egui::DragValue::new(&mut self.seed));
            });
        });
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!running && inp.model.is_some(), egui::Button::new("Start"))
                .clicked()
            {
                self.start(ui.ctx(), inp);
            }
            let paused = self.is_paused();
            if ui
                .add_enabled(
                    running,
                    egui::Button::new(if paused { "Resume" } else { "Pause" }),
                )
                .clicked()
            {
                if let Some(r) = &self.run {
                    r.ctrl.pause.store(!paused, Ordering::Relaxed);
                }
            }
            if ui.add_enabled(running, egui::Button::new("Stop")).clicked() {
                self.stop();
            }
        });
        if let (Some(r), Some(s)) = (&self.run, self.history.last()) {
            ui.label(format!(
                "step {}/{} · loss {:.4} · p(target) {:.4} · acc {:.2}{}",
                s.step + 1,
                r.steps,
                s.loss,
                s.p_target,
                s.accuracy,
                if self.is_paused() { " · paused" } else { "" }
            ));
        }
        self.plots(ui);
        ui.horizontal(|ui| {
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.save_path)
                    .desired_width(ui.available_width() - 60.0)
                    .hint_text("save as .npz / folder (PEFT)"),
            );
            r.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::TextInput, true, "tune save path")
            });
            if ui
                .add_enabled(self.latest.is_some(), egui::Button::new("Save"))
                .clicked()
            {
                self.save(inp);
            }
        });
        if let Some(s) = &self.status {
            super::status_line(ui, s);
        }
        if running {
            // Messages arrive from the training thread; it also asks for repaints.
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
    }

    /// Loss and target probability against the step, drawn from the history.
    fn plots(&self, ui: &mut egui::Ui) {
        use egui_plot::{Line, Plot, PlotPoints};
        let loss: Vec<[f64; 2]> = self
            .history
            .iter()
            .map(|s| [s.step as f64, s.loss])
            .collect();
        let prob: Vec<[f64; 2]> = self
            .history
            .iter()
            .map(|s| [s.step as f64, s.p_target])
            .collect();
        let w = (ui.available_width() - 8.0) / 2.0;
        ui.horizontal(|ui| {
            for (id, name, pts, top) in [
                ("tune-loss", "loss", loss, None),
                ("tune-p", "p(target)", prob, Some(1.0)),
            ] {
                ui.vertical(|ui| {
                    ui.small(name);
                    let mut plot = Plot::new(id)
                        .width(w)
                        .height(90.0)
                        .allow_zoom(false)
                        .allow_drag(false)
                        .allow_scroll(false)
                        .include_y(0.0)
                        .include_x(0.0);
                    if let Some(t) = top {
                        plot = plot.include_y(t);
                    }
                    plot.show(ui, |p| p.line(Line::new(name, PlotPoints::from(pts))));
                });
            }
        });
    }
}

fn kind_name(k: PrefixKind) -> &'static str {
    match k {
        PrefixKind::SoftPrompt => "soft prompt",
        PrefixKind::KeyValue => "key/value",
        PrefixKind::Hidden => "paper (per layer)",
    }
}

/// The training thread's body: steps until done or stopped, pausing while asked; returns the
/// final prefix.
#[allow(clippy::too_many_arguments)]
fn train(
    model: Arc<dyn Transformer>,
    examples: Vec<Example>,
    cfg: TuneConfig,
    from: Option<Prefix>,
    steps: usize,
    ctrl: &Control,
    tx: &mpsc::Sender<Msg>,
    ctx: &egui::Context,
) -> crate::Result<Prefix> {
    let start = match from {
        Some(p) => p,
        None => initial_prefix(model.as_ref(), &cfg)?,
    };
    let mut t = Tuner::new(model, examples, cfg, &start)?;
    let _ = tx.send(Msg::Started(start));
    ctx.request_repaint();
    let mut last_preview = Instant::now();
    while t.steps_done() < steps && !ctrl.stop.load(Ordering::Relaxed) {
        if ctrl.pause.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let s = t.step()?;
        let _ = tx.send(Msg::Step(s));
        if last_preview.elapsed() >= PREVIEW_EVERY {
            let _ = tx.send(Msg::Prefix(t.prefix()?));
            last_preview = Instant::now();
        }
        ctx.request_repaint();
    }
    t.prefix()
}

impl super::PrefixScopeApp {
    /// The run's messages into the editor (called every frame, open panel or not).
    pub(super) fn tune_poll(&mut self) {
        let gen = self.loaded.as_ref().map_or(0, |l| l.model_gen);
        for ev in self.tune.poll(gen) {
            match ev {
                TuneEvent::Started(p) => self.editor.show_tuned(p, true),
                TuneEvent::Prefix(p) => self.editor.show_tuned(p, false),
            }
        }
    }

    /// The collapsible "Tune" section of the controls.
    pub(super) fn tune_section(&mut self, ui: &mut egui::Ui) {
        egui::CollapsingHeader::new(egui::RichText::new("Tune").strong().size(15.0))
            .id_salt("tune-section")
            .show(ui, |ui| {
                let m = self.loaded.as_ref();
                let inp = TuneInputs {
                    model: m.map(|l| &l.model),
                    model_gen: m.map_or(0, |l| l.model_gen),
                    model_path: m.map(|l| l.path.as_path()),
                    tokenizer: m.map(|l| l.tokenizer.as_ref()),
                    prompt: &self.prompt.ids,
                    bos: self.prompt.bos,
                    current: self.editor.prefix.as_ref(),
                };
                self.tune.ui(ui, &inp);
            });
    }
}
