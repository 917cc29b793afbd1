//! The desktop app: an eframe window over the library. Panels (one file each) hold their state apart
//! from their drawing; the worker thread owns the model and does every computation; this file wires
//! them together, keeps the session, and never computes anything itself.

pub mod ab;
pub mod code_points;
pub mod colormap;
pub mod construction;
pub mod export;
pub mod model_panel;
pub mod overview;
pub mod plots;
pub mod prefix_editor;
pub mod prompt;
pub mod session_file;
pub mod tune;
pub mod views;
pub mod worker;

use crate::model::ModelInfo;
use crate::prefix::{Prefix, PrefixKind};
use crate::tokenizer::Tokenizer;
use model_panel::{ModelAction, ModelPanel, ModelStatus};
use overview::OverviewPanel;
use prefix_editor::{EditorRequest, PrefixEditor};
use prompt::PromptPanel;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use views::{ViewData, ViewsPanel};
use worker::{ComputeRequest, Computed, LoadJob, LoadedModel, Reply, Worker};

/// A panel's last outcome under its buttons: `(is_error, text)`, errors in the error colour.
pub(crate) fn status_line(ui: &mut egui::Ui, (err, text): &(bool, String)) {
    let color = if *err {
        ui.visuals().error_fg_color
    } else {
        ui.visuals().weak_text_color()
    };
    ui.colored_label(color, text);
}

pub use crate::bundled::{default_model, DEFAULT_MODEL, DEFAULT_PREFIX};

/// Options from the command line (all optional).
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Open this checkpoint instead of the session's or the default one.
    pub model: Option<PathBuf>,
    /// Start from this prefix file (its kind is taken from `prefix_kind`).
    pub prefix: Option<PathBuf>,
    pub prefix_kind: Option<PrefixKind>,
    pub prompt: Option<String>,
    /// Where the session and the prefix autosave live (default: eframe's storage directory).
    pub session_dir: Option<PathBuf>,
    /// Do not restore the previous session.
    pub fresh: bool,
    /// Close the window this many seconds after all views are first filled (or after the start when
    /// there is no model to load); for scripts and CI.
    pub quit_after: Option<f32>,
    /// Repaint continuously and print frames per second to stderr every second.
    pub bench_fps: bool,
    /// Print start-up timings to stderr.
    pub timings: bool,
    /// Initial window size in points.
    pub size: Option<(f32, f32)>,
}

/// What is saved on exit and at intervals, and restored on start.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub model_path: Option<PathBuf>,
    pub prompt: Option<PromptPanel>,
    pub views: Option<ViewsPanel>,
    pub models: Option<ModelPanel>,
    /// The model the autosaved prefix belongs to, and its kind.
    pub autosave_model: Option<PathBuf>,
    pub autosave_kind: Option<PrefixKind>,
    pub editor_token: usize,
    pub editor_layer: usize,
    /// The A/B panel's pinned prefix A (its values are in `autosave-pinned.npz`).
    #[serde(default)]
    pub pinned: Option<ab::PinnedMeta>,
    /// The plots panel's settings and the overview's colouring.
    #[serde(default)]
    pub plots: Option<plots::PlotsSettings>,
}

const SESSION_KEY: &str = "prefixscope-session";
const AUTOSAVE_PREFIX: &str = "autosave-prefix.npz";
const AUTOSAVE_PINNED: &str = "autosave-pinned.npz";
const SESSION_FILE: &str = "session.json";
const AUTOSAVE_EVERY: Duration = Duration::from_secs(3);

/// Frame counter for `--bench-fps` and the status bar.
struct FrameStats {
    window_start: Instant,
    frames: u32,
    updates: u32,
    ui_time: Duration,
    last_fps: f32,
    /// The UI thread's (on-CPU, waiting-for-a-CPU) nanoseconds at the window start (Linux).
    sched: Option<(u64, u64)>,
}

/// This thread's time on a CPU and time spent runnable but waiting for one, in ns (Linux schedstat):
/// tells a slow frame rate caused by the app from one caused by a busy machine.
fn thread_schedstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

pub struct PrefixScopeApp {
    opts: AppOptions,
    worker: Worker,
    pub model_panel: ModelPanel,
    pub prompt: PromptPanel,
    pub editor: PrefixEditor,
    pub views: ViewsPanel,
    pub construction: construction::ConstructionPanel,
    pub export: export::ExportPanel,
    pub overview: OverviewPanel,
    pub plots: plots::PlotsPanel,
    pub tune: tune::TunePanel,
    pub ab: ab::AbPanel,
    /// The current model (what the worker has installed).
    loaded: Option<LoadedModel>,
    loading: Option<LoadJob>,
    /// The result on screen, and the labels of its tokens.
    shown: Option<Box<Computed>>,
    shown_labels: Vec<String>,
    /// Highest request generation sent, and what it asked for.
    next_gen: u64,
    last_sent: Option<(u64, Vec<u32>, u64)>,
    /// The prefix version of the last request.
    sent_version: u64,
    /// The view layer of the last request.
    sent_layer: Option<usize>,
    /// The (layer, head) of the last request (a long prompt's answers hold one head).
    sent_view: Option<(usize, usize)>,
    compute_error: Option<String>,
    /// A message when there is no model (e.g. the default model is missing).
    empty_note: Option<String>,
    session: Session,
    last_autosave: Instant,
    started: Instant,
    startup_reported: bool,
    filled_at: Option<Instant>,
    fonts_set: bool,
    stats: FrameStats,
    /// What went wrong reading the app's own files at start (shown on the status line).
    pub startup_note: Option<String>,
    /// The Checks panel's rectangle and its Ui's id in the last frame (for the layout tests).
    pub checks_panel: Option<(egui::Id, egui::Rect)>,
    /// Explore mode's state while Construction mode is on (restored on the way back).
    explore: Option<construction::ExploreState>,
}

