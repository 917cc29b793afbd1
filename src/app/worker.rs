//! The compute thread: it owns the loaded model, takes requests tagged with a generation number, runs
//! only the newest pending one, and answers with the request's tag, so the UI can refuse anything
//! older than what it already shows. Loads run on a thread of their own (with progress and cancel), so
//! a slow load never stops the current model from answering, and a failed load leaves it in place.

use crate::capture::Capture;
use crate::incremental::{Edit, Evaluator};
use crate::load::{self, LoadControl};
use crate::model::{ModelInfo, Transformer};
use crate::prefix::Prefix;
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the pointer must rest before the all-layer answer starts.
const QUIET_BEFORE_FULL: Duration = Duration::from_millis(200);

/// Above this many bytes for the views of every layer (four maps a layer) the answers take the
/// long-prompt path: SmolLM2 from N = 512 on; at N = 4,096 all its views would take 72 GB, one
/// layer's 2.4 GB. An answer then carries the maps of the viewed head of the viewed layer only
/// ([`Evaluator::head_capture`], `Computed::only_head`), and a full answer the summaries of every
/// head of every layer, computed one head at a time ([`Evaluator::summaries`]): memory grows with
/// `N^2` for one head's maps, the ones on screen. Another head is computed when it is viewed.
pub const ALL_LAYER_VIEWS_MAX_BYTES: usize = 1 << 30;

/// What the UI asks of the compute thread.
#[derive(Clone)]
pub struct ComputeRequest {
    /// Increases with every request the UI sends; replies carry it back.
    pub gen: u64,
    /// The model the request was made for (a request for a replaced model is dropped).
    pub model_gen: u64,
    pub ids: Vec<u32>,
    pub prefix: Option<Prefix>,
    /// The layer on screen: answered first (only the layers up to it are recomputed), then every
    /// layer for the overview when no newer request is waiting.
    pub view_layer: usize,
    /// The head on screen: on the long-prompt path the only one whose maps are made.
    pub view_head: usize,
}

/// One answered request: the capture plus the per-head summaries the overview and the checks show,
/// computed here with the library's `LayerCapture` methods so the UI thread only draws.
pub struct Computed {
    pub gen: u64,
    pub model_gen: u64,
    /// True for the answer with every layer; false for the quick one with layers 0 and the viewed one.
    pub full: bool,
    pub capture: Arc<Capture>,
    /// `[layer][head]`: max |renormalized - pretrained| (`None` without a prefix). In a quick answer
    /// the layers it did not capture keep the last full answer's values (`overview_fresh` is false).
    pub overview: Vec<Vec<Option<f32>>>,
    pub overview_fresh: bool,
    /// Per captured layer: renormalized - pretrained, `(H, N, N)`, for the difference view.
    pub difference: Vec<(usize, Option<crate::arrays::Array>)>,
    /// Layer 0, all heads: max |renormalized - pretrained| (the paper's claim: exactly 0).
    pub layer0_renorm_diff: Option<f32>,
    /// Layer 0, all heads: the head-output identity error.
    pub layer0_identity_error: Option<f32>,
    /// On the long-prompt path: the one head the capture holds (its arrays are `(1, N, ...)`, index
    /// 0 is this head); `None` when the captured layers hold every head.
    pub only_head: Option<usize>,
    /// On the long-prompt path, in a full answer: every layer's per-head summaries (the plots'
    /// figures and the overview's colourings), which the capture's one head cannot give.
    pub summaries: Option<Arc<crate::head_views::Summaries>>,
    pub compute_time: Duration,
}

impl Computed {
    /// The answer to `req` that `cap` gives, with each captured layer's difference view made here;
    /// `layer0` is (max |renormalized - pretrained|, head-output identity error) of layer 0, all
    /// heads. Every head of the captured layers, no summaries: the long-prompt path sets those.
    fn answer(
        req: &ComputeRequest,
        full: bool,
        overview: Vec<Vec<Option<f32>>>,
        cap: Capture,
        layer0: (Option<f32>, Option<f32>),
        t0: Instant,
    ) -> Computed {
        let difference = cap
            .layers
            .iter()
            .map(|lc| (lc.layer, lc.difference()))
            .collect();
        Computed {
            gen: req.gen,
            model_gen: req.model_gen,
            full,
            overview,
            overview_fresh: full,
            difference,
            layer0_renorm_diff: layer0.0,
            layer0_identity_error: layer0.1,
            capture: Arc::new(cap),
            only_head: None,
            summaries: None,
            compute_time: t0.elapsed(),
        }
    }