/// The window's fonts: egui's shipped faces, Hack as a fallback of the proportional family (arrows
/// and symbols), then the system faces that add scripts the shipped ones lack (CJK, Thai, Arabic, …;
/// found at run time by fontdb, `crate::glyphs::fallback_faces`), in both families.
pub fn install_fonts(ctx: &egui::Context) {
    let mut defs = egui::FontDefinitions::default();
    if defs.font_data.contains_key("Hack") {
        if let Some(fam) = defs.families.get_mut(&egui::FontFamily::Proportional) {
            if !fam.iter().any(|f| f == "Hack") {
                fam.push("Hack".to_owned());
            }
        }
    }
    for (name, data, index) in crate::glyphs::fallback_faces() {
        let mut font = egui::FontData::from_owned(data);
        font.index = index;
        defs.font_data
            .insert(name.clone(), std::sync::Arc::new(font));
        for fam in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
            if let Some(list) = defs.families.get_mut(&fam) {
                list.push(name.clone());
            }
        }
    }
    ctx.set_fonts(defs);
    // Whatever no font has: its code point (`U+1F642`), never a box.
    ctx.add_glyph_rasterizer(code_points::rasterizer());
}

/// A token label with every character the fonts cannot draw written as its code point (`U+65B0`).
pub fn displayable(ctx: &egui::Context, s: &str) -> String {
    let font = egui::FontId::proportional(11.0);
    ctx.fonts_mut(|f| crate::glyphs::drawable_with(s, |c| f.has_glyph(&font, c)))
}

impl PrefixScopeApp {
    /// Build the app; `storage` is eframe's (None in tests). Starts loading a model at once.
    pub fn new(storage: Option<&dyn eframe::Storage>, opts: AppOptions) -> Self {
        Self::new_with(storage, opts, None)
    }

    /// [`PrefixScopeApp::new`], taking over a load [`EarlyLoad::start`] began before the window
    /// existed when it is for the model the session chooses (else it is cancelled).
    fn new_with(
        storage: Option<&dyn eframe::Storage>,
        opts: AppOptions,
        early: Option<EarlyLoad>,
    ) -> Self {
        let (worker, early_job, started) = match early {
            Some(e) => (e.worker, e.job, e.started),
            None => (Worker::new(), None, Instant::now()),
        };
        let mut session = Session::default();
        let mut startup_note = None;
        if !opts.fresh {
            let from_eframe = storage.and_then(|s| eframe::get_value::<Session>(s, SESSION_KEY));
            // A corrupt session file is moved aside and reported, never a reason not to start.
            let from_file = match autosave_dir(&opts).map(|d| d.join(SESSION_FILE)) {
                Some(p) => {
                    let (s, note) = session_file::read(&p);
                    startup_note = note;
                    s
                }
                None => None,
            };
            session = from_file.or(from_eframe).unwrap_or_default();
        }
        let mut app = PrefixScopeApp {
            worker,
            model_panel: session.models.clone().unwrap_or_default(),
            prompt: session.prompt.clone().unwrap_or_default(),
            editor: PrefixEditor::default(),
            views: session.views.clone().unwrap_or_default(),
            overview: OverviewPanel::default(),
            plots: Default::default(),
            construction: Default::default(),
            tune: Default::default(),
            ab: Default::default(),
            export: Default::default(),
            loaded: None,
            loading: None,
            shown: None,
            shown_labels: Vec::new(),
            next_gen: 1,
            last_sent: None,
            sent_version: 0,
            sent_layer: None,
            sent_view: None,
            compute_error: None,
            empty_note: None,
            last_autosave: Instant::now(),
            started,
            startup_reported: false,
            filled_at: None,
            fonts_set: false,
            stats: FrameStats {
                window_start: Instant::now(),
                frames: 0,
                updates: 0,
                ui_time: Duration::ZERO,
                last_fps: 0.0,
                sched: None,
            },
            session,
            opts,
            startup_note,
            checks_panel: None,
            explore: None,
        };
        app.restore_pinned();
        if let Some(s) = app.session.plots.clone() {
            app.overview.metric = app.plots.apply(&s);
        }
        app.editor.token = app.session.editor_token;
        app.editor.layer = app.session.editor_layer;
        if let Some(text) = app.opts.prompt.clone() {
            app.prompt.text = text;
        }
        let target = app
            .opts
            .model
            .clone()
            .or_else(|| app.session.model_path.clone().filter(|p| p.exists()))
            .or_else(|| default_model().map(|(m, _)| m));
        // The early load, when it reads the same file the same way, is this load.
        let early_job = early_job.filter(|(j, quantized)| {
            let same = target.as_deref().is_some_and(|p| p == j.path)
                && *quantized == app.model_panel.quantized;
            if !same {
                j.cancel();
            }
            same
        });
        match (target, early_job) {
            (Some(p), Some((job, _))) => {
                app.model_panel.path_text = p.display().to_string();
                app.loading = Some(job);
            }
            (Some(p), None) => app.open_model(p),
            (None, _) => {
                app.empty_note = Some(format!(
                    "The default model (the toy sorter, {DEFAULT_MODEL}) was not found beside the program or in {}. Open a checkpoint to start.",
                    env!("CARGO_MANIFEST_DIR")
                ))
            }
        }
        app
    }

    /// Start loading a checkpoint (the current model stays until the new one is ready).
    pub fn open_model(&mut self, path: PathBuf) {
        if let Some(job) = &self.loading {
            job.cancel();
        }
        self.model_panel.error = None;
        self.model_panel.path_text = path.display().to_string();
        self.loading = Some(self.worker.load(path, self.model_panel.quantized));
    }

    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }
    pub fn model_info(&self) -> Option<&ModelInfo> {
        self.loaded.as_ref().map(|l| &l.info)
    }
    pub fn model_path(&self) -> Option<&Path> {
        self.loaded.as_ref().map(|l| l.path.as_path())
    }
    pub fn load_error(&self) -> Option<&str> {
        self.model_panel.error.as_deref()
    }
    /// The result on screen.
    pub fn shown(&self) -> Option<&Computed> {
        self.shown.as_deref()
    }
    /// The token labels on screen (axis labels, readouts, exported figures), made drawable.
    pub fn shown_labels(&self) -> &[String] {
        &self.shown_labels
    }
    /// Whether the shown result answers the current prompt and prefix.
    pub fn is_current(&self) -> bool {
        match (&self.shown, &self.last_sent) {
            (Some(s), Some((gen, _, _))) => s.gen == *gen && s.full && !self.worker.is_busy(),
            _ => false,
        }
    }
    pub fn compute_error(&self) -> Option<&str> {
        self.compute_error.as_deref()
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.loaded.as_ref().map(|l| l.tokenizer.as_ref())
    }

    fn handle_replies(&mut self, ctx: &egui::Context) {
        for reply in self.worker.poll() {
            match reply {
                Reply::Loaded(m) => {
                    if self
                        .loading
                        .as_ref()
                        .is_some_and(|j| j.model_gen == m.model_gen)
                    {
                        self.loading = None;
                        self.install(m);
                    }
                }
                Reply::LoadFailed {
                    model_gen,
                    path,
                    message,
                } => {
                    if self
                        .loading
                        .as_ref()
                        .is_some_and(|j| j.model_gen == model_gen)
                    {
                        self.loading = None;
                        self.model_panel.error = Some(if message == "cancelled" {
                            format!("loading {} cancelled", path.display())
                        } else {
                            message
                        });
                    }
                }
                Reply::Computed(c) => {
                    let current_model = self.loaded.as_ref().map(|l| l.model_gen);
                    // Ordered by request, and for one request the full answer after the quick one.
                    let newer = self.shown.as_ref().is_none_or(|s| {
                        (c.gen, c.full) > (s.gen, s.full) || s.model_gen != c.model_gen
                    });
                    // Never draw a stale result over a newer one, nor one for a replaced model.
                    if Some(c.model_gen) == current_model && newer {
                        self.compute_error = None;
                        self.shown_labels = self
                            .tokenizer()
                            .map(|t| t.labels(&c.capture.token_ids))
                            .unwrap_or_default()
                            .iter()
                            .map(|l| displayable(ctx, l))
                            .collect();
                        self.stats.updates += 1;
                        self.shown = Some(c);
                    }
                }
                Reply::Pinned(c) => self.ab.arrived(c),
                Reply::PinnedFailed { gen, message } => self.ab.failed(gen, message),
                Reply::ComputeFailed { gen, message } => {
                    if self.last_sent.as_ref().is_some_and(|(g, _, _)| *g == gen) {
                        self.compute_error = Some(message);
                    }
                }
                Reply::Embedding {
                    model_gen,
                    token,
                    result,
                } => {
                    if self
                        .loaded
                        .as_ref()
                        .is_some_and(|l| l.model_gen == model_gen)
                    {
                        self.editor.embedding_arrived(token, result);
                    }
                }
            }
        }
    }

    /// A model finished loading: make it current, keep or replace the prompt and the prefix.
    fn install(&mut self, m: LoadedModel) {
        let info = m.info.clone();
        let tok = m.tokenizer.clone();
        let path = m.path.clone();
        if self.opts.timings {
            eprintln!(
                "startup: model installed {} ms after start",
                self.started.elapsed().as_millis()
            );
            eprintln!(
                "model loaded in {} ms: {}",
                m.load_time.as_millis(),
                path.display()
            );
        }
        self.model_panel.push_recent(&path);
        self.model_panel.path_text = path.display().to_string();
        self.session.model_path = Some(path.clone());
        self.loaded = Some(m);
        self.shown = None;
        self.last_sent = None;
        self.empty_note = None;
        // The prompt: keep it if this tokenizer reads it, else the default for this tokenizer.
        self.prompt.ids.clear();
        if self.prompt.text.trim().is_empty() || tok.encode(&self.prompt.text, false).is_err() {
            self.prompt.text = prompt::default_text(&tok);
        }
        self.prompt.tokenize(&tok);
        self.views.clamp(info.n_layers, info.n_heads);
        self.views.zoom = None;
        // A message about the previous model's prefix ("loaded …") does not describe the new one.
        self.editor.message = None;
        let prefix = self.initial_prefix(&path, &info);
        self.editor.set_prefix(prefix);
        self.editor.saved_version = self.editor.version;
    }

    /// The prefix a freshly loaded model starts with: the command line's file, the autosave of the
    /// same model, the bundled prefix of the default model, the current prefix if it fits, or zeros.
    fn initial_prefix(&mut self, path: &Path, info: &ModelInfo) -> Prefix {
        let kind_hint = self.opts.prefix_kind;
        if let Some(pf) = self.opts.prefix.take() {
            // A PEFT adapter (folder or file) carries its own kind; prefix files are never folders.
            let adapter = pf.is_dir()
                || crate::peft::is_adapter_path(&pf)
                || crate::arrays::extension(&pf) == "bin";
            let opened = if adapter {
                crate::peft::open(&pf, info, path).map(|a| a.prefix)
            } else {
                Prefix::load_for(&pf, kind_hint.unwrap_or(PrefixKind::SoftPrompt), info)
            };
            match opened {
                Ok(p) => return p,
                Err(e) => self.editor.message = Some((true, e.one_line())),
            }
        }
        if self.session.autosave_model.as_deref() == Some(path) {
            if let (Some(dir), Some(kind)) = (autosave_dir(&self.opts), self.session.autosave_kind)
            {
                let file = dir.join(AUTOSAVE_PREFIX);
                match Prefix::load(&file, kind) {
                    Ok(p) if p.check(info, &file).is_ok() => {
                        self.editor.message = Some((false, "restored the autosaved prefix".into()));
                        return p;
                    }
                    // Readable but for another shape: not corrupt, just not this model's.
                    Ok(_) => {}
                    Err(e) if file.exists() => {
                        // Unreadable: moved aside so that it is not read again, and reported.
                        let moved = session_file::move_aside(&file);
                        self.startup_note =
                            Some(session_file::note(&file, &e.one_line(), moved.as_deref()));
                        self.session.autosave_model = None;
                    }
                    Err(_) => {}
                }
            }
        }
        if let Some((d, Some(pf))) = default_model() {
            if same_file(&d, path) {
                if let Ok(p) = Prefix::load_for(&pf, PrefixKind::Hidden, info) {
                    return p;
                }
            }
        }
        if let Some(p) = &self.editor.prefix {
            if p.check(info, Path::new("prefix")).is_ok() {
                return p.clone();
            }
        }
        Prefix::zeros(self.editor.kind, self.editor.p.max(1), info)
    }

    /// Ask the worker for the current prompt and prefix when they changed.
    fn request_if_changed(&mut self) {
        let Some(m) = &self.loaded else { return };
        if self.prompt.ids.is_empty() || self.prompt.error.is_some() {
            return;
        }
        let key = (self.editor.version, self.prompt.ids.clone(), m.model_gen);
        let same = self
            .last_sent
            .as_ref()
            .is_some_and(|(_, ids, mg)| *ids == key.1 && *mg == key.2)
            && self.sent_version == key.0;
        // A layer the answer on screen lacks (the quick answers hold layer 0 and the viewed one).
        let layer_missing = self.shown.as_ref().is_some_and(|s| {
            s.capture.layer(self.views.layer).is_none() && self.sent_layer != Some(self.views.layer)
        });
        // A head the answer on screen lacks (a long prompt's answers hold the viewed head only).
        let head_missing = self.shown.as_ref().is_some_and(|s| {
            s.head_index(self.views.head).is_none()
                && self.sent_view != Some((self.views.layer, self.views.head))
        });
        if same && !layer_missing && !head_missing {
            return;
        }
        self.sent_layer = Some(self.views.layer);
        self.sent_view = Some((self.views.layer, self.views.head));
        let gen = self.next_gen;
        self.next_gen += 1;
        self.worker.compute(ComputeRequest {
            gen,
            model_gen: m.model_gen,
            ids: key.1.clone(),
            prefix: self.editor.prefix.clone(),
            view_layer: self.views.layer,
            view_head: self.views.head,
        });
        self.sent_version = key.0;
        self.last_sent = Some((gen, key.1, key.2));
    }

    /// Ask the worker for A's maps (after B's request) when A, the prompt, the model or the viewed
    /// layer changed.
    fn request_pinned(&mut self) {
        let Some(m) = &self.loaded else { return };
        if self.prompt.ids.is_empty() || self.prompt.error.is_some() {
            return;
        }
        if let Some(req) = self.ab.request(
            &m.info,
            m.model_gen,
            &self.prompt.ids,
            self.views.layer,
            self.views.head,
        ) {
            self.worker.compute_pinned(req);
        }
    }

    /// Pin the live prefix as A (the A/B panel), or unpin A; the session keeps the choice.
    pub fn toggle_pin(&mut self) {
        if self.ab.pinned.is_some() {
            self.ab.unpin();
            self.session.pinned = None;
        } else if let Some(p) = self.editor.prefix.clone() {
            self.ab.pin(p);
            self.session.pinned = self.ab.pinned.as_ref().map(|p| p.meta.clone());
        }
    }

    /// A from the session's `autosave-pinned.npz`; an unreadable file is moved aside and reported.
    fn restore_pinned(&mut self) {
        let (Some(meta), Some(dir)) = (self.session.pinned.clone(), autosave_dir(&self.opts))
        else {
            return;
        };
        let file = dir.join(AUTOSAVE_PINNED);
        match Prefix::load(&file, meta.kind) {
            Ok(p) if p.len() == meta.len => {
                self.ab.restore(p, meta);
                self.ab.saved_version = self.ab.pinned.as_ref().map(|p| p.version);
            }
            Ok(p) => {
                self.startup_note = Some(format!(
                    "{}: P = {} where the session says {}; A/B not restored",
                    file.display(),
                    p.len(),
                    meta.len
                ));
                self.session.pinned = None;
            }
            Err(e) => {
                let moved = file
                    .exists()
                    .then(|| session_file::move_aside(&file))
                    .flatten();
                self.startup_note =
                    Some(session_file::note(&file, &e.one_line(), moved.as_deref()));
                self.session.pinned = None;
            }
        }
    }

    fn session_snapshot(&self) -> Session {
        let mut s = self.session.clone();
        s.prompt = Some(self.prompt.clone());
        s.views = Some(self.views.clone());
        s.models = Some(self.model_panel.clone());
        s.editor_token = self.editor.token;
        s.editor_layer = self.editor.layer;
        s.plots = Some(self.plots.settings(self.overview.metric));
        s
    }

    /// Write the prefix (atomically) and the session file beside it.
    pub fn autosave(&mut self) {
        let Some(dir) = autosave_dir(&self.opts) else {
            return;
        };
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        if let (Some(p), Some(m)) = (&self.editor.prefix, &self.loaded) {
            if self.editor.saved_version != self.editor.version
                || self.session.autosave_model.is_none()
            {
                match p.save(&dir.join(AUTOSAVE_PREFIX)) {
                    Ok(()) => {
                        self.session.autosave_model = Some(m.path.clone());
                        self.session.autosave_kind = Some(p.kind());
                        self.editor.saved_version = self.editor.version;
                    }
                    Err(e) => tracing::warn!("autosave failed: {}", e.one_line()),
                }
            }
        }
        if let Some(pin) = &self.ab.pinned {
            if self.ab.saved_version != Some(pin.version) {
                match pin.prefix.save(&dir.join(AUTOSAVE_PINNED)) {
                    Ok(()) => self.ab.saved_version = Some(pin.version),
                    Err(e) => tracing::warn!("autosave of A failed: {}", e.one_line()),
                }
            }
        }
        if let Ok(text) = serde_json::to_string_pretty(&self.session_snapshot()) {
            if let Err(e) = crate::arrays::write_atomic(&dir.join(SESSION_FILE), text.as_bytes()) {
                tracing::warn!("session save failed: {}", e.one_line());
            }
        }
        self.last_autosave = Instant::now();
    }

    fn handle_input(&mut self, ctx: &egui::Context) {
        // Files dropped on the window: prefix files go to the editor, anything else is a model.
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        for p in dropped {
            if crate::peft::is_adapter_path(&p) {
                if let Some(m) = &self.loaded {
                    let (info, path) = (m.info.clone(), m.path.clone());
                    self.editor.open_adapter(&p, &info, &path);
                }
                continue;
            }
            let ext = crate::arrays::extension(&p);
            match (&self.loaded, ext.as_str()) {
                (Some(m), "npz" | "npy") => {
                    let info = m.info.clone();
                    self.editor.load_file(&p, &info);
                }
                _ => self.open_model(p),
            }
        }
        // Arrow keys move through layers and heads when no widget has the keyboard.
        if let Some(info) = self.model_info().cloned() {
            if ctx.memory(|m| m.focused().is_none()) {
                let (l, r, u, d) = ctx.input_mut(|i| {
                    (
                        i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowLeft),
                        i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowRight),
                        i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowUp),
                        i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowDown),
                    )
                });
                let v = &mut self.views;
                if l {
                    v.layer = v.layer.saturating_sub(1);
                }
                if r {
                    v.layer = (v.layer + 1).min(info.n_layers.saturating_sub(1));
                }
                if u {
                    v.head = v.head.saturating_sub(1);
                }
                if d {
                    v.head = (v.head + 1).min(info.n_heads.saturating_sub(1));
                }
            }
            self.editor.shortcuts(ctx);
        }
    }

    /// The whole window: what `eframe::App::ui` draws, and what the tests drive.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let frame_start = Instant::now();
        let ctx = ui.ctx().clone();
        self.worker.set_context(&ctx);
        if !self.fonts_set {
            // Fonts change from the next pass on: draw nothing with the old ones.
            self.fonts_set = true;
            let t = Instant::now();
            install_fonts(&ctx);
            if self.opts.timings {
                eprintln!(
                    "startup: first frame {} ms after start, fonts installed in {} ms",
                    t.duration_since(self.started).as_millis(),
                    t.elapsed().as_millis()
                );
            }
            ctx.request_repaint();
            return;
        }
        self.handle_replies(&ctx);
        self.handle_input(&ctx);
        self.tune_poll();

        egui::Panel::bottom("status").show(ui, |ui| self.status_ui(ui));
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(340.0)
            .size_range(280.0..=520.0)
            .show(ui, |ui| self.controls_ui(ui));
        self.show_plots(ui);
        self.show_ab(ui);
        egui::CentralPanel::default().show(ui, |ui| self.central_ui(ui));

        if ctx.input(|i| !i.raw.hovered_files.is_empty()) {
            let painter = ctx.layer_painter(egui::LayerId::new(
                egui::Order::Foreground,
                egui::Id::unique("drop"),
            ));
            let rect = ctx.content_rect();
            painter.rect_filled(rect, 0.0, egui::Color32::from_black_alpha(160));
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "drop a checkpoint (or a prefix .npz) to open it",
                egui::FontId::proportional(22.0),
                egui::Color32::WHITE,
            );
        }

        self.request_if_changed();
        self.request_pinned();
        if self.loading.is_some() || self.worker.is_busy() {
            // Results and progress wake the window themselves; this only keeps the status line
            // ticking. (A spinner or a 50 ms repaint made a software-rendered window compete with
            // the load for the CPU at startup, #19 finding 11.)
            ctx.request_repaint_after(Duration::from_millis(250));
        }
        if self.last_autosave.elapsed() >= AUTOSAVE_EVERY {
            self.autosave();
        }
        self.frame_stats(&ctx, frame_start);
        if !self.startup_reported && self.shown.is_some() && self.is_current() {
            self.startup_reported = true;
            self.filled_at = Some(Instant::now());
            if let (true, Some((i, r, w))) = (self.opts.bench_fps, self.editor.first_slider) {
                // For scripts that drag it: the slider's track in window pixels.
                let ppp = ctx.pixels_per_point();
                eprintln!(
                    "bench: slider d{i} track x {:.0}..{:.0} y {:.0}",
                    r.left() * ppp,
                    (r.left() + w) * ppp,
                    r.center().y * ppp
                );
            }
            if self.opts.timings {
                eprintln!(
                    "startup: all views filled {} ms after start (the answer took {} ms)",
                    self.started.elapsed().as_millis(),
                    self.shown
                        .as_ref()
                        .map_or(0, |c| c.compute_time.as_millis())
                );
            }
        }
        if let Some(q) = self.opts.quit_after {
            // Counted from the first complete view (or from the start when nothing is loading).
            let since = match (
                self.filled_at,
                self.loading.is_some() || self.loaded.is_some(),
            ) {
                (Some(t), _) => t.elapsed(),
                (None, false) => self.started.elapsed(),
                // Never wait forever for a load that hangs.
                (None, true) => self
                    .started
                    .elapsed()
                    .saturating_sub(Duration::from_secs(120)),
            };
            if since.as_secs_f32() >= q {
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            } else {
                ctx.request_repaint_after(Duration::from_millis(100));
            }
        }
    }

    fn frame_stats(&mut self, ctx: &egui::Context, frame_start: Instant) {
        let s = &mut self.stats;
        s.frames += 1;
        s.ui_time += frame_start.elapsed();
        let dt = s.window_start.elapsed();
        if dt >= Duration::from_secs(1) {
            s.last_fps = s.frames as f32 / dt.as_secs_f32();
            if self.opts.bench_fps {
                let now = thread_schedstat();
                let frames = s.frames.max(1) as f64;
                let sched = match (now, s.sched) {
                    (Some((run, wait)), Some((run0, wait0))) => format!(
                        "; UI thread per frame: {:.1} ms on a CPU, {:.1} ms waiting for one",
                        run.saturating_sub(run0) as f64 / 1e6 / frames,
                        wait.saturating_sub(wait0) as f64 / 1e6 / frames
                    ),
                    _ => String::new(),
                };
                s.sched = now;
                eprintln!(
                    "fps {:.1} (frames {}, ui code {:.2} ms/frame{sched}; view updates {:.1}/s, last compute {} ms)",
                    s.last_fps,
                    s.frames,
                    s.ui_time.as_secs_f64() * 1e3 / frames,
                    s.updates as f32 / dt.as_secs_f32(),
                    self.shown.as_ref().map_or(0, |c| c.compute_time.as_millis()),
                );
            }
            s.frames = 0;
            s.updates = 0;
            s.ui_time = Duration::ZERO;
            s.window_start = Instant::now();
        }
        if self.opts.bench_fps {
            ctx.request_repaint();
        }
    }

    fn status_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let worker = if self.worker.is_busy() {
                "computing"
            } else {
                "idle"
            };
            self.plots.toggle_ui(ui);
            ui.label(egui::RichText::new(format!("worker: {worker}")).small());
            if let Some(c) = &self.shown {
                ui.label(
                    egui::RichText::new(format!(
                        "· last update {} ms · N = {}, P = {}",
                        c.compute_time.as_millis(),
                        c.capture.token_ids.len(),
                        c.capture.p
                    ))
                    .small(),
                );
            }
            if self.opts.bench_fps {
                ui.label(egui::RichText::new(format!("· {:.0} fps", self.stats.last_fps)).small());
            }
            if let Some(e) = &self.compute_error {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            if let Some(n) = &self.startup_note {
                ui.colored_label(ui.visuals().warn_fg_color, format!("· {n}"));
            }
        });
    }

    fn controls_ui(&mut self, ui: &mut egui::Ui) {
        ui.add_space(4.0);
        ui.heading(egui::RichText::new("prefixscope").strong());
        ui.add_space(4.0);
        self.construction_switch(ui);
        if self.construction.active {
            ui.separator();
            self.construction_ui(ui);
            return;
        }
        // The checks sit at the bottom of this panel; everything else scrolls in the space above
        // them, so no list can grow over them at any window size.
        let checks = egui::Panel::bottom("checks").show(ui, |ui| {
            let id = ui.unique_id();
            self.checks_ui(ui);
            id
        });
        self.checks_panel = Some((checks.inner, checks.response.rect));
        egui::ScrollArea::vertical()
            .id_salt("controls")
            .auto_shrink([false, false])
            .show(ui, |ui| self.explore_controls_ui(ui));
    }

    /// Explore mode's controls: the model, the prompt and the prefix editor.
    fn explore_controls_ui(&mut self, ui: &mut egui::Ui) {
        let status = ModelStatus {
            path: self.loaded.as_ref().map(|l| l.path.as_path()),
            info: self.loaded.as_ref().map(|l| &l.info),
            tokenizer: self.loaded.as_ref().map(|l| l.tokenizer.describe()),
            loading: self.loading.as_ref(),
        };
        match self.model_panel.ui(ui, &status) {
            Some(ModelAction::Open(p)) => self.open_model(p),
            Some(ModelAction::Cancel) => {
                if let Some(j) = &self.loading {
                    j.cancel();
                }
            }
            None => {}
        }
        ui.separator();
        ui.label(egui::RichText::new("Prompt").strong().size(15.0));
        let tok = self.loaded.as_ref().map(|l| l.tokenizer.clone());
        if self.prompt.ui(ui, tok.as_deref()) {
            if let Some(t) = &tok {
                self.prompt.tokenize(t);
            }
        }
        if self.prompt.labels_raw {
            let ctx = ui.ctx().clone();
            self.prompt.labels = self
                .prompt
                .labels
                .iter()
                .map(|l| displayable(&ctx, l))
                .collect();
            self.prompt.labels_raw = false;
        }
        ui.separator();
        self.tune_section(ui);
        ui.horizontal(|ui| {
            ui.label(egui::RichText::new("Prefix").strong().size(15.0));
            let (text, tip) = if self.ab.pinned.is_some() {
                ("unpin A", "close the A/B panel")
            } else {
                (
                    "pin as A",
                    "keep this prefix as A and compare the prefix you edit next (B) with it",
                )
            };
            if ui
                .add_enabled(self.editor.prefix.is_some(), egui::Button::new(text))
                .on_hover_text(tip)
                .clicked()
            {
                self.toggle_pin();
            }
        });
        let info = self.loaded.as_ref().map(|l| l.info.clone());
        let request = self.editor.ui(ui, info.as_ref(), tok.as_deref());
        let Some(m) = &self.loaded else { return };
        match request {
            Some(EditorRequest::Embedding(id)) => self.worker.embedding(m.model_gen, id),
            Some(EditorRequest::OpenAdapter(p)) => {
                let (info, path) = (m.info.clone(), m.path.clone());
                self.editor.open_adapter(&p, &info, &path);
            }
            Some(EditorRequest::SaveAdapter(dir, replace)) => {
                let (model, path) = (m.model.clone(), m.path.clone());
                self.editor
                    .save_adapter(&dir, model.as_ref(), &path, replace);
            }
            None => {}
        }
    }

    fn checks_ui(&mut self, ui: &mut egui::Ui) {
        ui.add_space(4.0);
        ui.label(egui::RichText::new("Checks").strong().size(15.0));
        let Some(c) = &self.shown else {
            ui.label("—");
            return;
        };
        let good = egui::Color32::from_rgb(110, 200, 120);
        let warn = ui.visuals().warn_fg_color;
        // A claim with a tolerance: green and "passes" within it, the warning colour above it.
        let line = |ui: &mut egui::Ui, what: &str, v: Option<f32>, tol: f32| {
            match v {
                Some(x) if x <= tol => ui
                    .colored_label(good, format!("{what} = {x:.2e} · passes"))
                    .on_hover_text(format!("the paper's claim holds within {tol:.0e}")),
                Some(x) => ui
                    .colored_label(warn, format!("{what} = {x:.2e} · fails"))
                    .on_hover_text(format!("above the tolerance {tol:.0e}")),
                None => ui.label(format!("{what}: no prefix")),
            };
        };
        line(
            ui,
            "layer 0: max |renorm − pretrained|",
            c.layer0_renorm_diff,
            1e-5,
        );
        line(
            ui,
            "layer 0: head-output identity error",
            c.layer0_identity_error,
            1e-4,
        );
        if let Some(lc) = c.capture.layer(self.views.layer) {
            if self.views.layer != 0 {
                // A measurement, not a check: the paper claims nothing past layer 0, so this line
                // has the plain text colour, never the colour of a passed check.
                let what = format!("layer {}: max |renorm − pretrained|", self.views.layer);
                // One head captured (a long prompt): the layer's figure is the overview row's max.
                let layer_max = match c.only_head {
                    Some(_) => c
                        .overview
                        .get(self.views.layer)
                        .and_then(|row| row.iter().copied().reduce(|a, b| Some(a?.max(b?))))
                        .flatten(),
                    None => lc.max_renorm_diff(None),
                };
                let text = match layer_max {
                    Some(x) => format!("{what} = {x:.2e} · measured (no claim past layer 0)"),
                    None => format!("{what}: no prefix"),
                };
                ui.label(text);
            }
        }
        ui.add_space(2.0);
    }

    fn central_ui(&mut self, ui: &mut egui::Ui) {
        let Some(loaded) = &self.loaded else {
            ui.add_space(ui.available_height() * 0.3);
            ui.vertical_centered(|ui| {
                ui.heading("No model loaded");
                if let Some(n) = &self.empty_note {
                    ui.label(n);
                }
                if self.loading.is_some() {
                    // Text, not a spinner: a spinner repaints every frame (see `show`).
                    ui.label("loading…");
                } else if ui.button("Open a checkpoint…").clicked() {
                    match rfd::FileDialog::new().add_filter("checkpoints", &["safetensors", "gguf"]).pick_file() {
                        Some(p) => self.open_model(p),
                        None => {
                            self.model_panel.note = Some("No file dialog is available here: type the path in the model path box on the left, or drop the file on the window.".into())
                        }
                    }
                }
                if let Some(e) = &self.model_panel.error {
                    ui.colored_label(ui.visuals().error_fg_color, e);
                }
            });
            return;
        };
        let (n_layers, n_heads) = (loaded.info.n_layers, loaded.info.n_heads);
        self.views.clamp(n_layers, n_heads);
        self.views.controls_ui(ui);
        ui.add_space(6.0);
        let Some(shown) = &self.shown else {
            ui.label("computing the first views…");
            return;
        };
        // The maps get the height the export row and the overview leave (at least 60 % of it).
        let total = ui.available_height();
        let export_h = export_height(ui.available_width());
        let below = if self.views.overview {
            overview::min_height(n_heads)
        } else {
            0.0
        } + export_h;
        // The overview keeps its minimum: the bottom panels leave room for it (`bottom_range`).
        let views_h = (total - below).max(MAPS_MIN);
        let width = ui.available_width();
        // An answer for other tokens than the prompt's: dimmed and said so until the new one comes.
        let shown_n = shown.capture.token_ids.len();
        let stale = (shown.capture.token_ids != self.prompt.ids
            && self.prompt.error.is_none()
            && !self.prompt.ids.is_empty())
        .then(|| {
            format!(
                "showing N = {shown_n}, computing N = {}",
                self.prompt.ids.len()
            )
        });
        ui.allocate_ui(egui::vec2(width, views_h), |ui| {
            self.views.ui(
                ui,
                &ViewData {
                    computed: shown,
                    labels: &self.shown_labels,
                    stale,
                },
            );
        });
        // The capture's index of the viewed head (0 when it holds that head only); while another
        // head is computed, nothing to export.
        if let Some(head) = shown.head_index(self.views.head) {
            self.export.ui(
                ui,
                &export::ExportData {
                    capture: &shown.capture,
                    labels: &self.shown_labels,
                    layer: self.views.layer,
                    head,
                    cmap: self.views.norm.cmap,
                    value_scale: self.views.norm.value_scale(),
                },
            );
        }
        if !self.views.overview {
            return;
        }
        ui.separator();
        let sel = (self.views.layer, self.views.head);
        let (grid, fresh) = self.plots.overview_grid(self.overview.metric, shown);
        if let Some((l, h)) = self
            .overview
            .ui(ui, &grid, fresh, sel, self.views.norm.cmap)
        {
            self.views.layer = l;
            self.views.head = h;
        }
    }
}