    /// Index into the capture's head axis for model head `head`: itself, or 0 when the capture holds
    /// that head only; `None` when the capture holds another head only (it is being computed).
    pub fn head_index(&self, head: usize) -> Option<usize> {
        match self.only_head {
            Some(h) if h == head => Some(0),
            Some(_) => None,
            None => Some(head),
        }
    }

    /// Bytes of `N x N`-sized maps this answer holds (captured views and differences): what the
    /// long-prompt path keeps to one head.
    pub fn map_bytes(&self) -> usize {
        let a = |x: &Option<crate::arrays::Array>| x.as_ref().map_or(0, |a| a.data.len() * 4);
        self.capture
            .layers
            .iter()
            .map(|lc| a(&lc.with_prefix) + a(&lc.renormalized) + lc.pretrained.data.len() * 4)
            .sum::<usize>()
            + self.difference.iter().map(|(_, d)| a(d)).sum::<usize>()
    }
}

/// A model that finished loading.
pub struct LoadedModel {
    pub model_gen: u64,
    /// The model itself, for the little the UI thread computes with it (the keys and values the
    /// paper's prefix induces, when it is saved as a PEFT adapter).
    pub model: Arc<dyn Transformer>,
    pub path: PathBuf,
    pub info: ModelInfo,
    pub tokenizer: Arc<Tokenizer>,
    pub load_time: Duration,
}

pub enum Reply {
    Loaded(LoadedModel),
    /// The library's message; the previous model stays loaded.
    LoadFailed {
        model_gen: u64,
        path: PathBuf,
        message: String,
    },
    Computed(Box<Computed>),
    ComputeFailed {
        gen: u64,
        message: String,
    },
    /// The answer to a [`Worker::compute_pinned`] request (the A/B panel's pinned prefix A).
    Pinned(Box<Computed>),
    PinnedFailed {
        gen: u64,
        message: String,
    },
    /// A token's embedding row (for "set to a token's embedding").
    Embedding {
        model_gen: u64,
        token: u32,
        result: std::result::Result<Vec<f32>, String>,
    },
}

enum Msg {
    Install {
        model_gen: u64,
        model: Arc<dyn Transformer>,
    },
    Compute(ComputeRequest),
    /// The pinned prefix A's maps (the A/B panel): answered from scratch, after the views' request,
    /// without touching the views' cache.
    Pinned(ComputeRequest),
    Embedding {
        model_gen: u64,
        token: u32,
    },
    Quit,
}

/// A load in progress: its progress (an f32 in an atomic) and its cancel flag.
pub struct LoadJob {
    pub model_gen: u64,
    pub path: PathBuf,
    pub started: Instant,
    progress: Arc<AtomicU32>,
    cancel: Arc<AtomicBool>,
}

impl LoadJob {
    pub fn progress(&self) -> f32 {
        f32::from_bits(self.progress.load(Ordering::Relaxed))
    }
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The UI's handle on the compute thread.
pub struct Worker {
    tx: Sender<Msg>,
    rx: Receiver<Reply>,
    reply_tx: Sender<Reply>,
    /// The egui context to wake when a reply is ready (set on the first frame).
    repaint: Arc<Mutex<Option<egui::Context>>>,
    busy: Arc<AtomicBool>,
    next_model_gen: u64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Default for Worker {
    fn default() -> Self {
        Self::new()
    }
}

impl Worker {
    pub fn new() -> Self {
        let (tx, rx_req) = channel::<Msg>();
        let (reply_tx, rx) = channel::<Reply>();
        let repaint = Arc::new(Mutex::new(None::<egui::Context>));
        let busy = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply_tx, repaint, busy) = (reply_tx.clone(), repaint.clone(), busy.clone());
            std::thread::Builder::new()
                .name("prefixscope-compute".into())
                .spawn(move || compute_loop(rx_req, reply_tx, repaint, busy))
                .ok()
        };
        Worker {
            tx,
            rx,
            reply_tx,
            repaint,
            busy,
            next_model_gen: 1,
            thread,
        }
    }

    pub fn set_context(&self, ctx: &egui::Context) {
        if let Ok(mut g) = self.repaint.lock() {
            if g.is_none() {
                *g = Some(ctx.clone());
            }
        }
    }

    /// Whether the compute thread is running a request right now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Start loading `path` on its own thread; the model goes to the compute thread when ready.
    /// `quantized`: keep a GGUF file's weights quantized (see [`LoadControl::quantized`]).
    pub fn load(&mut self, path: PathBuf, quantized: bool) -> LoadJob {
        let model_gen = self.next_model_gen;
        self.next_model_gen += 1;
        let progress = Arc::new(AtomicU32::new(0f32.to_bits()));
        let cancel = Arc::new(AtomicBool::new(false));
        let job = LoadJob {
            model_gen,
            path: path.clone(),
            started: Instant::now(),
            progress: progress.clone(),
            cancel: cancel.clone(),
        };
        let (tx, reply_tx, repaint) =
            (self.tx.clone(), self.reply_tx.clone(), self.repaint.clone());
        let spawned = std::thread::Builder::new()
            .name("prefixscope-load".into())
            .spawn(move || {
                // Normal priority: while a model loads the window only shows its progress, and a
                // load at nice 10 lost to everything else on a busy machine (startup 12 s, #19).
                let t0 = Instant::now();
                let wake = repaint.clone();
                // One repaint per 5 % of progress at most: each frame of a software-rendered window
                // takes CPU from the load on a small machine (#19, finding 11).
                let last = AtomicU32::new(0);
                let ctl = LoadControl {
                    cancel: Some(cancel),
                    progress: Some(Arc::new(move |f: f32| {
                        let f = f.clamp(0.0, 1.0);
                        progress.store(f.to_bits(), Ordering::Relaxed);
                        let pct = (f * 20.0) as u32;
                        if last.swap(pct, Ordering::Relaxed) != pct {
                            wake_ui(&wake);
                        }
                    })),
                    quantized,
                };
                let reply = match load::load_with(&path, &ctl) {
                    Ok(loaded) => {
                        let model: Arc<dyn Transformer> = Arc::from(loaded.model);
                        let info = model.info().clone();
                        // The model reaches the compute thread before the UI hears of it, so the
                        // UI's first request for it always finds it installed.
                        let _ = tx.send(Msg::Install {
                            model_gen,
                            model: model.clone(),
                        });
                        Reply::Loaded(LoadedModel {
                            model_gen,
                            model,
                            path: loaded.path,
                            info,
                            tokenizer: Arc::new(loaded.tokenizer),
                            load_time: t0.elapsed(),
                        })
                    }
                    Err(e) => Reply::LoadFailed {
                        model_gen,
                        path: path.clone(),
                        message: e.one_line(),
                    },
                };
                let _ = reply_tx.send(reply);
                wake_ui(&repaint);
            });
        if let Err(e) = spawned {
            let _ = self.reply_tx.send(Reply::LoadFailed {
                model_gen,
                path: job.path.clone(),
                message: format!("could not start a loading thread: {e}"),
            });
        }
        job
    }

    /// Make an already loaded model current again without reading its file (e.g. back from
    /// Construction mode): it gets a new generation, which the returned copy carries.
    pub fn reinstall(&mut self, m: &LoadedModel) -> LoadedModel {
        let model_gen = self.next_model_gen;
        self.next_model_gen += 1;
        let _ = self.tx.send(Msg::Install {
            model_gen,
            model: m.model.clone(),
        });
        LoadedModel {
            model_gen,
            model: m.model.clone(),
            path: m.path.clone(),
            info: m.info.clone(),
            tokenizer: m.tokenizer.clone(),
            load_time: Duration::ZERO,
        }
    }

    pub fn compute(&self, req: ComputeRequest) {
        self.busy.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Compute(req));
    }

    /// Compute the maps of a pinned prefix (the A/B panel's A) for `req.view_layer` only; answered
    /// with [`Reply::Pinned`] after any pending views' request (only the newest pinned one runs).
    pub fn compute_pinned(&self, req: ComputeRequest) {
        self.busy.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Pinned(req));
    }

    pub fn embedding(&self, model_gen: u64, token: u32) {
        let _ = self.tx.send(Msg::Embedding { model_gen, token });
    }

    /// Replies that arrived since the last call.
    pub fn poll(&self) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run the calling thread (and the threads it starts, e.g. the matmul pool) below the UI thread, so