/// What the central panel keeps at least, besides the overview and the export row: the views'
/// header (two lines in a narrow panel), the maps and the panel's margins.
const CENTRAL_HEADER: f32 = 56.0;
const MAPS_MIN: f32 = 160.0;
const CENTRAL_MARGINS: f32 = 28.0;

/// The export row's height: it wraps onto a second line in a narrow central panel.
fn export_height(width: f32) -> f32 {
    if width < 900.0 {
        74.0
    } else {
        48.0
    }
}

impl PrefixScopeApp {
    /// The height the central panel needs at least (`width`: its width): the header, the maps'
    /// minimum, the export row and the overview's minimum when it is shown.
    fn central_min(&self, width: f32) -> f32 {
        let overview = match (&self.loaded, self.views.overview) {
            (Some(m), true) => overview::min_height(m.info.n_heads),
            _ => 0.0,
        };
        CENTRAL_HEADER + MAPS_MIN + export_height(width) + overview + CENTRAL_MARGINS
    }

    /// The size range of a bottom panel (plots, A/B) declared now: at most what the central panel
    /// can spare (shared with the A/B panel still to come when `share`), at least `min` or less
    /// when even that does not fit.
    fn bottom_range(&self, ui: &egui::Ui, min: f32, share: bool) -> std::ops::RangeInclusive<f32> {
        let room = ui.available_height() - self.central_min(ui.available_width());
        let room = if share { room * 0.55 } else { room };
        let max = room.clamp(60.0, 900.0);
        min.min(max)..=max
    }