/// that on a small machine the window keeps its frame rate while the model computes.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with who = 0 changes only the calling thread's nice value on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

fn wake_ui(repaint: &Arc<Mutex<Option<egui::Context>>>) {
    if let Ok(g) = repaint.lock() {
        if let Some(ctx) = g.as_ref() {
            ctx.request_repaint();
        }
    }
}

/// The library's incremental evaluator for the current model and prompt, and the prefix it last saw
/// (to tell it which layers an edit can have changed).
struct EvalCache {
    model_gen: u64,
    eval: Evaluator,
    last_prefix: Option<Prefix>,
    /// The last full overview, kept for quick answers.
    overview: Vec<Vec<Option<f32>>>,
    /// The last full answer's layer-0 checks (the long-prompt path's quick answers keep them).
    layer0: (Option<f32>, Option<f32>),
    /// The long-prompt path's last summaries and the prefix they are for: a full answer for another
    /// head or layer under the same prefix reuses them instead of streaming every head again.
    summaries: Option<(Option<Prefix>, Arc<crate::head_views::Summaries>)>,
}

fn compute_loop(
    rx: Receiver<Msg>,
    tx: Sender<Reply>,
    repaint: Arc<Mutex<Option<egui::Context>>>,
    busy: Arc<AtomicBool>,
) {
    // Normal priority until the first answer is out: at nice 10 the first views of SmolLM2 took
    // 1.0-1.8 s instead of ~0.6 s on a busy machine, where the command line runs at nice 0 (#19,
    // finding 11). Then below the UI, with the serial pool the first answer may have started.
    let mut lowered = false;
    let mut model: Option<(u64, Arc<dyn Transformer>)> = None;
    let mut cache: Option<EvalCache> = None;
    let mut backlog: VecDeque<Msg> = VecDeque::new();
    loop {
        let first = match backlog.pop_front() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        // Coalesce: take everything pending, apply installs in order, keep only the newest compute.
        let mut pending = vec![first];
        pending.extend(backlog.drain(..));
        while let Ok(m) = rx.try_recv() {
            pending.push(m);
        }
        let mut newest: Option<ComputeRequest> = None;
        let mut pinned: Option<ComputeRequest> = None;
        let mut embeds = Vec::new();
        for m in pending {
            match m {
                Msg::Quit => return,
                Msg::Install {
                    model_gen,
                    model: m,
                } => {
                    model = Some((model_gen, m));
                    cache = None;
                }
                Msg::Compute(r) => {
                    if newest.as_ref().is_none_or(|n| r.gen > n.gen) {
                        newest = Some(r);
                    }
                }
                Msg::Pinned(r) => {
                    if pinned.as_ref().is_none_or(|n| r.gen > n.gen) {
                        pinned = Some(r);
                    }
                }
                Msg::Embedding { model_gen, token } => embeds.push((model_gen, token)),
            }
        }
        for (model_gen, token) in embeds {
            if let Some((g, m)) = &model {
                if *g == model_gen {
                    let result = m.token_embedding(token).map_err(|e| e.one_line());
                    let _ = tx.send(Reply::Embedding {
                        model_gen,
                        token,
                        result,
                    });
                }
            }
        }
        if let Some(req) = newest {
            if let Some((g, m)) = &model {
                // A request for a model that is not (or no longer) installed has nobody to answer.
                if *g == req.model_gen {
                    let n_layers = m.info().n_layers;
                    let quick: Vec<usize> = if req.view_layer == 0 || req.view_layer >= n_layers {
                        vec![0]
                    } else {
                        vec![0, req.view_layer]
                    };
                    // The first answer for a model: every layer at once, as the command
                    // line does; a quick answer and a quiet wait before the full one only delay
                    // the first complete views (#19, finding 11).
                    // Not on the long-prompt path, where the full answer streams every head of
                    // every layer (minutes at N = 4,096 on two cores): the viewed head comes first.
                    let fresh = cache.as_ref().is_none_or(|c| c.model_gen != req.model_gen)
                        && !long_prompt(m.as_ref(), &req);
                    let quick: Vec<usize> = if fresh {
                        (0..n_layers).collect()
                    } else {
                        quick
                    };
                    let quick_is_all = quick.len() == n_layers;
                    let ok = answer(m.as_ref(), &req, &mut cache, &quick, quick_is_all, &tx);
                    wake_ui(&repaint);
                    if !lowered {
                        lowered = true;
                        lower_priority();
                        crate::model::stepper::on_compute_pool(m.as_ref(), 1, lower_priority);
                    }
                    // The full answer only after a quiet moment with nothing newer: a drag keeps
                    // getting quick answers, and the overview catches up when the pointer rests.
                    while let Ok(m) = rx.try_recv() {
                        backlog.push_back(m);
                    }
                    if !newer_views(&backlog) && !quick_is_all {
                        if let Ok(m) = rx.recv_timeout(QUIET_BEFORE_FULL) {
                            backlog.push_back(m);
                        }
                    }
                    if ok && !newer_views(&backlog) && !quick_is_all {
                        let all: Vec<usize> = (0..n_layers).collect();
                        answer(m.as_ref(), &req, &mut cache, &all, true, &tx);
                    }
                }
            }
        }
        if let Some(req) = pinned {
            if !newer_views(&backlog) {
                answer_pinned(&model, &req, &tx);
            } else {
                // The views first: it waits behind their newer request.
                backlog.push_back(Msg::Pinned(req));
            }
        }
        if backlog.is_empty() {
            busy.store(false, Ordering::Relaxed);
        }
        wake_ui(&repaint);
    }
}