    /// The A/B panel under the maps while A is pinned.
    fn show_ab(&mut self, ui: &mut egui::Ui) {
        if self.ab.pinned.is_none() || self.construction.active {
            return;
        }
        let Some(shown) = &self.shown else { return };
        let mut action = None;
        egui::Panel::bottom("ab")
            .resizable(true)
            .default_size(260.0)
            .size_range(self.bottom_range(ui, 150.0, false))
            .show(ui, |ui| {
                action = self.ab.ui(ui, shown, &self.shown_labels, &self.views);
            });
        if let Some(ab::AbAction::Unpin) = action {
            self.toggle_pin();
        }
    }
}

/// A model load started before the window is created (window creation and the load overlap; the
/// startup timer runs from here), for the model the session file or the command line names.
pub struct EarlyLoad {
    worker: Worker,
    /// The load and whether it keeps GGUF weights quantized.
    job: Option<(LoadJob, bool)>,
    started: Instant,
}

impl EarlyLoad {
    /// Read the session file without changing it (a corrupt one is left to `new`, which moves it
    /// aside and says so) and start loading the model it, `--model` or the default names.
    pub fn start(opts: &AppOptions) -> EarlyLoad {
        let started = Instant::now();
        let mut worker = Worker::new();
        let session = (!opts.fresh)
            .then(|| autosave_dir(opts).map(|d| d.join(SESSION_FILE)))
            .flatten()
            .filter(|p| {
                std::fs::metadata(p).is_ok_and(|m| m.len() <= session_file::MAX_SESSION_BYTES)
            })
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| session_file::parse(&t).ok());
        let quantized = session
            .as_ref()
            .and_then(|s| s.models.as_ref())
            .map_or_else(|| ModelPanel::default().quantized, |m| m.quantized);
        let target = opts
            .model
            .clone()
            .or_else(|| {
                session
                    .as_ref()
                    .and_then(|s| s.model_path.clone())
                    .filter(|p| p.exists())
            })
            .or_else(|| default_model().map(|(m, _)| m));
        let job = target.map(|p| (worker.load(p, quantized), quantized));
        EarlyLoad {
            worker,
            job,
            started,
        }
    }
}

/// Where the autosave goes: `--session-dir`, else eframe's storage directory for the app.
fn autosave_dir(opts: &AppOptions) -> Option<PathBuf> {
    opts.session_dir
        .clone()
        .or_else(|| eframe::storage_dir("prefixscope"))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl eframe::App for PrefixScopeApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SESSION_KEY, &self.session_snapshot());
        self.autosave();
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.autosave();
    }

    fn auto_save_interval(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// The window icon, `assets/icon.png`.
fn window_icon() -> Option<egui::IconData> {
    let img = image::load_from_memory(include_bytes!("../../assets/icon.png"))
        .ok()?
        .into_rgba8();
    Some(egui::IconData {
        width: img.width(),
        height: img.height(),
        rgba: img.into_raw(),
    })
}

/// Open the window (blocks until it closes).
pub fn run(opts: AppOptions) -> crate::Result<()> {
    let (w, h) = opts.size.unwrap_or((1280.0, 800.0));
    let mut viewport = egui::ViewportBuilder::default();
    if let Some(icon) = window_icon() {
        viewport = viewport.with_icon(icon);
    }
    let mut native = eframe::NativeOptions {
        viewport: viewport
            .with_title("prefixscope")
            .with_app_id("prefixscope")
            .with_inner_size([w, h])
            .with_min_inner_size([800.0, 500.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    if let Some(dir) = &opts.session_dir {
        native.persistence_path = Some(dir.join("eframe.ron"));
    }
    if opts.size.is_some() || opts.fresh {
        // An explicit size (screenshots, CI) must not be overridden by a remembered window.
        native.persist_window = false;
    }
    // The model loads while the window is created.
    let early = EarlyLoad::start(&opts);
    eframe::run_native(
        "prefixscope",
        native,
        Box::new(move |cc| {
            Ok(
                Box::new(PrefixScopeApp::new_with(cc.storage, opts, Some(early)))
                    as Box<dyn eframe::App>,
            )
        }),
    )
    .map_err(|e| crate::Error::input("window", "a display to open the window on", e.to_string()))
}