/// Whether `backlog` holds something that supersedes the views' answer in progress (a newer views'
/// request or a new model); a pinned or an embedding request does not.
fn newer_views(backlog: &VecDeque<Msg>) -> bool {
    backlog
        .iter()
        .any(|m| matches!(m, Msg::Compute(_) | Msg::Install { .. } | Msg::Quit))
}

/// The pinned prefix's maps of `req.view_layer`, from scratch (the views' cache stays theirs).
fn answer_pinned(
    model: &Option<(u64, Arc<dyn Transformer>)>,
    req: &ComputeRequest,
    tx: &Sender<Reply>,
) {
    let Some((g, m)) = model else { return };
    if *g != req.model_gen {
        return;
    }
    let reply = match compute_once(m.as_ref(), req, &[req.view_layer]) {
        Ok(c) => Reply::Pinned(Box::new(c)),
        Err(e) => Reply::PinnedFailed {
            gen: req.gen,
            message: e.one_line(),
        },
    };
    let _ = tx.send(reply);
}

/// Run one request for `layers` and send the answer (or the error); true when it succeeded.
fn answer(
    model: &dyn Transformer,
    req: &ComputeRequest,
    cache: &mut Option<EvalCache>,
    layers: &[usize],
    full: bool,
    tx: &Sender<Reply>,
) -> bool {
    let reply = match run_request(model, req, cache, layers, full) {
        Ok(c) => Reply::Computed(Box::new(c)),
        Err(e) => Reply::ComputeFailed {
            gen: req.gen,
            message: e.one_line(),
        },
    };
    let ok = matches!(reply, Reply::Computed(_));
    let _ = tx.send(reply);
    ok
}

/// One request answered from scratch on the calling thread: what the views draw for `req`, with
/// `layers` captured. `bench` uses it to time a redraw on real data.
pub fn compute_once(
    model: &dyn Transformer,
    req: &ComputeRequest,
    layers: &[usize],
) -> crate::Result<Computed> {
    run_request(model, req, &mut None, layers, true)
}

fn run_request(
    model: &dyn Transformer,
    req: &ComputeRequest,
    cache: &mut Option<EvalCache>,
    layers: &[usize],
    full: bool,
) -> crate::Result<Computed> {
    let t0 = Instant::now();
    let info = model.info();
    let (n_layers, n_heads) = (info.n_layers, info.n_heads);
    if cache
        .as_ref()
        .is_none_or(|c| c.model_gen != req.model_gen || c.eval.ids() != req.ids.as_slice())
    {
        *cache = Some(EvalCache {
            model_gen: req.model_gen,
            eval: Evaluator::new(&req.ids),
            last_prefix: None,
            overview: vec![vec![None; n_heads]; n_layers],
            layer0: (None, None),
            summaries: None,
        });
    }
    let c = cache.as_mut().expect("filled just above");
    let edit = if c.last_prefix.is_none() && c.overview.iter().flatten().all(|x| x.is_none()) {
        Edit::All
    } else {
        Edit::between(c.last_prefix.as_ref(), req.prefix.as_ref(), n_layers)
    };
    // A long prompt: every layer's views would not fit in memory.
    let long = views_too_big(model.info(), req);
    if long && Evaluator::streams_heads(model) {
        return run_one_head(model, req, c, edit, full, t0);
    }
    // A model without per-layer queries and keys (learned positions): the full answer keeps the
    // maps of the quick answer's layers only and the overview is computed head by head.
    let lean = full && long;
    let quick: Vec<usize> = if req.view_layer == 0 || req.view_layer >= n_layers {
        vec![0]
    } else {
        vec![0, req.view_layer]
    };
    let layers = if lean { &quick[..] } else { layers };
    let cap = c.eval.update(model, req.prefix.as_ref(), edit, layers)?;
    c.last_prefix = req.prefix.clone();
    let mut overview = c.overview.clone();
    if lean {
        if let Some(rows) = c.eval.overview(model, req.prefix.as_ref())? {
            overview = rows;
        }
    }
    for lc in &cap.layers {
        if let Some(row) = overview.get_mut(lc.layer) {
            *row = (0..lc.n_heads())
                .map(|h| lc.max_renorm_diff(Some(h)))
                .collect();
        }
    }
    if full {
        c.overview = overview.clone();
    }
    let l0 = cap.layer(0);
    let layer0 = (
        l0.and_then(|c| c.max_renorm_diff(None)),
        l0.and_then(|c| c.head_output_identity_error(None)),
    );
    Ok(Computed::answer(req, full, overview, cap, layer0, t0))
}

/// Whether `req` takes the long-prompt path: every layer's views would exceed
/// [`ALL_LAYER_VIEWS_MAX_BYTES`] and the model keeps per-layer queries and keys.
pub fn long_prompt(model: &dyn Transformer, req: &ComputeRequest) -> bool {
    views_too_big(model.info(), req) && Evaluator::streams_heads(model)
}

/// Whether every layer's views of `req` (four `(H, N, P + N)` f32 maps a layer) would exceed
/// [`ALL_LAYER_VIEWS_MAX_BYTES`].
fn views_too_big(info: &crate::model::ModelInfo, req: &ComputeRequest) -> bool {
    let (n, p) = (req.ids.len(), req.prefix.as_ref().map_or(0, |p| p.len()));
    info.n_layers * info.n_heads * n * (n + p) * 4 * 4 > ALL_LAYER_VIEWS_MAX_BYTES
}

/// The long-prompt answer: the viewed head of the viewed layer, and in a full answer every layer's
/// per-head summaries, streamed one head at a time (see [`ALL_LAYER_VIEWS_MAX_BYTES`]).
fn run_one_head(
    model: &dyn Transformer,
    req: &ComputeRequest,
    c: &mut EvalCache,
    edit: Edit,
    full: bool,
    t0: Instant,
) -> crate::Result<Computed> {
    let n_heads = model.info().n_heads;
    let head = req.view_head.min(n_heads.saturating_sub(1));
    let cap = c
        .eval
        .head_capture(model, req.prefix.as_ref(), edit, req.view_layer, head)?
        .ok_or(crate::Error::Internal(
            "long-prompt path on a model without it",
        ))?;
    c.last_prefix = req.prefix.clone();
    let mut overview = c.overview.clone();
    let mut summaries = None;
    if full {
        let s = match &c.summaries {
            Some((pf, s)) if *pf == req.prefix => s.clone(),
            _ => {
                c.summaries = None;
                let s = c.eval.summaries(model)?.ok_or(crate::Error::Internal(
                    "long-prompt path on a model without it",
                ))?;
                let s = Arc::new(s);
                c.summaries = Some((req.prefix.clone(), s.clone()));
                s
            }
        };
        if let Some(g) = s.grid(crate::metrics::HeadMetric::Deviation) {
            overview = g.clone();
        }
        c.overview = overview.clone();
        c.layer0 = (s.layer0_renorm_diff, s.layer0_identity_error);
        summaries = Some(s);
    } else if let Some(lc) = cap.layers.first() {
        // The viewed head's cell is fresh in a quick answer too.
        if let Some(cell) = overview.get_mut(lc.layer).and_then(|r| r.get_mut(head)) {
            *cell = lc.max_renorm_diff(Some(0));
        }
    }
    Ok(Computed {
        only_head: Some(head),
        summaries,
        ..Computed::answer(req, full, overview, cap, c.layer0, t0)
    })
}
