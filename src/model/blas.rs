//! The matmul backend for the big f32 products, chosen by measurement at first use.
//!
//! candle's own gemm uses AVX2 kernels only (its AVX-512 path needs a nightly compiler); OpenBLAS's
//! `sgemm` is up to four times faster for the projection matmuls that dominate a forward pass, *when it
//! runs a kernel for this CPU*. Debian bookworm's OpenBLAS 0.3.21 does not know CPUs newer than it
//! (an Intel Xeon of family 6 model 207 among them) and falls back to its SSE3 *Prescott* kernel,
//! slower than candle's gemm. So nothing is trusted:
//! 1. the CPU's vector extensions are read (`is_x86_feature_detected!`, family/model from `cpuid`);
//! 2. OpenBLAS is loaded with `dlopen` (`libopenblas.so.0`, Debian's `libopenblas0`, or the file
//!    `PREFIXSCOPE_BLAS` names) and asked which kernel it chose (`openblas_get_corename`);
//! 3. when that kernel is weaker than the CPU supports ([`core_to_force`]), the library is re-initialized
//!    with `OPENBLAS_CORETYPE` set to the kernel the CPU's extensions allow (SkylakeX for AVX-512,
//!    Haswell for AVX2 + FMA, Sandybridge for AVX);
//! 4. one projection-shaped product (`(128, 576) @ (576, 1536)`, a few ms) is timed on each candidate
//!    (OpenBLAS as the library chose, OpenBLAS with the forced kernel, candle's gemm) and the fastest
//!    is kept ([`decide`]): the kernel the CPU calls for stays unless another is faster by more than
//!    [`SWITCH_MARGIN`], so that noise on a busy machine does not flip the choice;
//! 5. the decision is cached per machine (`~/.cache/prefixscope/matmul-<hash>.json`, or under
//!    `PREFIXSCOPE_CACHE`/`XDG_CACHE_HOME`), keyed by the CPU's identity, the library's file, version
//!    and kernel, the settings below and our version ([`cache_key`]); it is written atomically, the
//!    first process to store it wins, and a corrupt or stale file is measured again and replaced.
//!    Every process on one machine so computes with the same backend (two backends' products differ
//!    at rounding level: a resumed `tune` would not end on an uninterrupted run's bytes).
//!    `PREFIXSCOPE_BLAS_REMEASURE=1` measures again. A resumed `tune` takes the backend its state
//!    file records ([`init_preferring`], [`token`]).
//!
//! The attention's query blocks run on OpenBLAS too, from several threads at once, through
//! [`SerialGemm`] (Debian's pthreads build only: [`serial_safe`]). Every `sgemm` call is counted in
//! flight so that the process's exit waits for them before OpenBLAS's destructor joins its threads
//! (`quiesce_at_exit`: a product started during that join hung the process).
//!
//! Without any BLAS library everything runs on candle's matmul, with the same results up to rounding.
//! `PREFIXSCOPE_BLAS=off` forces candle's; a user's own `OPENBLAS_CORETYPE` is respected;
//! `PREFIXSCOPE_BLAS_SIMULATE_CORE=Prescott` starts OpenBLAS on that kernel as if the library had
//! chosen it (to see the forced path on a CPU the library knows). The
//! decision functions ([`core_level`], [`best_core`], [`core_to_force`], [`fastest`], [`decide`],
//! [`parse_entry`]) are pure, so that
//! CI tests the choice on any CPU with made-up CPUs, kernel names and timings.

use candle_core::{DType, Tensor};
use std::sync::OnceLock;

/// `cblas_sgemm` with 32-bit integers (the LP64 build that distributions ship).
type Sgemm = unsafe extern "C" fn(
    layout: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);

/// `openblas_get_corename`, `openblas_get_config`: static C strings.
type GetStr = unsafe extern "C" fn() -> *const std::ffi::c_char;
/// `gotoblas_dynamic_quit`, `gotoblas_dynamic_init` (builds with `DYNAMIC_ARCH` only).
type Hook = unsafe extern "C" fn();
/// `openblas_set_num_threads`.
type SetThreads = unsafe extern "C" fn(i32);
/// `openblas_get_num_threads`.
type GetThreads = unsafe extern "C" fn() -> i32;

/// Products smaller than this many multiply-adds stay on candle's matmul (the call overhead is most
/// of their cost).
const BLAS_MIN_MACS: usize = 1 << 16;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// What the CPU offers, as far as the choice of a gemm kernel goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cpu {
    /// `cpuid` vendor string ("GenuineIntel", "AuthenticAMD"), empty off x86.
    pub vendor: String,
    /// Display family and model (extended fields folded in, as Intel and AMD document them).
    pub family: u32,
    pub model: u32,
    pub avx: bool,
    pub avx2_fma: bool,
    /// AVX-512 F, CD, BW, DQ and VL: what OpenBLAS's SkylakeX kernels use.
    pub avx512: bool,
}

impl Cpu {
    /// This machine's CPU (all extensions false off x86-64).
    pub fn detect() -> Cpu {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            // `cpuid` exists on every x86-64 CPU; leaves 0 and 1 are always valid.
            let (l0, l1) = (__cpuid(0), __cpuid(1));
            let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            let base_family = (l1.eax >> 8) & 0xf;
            let base_model = (l1.eax >> 4) & 0xf;
            let family = if base_family == 0xf {
                base_family + ((l1.eax >> 20) & 0xff)
            } else {
                base_family
            };
            let model = if base_family == 0x6 || base_family == 0xf {
                base_model + (((l1.eax >> 16) & 0xf) << 4)
            } else {
                base_model
            };
            Cpu {
                vendor: String::from_utf8_lossy(&vendor).into_owned(),
                family,
                model,
                avx: is_x86_feature_detected!("avx"),
                avx2_fma: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                avx512: is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512cd")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu::default()
    }

    /// "AuthenticAMD family 25 model 17, AVX-512", for `inspect`.
    pub fn describe(&self) -> String {
        let ext = if self.avx512 {
            "AVX-512"
        } else if self.avx2_fma {
            "AVX2 + FMA"
        } else if self.avx {
            "AVX"
        } else {
            "no AVX"
        };
        format!(
            "{} family {} model {}, {ext}",
            self.vendor, self.family, self.model
        )
    }
}

/// The widest vector extension an OpenBLAS x86 kernel (`openblas_get_corename`) uses: 3 AVX-512, 2 AVX2,
/// 1 AVX, 0 SSE only (and any name not known here: an unknown name is never taken as better).
pub fn core_level(corename: &str) -> u8 {
    match corename.to_ascii_lowercase().as_str() {
        "skylakex" | "cooperlake" | "sapphirerapids" => 3,
        "haswell" | "zen" | "excavator" | "steamroller" => 2,
        "sandybridge" | "bulldozer" | "piledriver" => 1,
        _ => 0,
    }
}

/// The kernel (an `OPENBLAS_CORETYPE` value) for the widest extension the CPU has, `None` for a CPU
/// without AVX (nothing to gain over the library's own choice).
pub fn best_core(cpu: &Cpu) -> Option<&'static str> {
    if cpu.avx512 {
        Some("SKYLAKEX")
    } else if cpu.avx2_fma {
        Some("HASWELL")
    } else if cpu.avx {
        Some("SANDYBRIDGE")
    } else {
        None
    }
}

/// The kernel to force when the library chose `chosen` on `cpu`: only when `chosen` uses narrower
/// vectors than the CPU has (a library older than the CPU falls back to Prescott). A kernel as wide
/// as ours is left alone (OpenBLAS knows its own tuning for Zen or Cooperlake better).
pub fn core_to_force(cpu: &Cpu, chosen: &str) -> Option<&'static str> {
    best_core(cpu).filter(|c| core_level(c) > core_level(chosen))
}

/// Index of the fastest candidate (smallest time in seconds); ties go to the earlier one, and a
/// time that is not a finite positive number (a failed measurement) never wins. `None` when
/// nothing was measured.
pub fn fastest(seconds: &[f64]) -> Option<usize> {
    seconds
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_finite() && **t > 0.0)
        .fold(None, |best: Option<(usize, f64)>, (i, &t)| match best {
            Some((_, b)) if b <= t => best,
            _ => Some((i, t)),
        })
        .map(|(i, _)| i)
}

struct Blas {
    // Kept alive for as long as `sgemm` may be called.
    _lib: libloading::Library,
    sgemm: Sgemm,
    /// "OpenBLAS 0.3.21" (from `openblas_get_config`), or the file name for another CBLAS.
    version: String,
    /// The whole `openblas_get_config` line (version and build options), empty for another CBLAS.
    config: String,
    /// The name it was opened by.
    name: String,
    /// The kernel in use (`openblas_get_corename`), when the library says.
    core: Option<String>,
    /// The kernel the library chose itself, when we forced another.
    replaced: Option<String>,
    /// OpenBLAS's thread-count setters: [`SerialGemm`] needs both (another CBLAS has neither, and
    /// its products are then never run from several threads at once).
    threads: Option<(SetThreads, GetThreads)>,
}

impl Blas {
    /// `c = alpha * op(a) @ op(b)` (beta 0) for row-major operands: the one call of `sgemm`, held in
    /// flight for the exit wait ([`IN_FLIGHT`]). `op(a)` is `(m, k)` and `op(b)` is `(k, n)`, each
    /// stored transposed when its flag is set; each pointer comes with its row stride.
    ///
    /// # Safety
    /// Each pointer must address the rows of its operand at its stride (`a`: `m` rows of `k`, or `k`
    /// of `m` when transposed; `b` likewise with `k`, `n`), `c` room for `m` rows of `n`, and every
    /// size and stride must fit in an `i32`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn call(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        (c, ldc): (*mut f32, usize),
    ) {
        let op = |t: bool| if t { TRANS } else { NO_TRANS };
        let _running = IN_FLIGHT.read().unwrap_or_else(|e| e.into_inner());
        (self.sgemm)(
            ROW_MAJOR,
            op(ta),
            op(tb),
            m as i32,
            n as i32,
            k as i32,
            alpha,
            a,
            lda as i32,
            b,
            ldb as i32,
            0.0,
            c,
            ldc as i32,
        );
    }
}

/// The backend in use and how it was chosen.
struct Backend {
    blas: Option<Blas>,
    /// One line for `inspect` and `bench`.
    description: String,
    source: Source,
}

/// Choose the backend now (loading OpenBLAS and timing the candidates) rather than at the first
/// product. `main` calls it before any thread is started: re-initializing OpenBLAS with another
/// kernel sets `OPENBLAS_CORETYPE` in the process environment, which is only sound while no other
/// thread reads the environment (glibc's `setenv` may move `environ` under a concurrent `getenv`).
/// Library users (tests) that never call it get the same choice at the first product, made under the
/// same lock; by then their threads may be running, which is why the binary calls this first.
pub fn init() {
    backend_state();
}

fn backend_state() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let b = choose_backend();
        if b.blas.is_some() {
            quiesce_at_exit();
        }
        b
    })
}

/// Held (shared) by every `sgemm` call in flight; taken for good at exit ([`quiesce_at_exit`]).
static IN_FLIGHT: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// At process exit OpenBLAS's destructor wakes its worker threads with an "exit" job and joins them.
/// A product another thread starts meanwhile (the window closed while the compute thread is still in
/// a forward; a test that returns while its worker computes) replaces that job with its own, the
/// worker goes back to sleep after it, and the join waits forever: the process hangs in `exit`. An
/// `atexit` handler registered after OpenBLAS was loaded runs before its destructor: it waits for the
/// products in flight and keeps any other from starting.
fn quiesce_at_exit() {
    #[cfg(target_os = "linux")]
    {
        extern "C" fn quiesce() {
            // Never released: the process is ending; a thread still computing blocks at its next
            // product until it is ended with the process.
            std::mem::forget(IN_FLIGHT.write().unwrap_or_else(|e| e.into_inner()));
        }
        // SAFETY: registers a handler that takes no arguments and does not return into Rust state
        // that exit has torn down (a static lock only).
        unsafe {
            libc::atexit(quiesce);
        }
    }
}

fn blas() -> Option<&'static Blas> {
    backend_state().blas.as_ref()
}

fn c_str(f: Option<GetStr>) -> Option<String> {
    // SAFETY: both OpenBLAS functions return a pointer to a static NUL-terminated string.
    f.map(|f| unsafe { f() }).filter(|p| !p.is_null()).map(|p| {
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Load one CBLAS library by name; `None` when it is absent or has no `cblas_sgemm`.
fn open(name: &str) -> Option<Blas> {
    // SAFETY: loading a BLAS library runs its initializers, which is what it is for; the symbols
    // have the signatures declared above (CBLAS and OpenBLAS's exported API).
    unsafe {
        let lib = libloading::Library::new(name).ok()?;
        let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
        let corename = lib
            .get::<GetStr>(b"openblas_get_corename\0")
            .ok()
            .map(|f| *f);
        let config = lib.get::<GetStr>(b"openblas_get_config\0").ok().map(|f| *f);
        let config = c_str(config).unwrap_or_default();
        // Only a build whose thread count can be switched safely ([`serial_safe`]) runs products
        // from several threads at once (elsewhere the attention's blocks take candle's gemm).
        let threads = match (
            lib.get::<SetThreads>(b"openblas_set_num_threads\0"),
            lib.get::<GetThreads>(b"openblas_get_num_threads\0"),
        ) {
            (Ok(set), Ok(get)) if serial_safe(&config) => Some((*set, *get)),
            _ => None,
        };
        let version = match config.is_empty() {
            false => config
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            true => name.to_string(),
        };
        Some(Blas {
            sgemm,
            version,
            config,
            name: name.to_string(),
            core: c_str(corename),
            replaced: None,
            threads,
            _lib: lib,
        })
    }
}

/// Re-initialize OpenBLAS's kernel table with `OPENBLAS_CORETYPE = core` (DYNAMIC_ARCH builds, as
/// Debian's: `gotoblas_dynamic_init` reads the variable, `gotoblas_dynamic_quit` clears the table;
/// buffers and threads do not depend on the kernel). Returns the kernel now in use, `None` when the
/// library cannot be re-initialized. Called only from the backend's one-time initialization, before
/// any product, and the variable is removed again afterwards (see [`init`] on why this is sound).
fn reinit_core(b: &mut Blas, core: &str) -> Option<String> {
    // SAFETY: the symbols are OpenBLAS's own, with no arguments; nothing else calls into the library
    // while the backend is being chosen (it is reachable only through the `OnceLock` being filled).
    unsafe {
        let quit = *b._lib.get::<Hook>(b"gotoblas_dynamic_quit\0").ok()?;
        let init = *b._lib.get::<Hook>(b"gotoblas_dynamic_init\0").ok()?;
        let corename = b
            ._lib
            .get::<GetStr>(b"openblas_get_corename\0")
            .ok()
            .map(|f| *f);
        std::env::set_var("OPENBLAS_CORETYPE", core);
        quit();
        init();
        std::env::remove_var("OPENBLAS_CORETYPE");
        b.core = c_str(corename);
    }
    b.core.clone()
}

/// How a candidate is run when timed: OpenBLAS with a given kernel, or candle's matmul.
enum Trial<'a> {
    Blas(&'a str),
    Candle,
}

/// Seconds of one projection-shaped product `(128, 576) @ (576, 1536)` (SmolLM2's gate/up at
/// N = 128, 0.23 GFLOP) for each candidate: the fastest of several rounds that take the candidates in
/// turn, after one warm-up each (thread start-up), so that a busy machine slows all of them alike and
/// one preemption does not decide; more rounds when the two best are close. OpenBLAS's kernel is
/// switched between trials ([`reinit_core`]); on return it is the one of the last `Trial::Blas`.
fn time_trials(b: &mut Blas, trials: &[Trial]) -> Vec<f64> {
    // Six rounds; up to eighteen while the two best are within 20% of each other (a busy machine).
    const ROUNDS: usize = 6;
    const MAX_ROUNDS: usize = 18;
    let (m, k, n) = (128, 576, 1536);
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let w: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let dev = candle_core::Device::Cpu;
    let tensors = (
        Tensor::from_slice(&x, (m, k), &dev),
        Tensor::from_slice(&w, (k, n), &dev),
    );
    let mut best = vec![f64::INFINITY; trials.len()];
    for round in 0..=MAX_ROUNDS {
        if round > ROUNDS && !close_call(&best) {
            break;
        }
        for (i, trial) in trials.iter().enumerate() {
            if let Trial::Blas(core) = trial {
                let switch = !core.is_empty() && b.core.as_deref() != Some(core);
                if switch && reinit_core(b, core).is_none() {
                    best[i] = f64::NAN;
                    continue;
                }
            }
            let t = std::time::Instant::now();
            let ok = match (trial, &tensors) {
                (Trial::Blas(_), _) => {
                    std::hint::black_box(gemm(b, &x, false, &w, false, m, n, k));
                    true
                }
                (Trial::Candle, (Ok(xt), Ok(wt))) => std::hint::black_box(xt.matmul(wt)).is_ok(),
                _ => false,
            };
            let dt = t.elapsed().as_secs_f64();
            if !ok {
                best[i] = f64::NAN;
            } else if round > 0 {
                best[i] = best[i].min(dt);
            }
        }
    }
    best
}

/// Whether the two fastest times so far are within 20% of each other.
fn close_call(times: &[f64]) -> bool {
    let mut t: Vec<f64> = times.iter().copied().filter(|t| t.is_finite()).collect();
    t.sort_by(f64::total_cmp);
    t.len() >= 2 && t[1] < t[0] * 1.2
}

fn describe(b: &Blas) -> String {
    match (&b.core, &b.replaced) {
        (Some(c), Some(r)) => format!(
            "{}, core {c} (forced: {r} was chosen by the library)",
            b.version
        ),
        (Some(c), None) => format!("{}, core {c}", b.version),
        _ => b.version.clone(),
    }
}

/// What the backend choice settled on, in a form that can be stored (the cache, a tune state) and
/// applied again without timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// candle's own gemm.
    Candle,
    /// The BLAS library with the kernel it chose itself.
    Library,
    /// The BLAS library re-initialized on this `OPENBLAS_CORETYPE` kernel.
    Forced(String),
}

impl Choice {
    /// "candle", "library", "forced:SKYLAKEX".
    pub fn to_token(&self) -> String {
        match self {
            Choice::Candle => "candle".into(),
            Choice::Library => "library".into(),
            Choice::Forced(c) => format!("forced:{c}"),
        }
    }

    /// The inverse of [`Choice::to_token`]; `None` for anything else (a corrupt cache).
    pub fn from_token(s: &str) -> Option<Choice> {
        match s {
            "candle" => Some(Choice::Candle),
            "library" => Some(Choice::Library),
            _ => s
                .strip_prefix("forced:")
                .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
                .map(|c| Choice::Forced(c.to_string())),
        }
    }
}

/// A measured candidate leaves the default only when it is faster by more than this fraction: two
/// processes timing candidates within noise of each other would otherwise choose differently, and
/// their products differ at rounding level (a resumed tuning run would not end where an
/// uninterrupted one does).
pub const SWITCH_MARGIN: f64 = 0.15;

/// Index of the candidate to use, given each one's best time in seconds: `default` unless another
/// is faster than it by more than `margin` (a fraction of the default's time; then the fastest), or
/// the default's measurement failed (then the fastest that did not). `None` when nothing was
/// measured.
pub fn decide(seconds: &[f64], default: usize, margin: f64) -> Option<usize> {
    let best = fastest(seconds)?;
    match seconds.get(default) {
        Some(&d) if d.is_finite() && d > 0.0 => Some(if seconds[best] < d * (1.0 - margin) {
            best
        } else {
            default
        }),
        _ => Some(best),
    }
}

/// Where the choice in use came from, for `inspect` and `bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No BLAS library, or `PREFIXSCOPE_BLAS=off`: nothing to choose.
    Fixed,
    /// Timed in this process; stored at the path when there is a cache folder.
    Measured(Option<std::path::PathBuf>),
    /// Read from the per-machine cache at this path.
    Cache(std::path::PathBuf),
    /// The one recorded in the tune state being resumed.
    Recorded,
}

/// The cached decision for one machine and library (one JSON file in the cache folder).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheEntry {
    /// Everything the decision depends on ([`cache_key`]); a file whose key differs is ignored.
    pub key: String,
    /// [`Choice::to_token`].
    pub choice: String,
    /// The backend's one-line description when it was measured.
    pub description: String,
}

/// A cache file larger than this is not one of ours: refused before it is read.
const CACHE_MAX_BYTES: u64 = 64 << 10;

/// The key of a cached decision: one `name=value` line per part (the CPU's identity, the library's
/// file, version and kernel, the environment that changes the candidates, our version). Newlines in
/// a value are replaced, so that no part can pose as another.
pub fn cache_key(parts: &[(&str, String)]) -> String {
    parts
        .iter()
        .map(|(k, v)| format!("{k}={}\n", v.replace(['\n', '\r'], " ")))
        .collect()
}

/// The cache file of `key` in `dir`: `matmul-<FNV-1a 64 of the key>.json`, so that the decisions
/// for other settings (another library named by `PREFIXSCOPE_BLAS`, a simulated kernel) have files
/// of their own and never evict this one.
pub fn cache_file(dir: &std::path::Path, key: &str) -> std::path::PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    dir.join(format!("matmul-{h:016x}.json"))
}

/// The entry in `bytes` if it is a well-formed entry for `key` with a known choice; `None` for
/// anything else (corrupt, truncated, another key), which is then measured again.
pub fn parse_entry(bytes: &[u8], key: &str) -> Option<CacheEntry> {
    let e: CacheEntry = serde_json::from_slice(bytes).ok()?;
    (e.key == key && Choice::from_token(&e.choice).is_some()).then_some(e)
}

/// The cached entry for `key` at `path`, `None` when it is absent, too large, unreadable or not
/// for this key.
pub fn read_cache(path: &std::path::Path, key: &str) -> Option<CacheEntry> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > CACHE_MAX_BYTES {
        return None;
    }
    parse_entry(&std::fs::read(path).ok()?, key)
}

/// Store `entry` at `path` atomically and return the entry now in effect there: the first process
/// to store a decision for a key wins (the file is linked into place only where none is), and a
/// process that measured at the same time adopts that one, so that concurrent first runs agree. A
/// file there that is not a valid entry for the key (corrupt, stale) is replaced. Failures to write
/// are not errors (the decision is only not cached): `entry` is returned.
pub fn write_cache(path: &std::path::Path, entry: &CacheEntry) -> CacheEntry {
    let Some(dir) = path.parent() else {
        return entry.clone();
    };
    let Ok(text) = serde_json::to_vec_pretty(entry) else {
        return entry.clone();
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&tmp, &text));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return entry.clone();
    }
    let effective = match std::fs::hard_link(&tmp, path) {
        Ok(()) => entry.clone(),
        Err(_) => match read_cache(path, &entry.key) {
            Some(other) => other,
            None => {
                // Corrupt or stale (or no hard links here): replace it.
                let _ = std::fs::rename(&tmp, path);
                entry.clone()
            }
        },
    };
    let _ = std::fs::remove_file(&tmp);
    effective
}

/// The cache folder: `PREFIXSCOPE_CACHE`, `$XDG_CACHE_HOME/prefixscope` or `~/.cache/prefixscope`
/// (where the model downloads go too).
fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    nonempty("PREFIXSCOPE_CACHE")
        .map(PathBuf::from)
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("prefixscope")))
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache/prefixscope")))
}

/// The CPU's identity beyond [`Cpu::describe`]: the brand string and stepping (`cpuid`), and the
/// threads available (the timings depend on them).
fn cpu_identity(cpu: &Cpu) -> String {
    #[allow(unused_mut)]
    let mut id = cpu.describe();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let stepping = __cpuid(1).eax & 0xf;
        let mut brand = Vec::new();
        if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
            for leaf in 0x8000_0002u32..=0x8000_0004 {
                let r = __cpuid(leaf);
                for reg in [r.eax, r.ebx, r.ecx, r.edx] {
                    brand.extend_from_slice(&reg.to_le_bytes());
                }
            }
        }
        let brand = String::from_utf8_lossy(&brand);
        id = format!(
            "{id}, stepping {stepping}, {}",
            brand.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{id}, {threads} threads")
}

/// The library's file as the loader resolved it, with its size and modification time (an upgrade
/// changes them), where the platform says.
fn library_identity(b: &Blas) -> String {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: dladdr only reads the loader's tables; `info` is written by it when it returns
        // non-zero, and `dli_fname` is then a NUL-terminated path owned by the loader.
        let path = unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            (libc::dladdr(b.sgemm as *const libc::c_void, &mut info) != 0
                && !info.dli_fname.is_null())
            .then(|| {
                std::ffi::CStr::from_ptr(info.dli_fname)
                    .to_string_lossy()
                    .into_owned()
            })
        };
        if let Some(p) = path {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            return format!("{p}, {} bytes, mtime {mtime}", meta.map_or(0, |m| m.len()));
        }
    }
    b.name.clone()
}

/// A preference recorded before the backend is chosen (the tune state of a resumed run).
static PREFERRED: OnceLock<String> = OnceLock::new();

/// [`init`], preferring the backend recorded as `token` ([`token`] of an earlier process) when this
/// machine can run it: a resumed tuning run then computes with the backend it started with. The
/// preference has no effect once the backend is chosen.
pub fn init_preferring(token: Option<&str>) {
    if let Some(t) = token {
        let _ = PREFERRED.set(t.to_string());
    }
    backend_state();
}

fn candle_only(why: String, source: Source) -> Backend {
    Backend {
        blas: None,
        description: format!("candle gemm{why}"),
        source,
    }
}

fn with_blas(b: Blas, source: Source) -> Backend {
    Backend {
        description: describe(&b),
        blas: Some(b),
        source,
    }
}

/// Apply a stored choice to a freshly loaded library without timing; `None` when it cannot be (a
/// kernel the library does not have).
fn apply(mut b: Blas, choice: &Choice, description: String, source: Source) -> Option<Backend> {
    match choice {
        Choice::Candle => {
            // Never unloaded (see `choose_backend`).
            std::mem::forget(b);
            Some(Backend {
                blas: None,
                description,
                source,
            })
        }
        Choice::Library => Some(with_blas(b, source)),
        Choice::Forced(core) => {
            let chosen = b.core.clone();
            let now = reinit_core(&mut b, core)?;
            if !now.eq_ignore_ascii_case(core) {
                // The library fell back to another kernel: restore its own.
                if let Some(c) = &chosen {
                    reinit_core(&mut b, c);
                }
                std::mem::forget(b);
                return None;
            }
            b.replaced = chosen;
            Some(with_blas(b, source))
        }
    }
}

fn choose_backend() -> Backend {
    let wanted = std::env::var("PREFIXSCOPE_BLAS").ok();
    if wanted.as_deref() == Some("off") {
        return candle_only(" (PREFIXSCOPE_BLAS=off)".into(), Source::Fixed);
    }
    let preferred = PREFERRED.get().map(String::as_str);
    if preferred == Some(CANDLE_TOKEN) {
        return candle_only(String::new(), Source::Recorded);
    }
    let explicit = wanted.is_some();
    let names: Vec<String> = match &wanted {
        Some(p) => vec![p.clone()],
        None => vec![
            "libopenblas.so.0".into(),
            "libopenblas.so".into(),
            "libopenblas.dylib".into(),
        ],
    };
    let Some(mut b) = names.iter().find_map(|n| open(n)) else {
        return candle_only(String::new(), Source::Fixed);
    };
    let cpu = Cpu::detect();
    let user_core = std::env::var("OPENBLAS_CORETYPE").ok();
    // A diagnostic: start the library on the kernel named here, as if it had chosen it, to see the
    // forced path on a CPU the library knows (tests/blas_choice.rs).
    let simulate = std::env::var("PREFIXSCOPE_BLAS_SIMULATE_CORE").ok();
    if let (Some(c), None) = (&simulate, &user_core) {
        reinit_core(&mut b, c);
    }
    let chosen = b.core.clone();
    // The run being resumed used this library and kernel: take it again without timing.
    if let Some(p) = preferred {
        let core = p.strip_prefix(&format!("{} core ", b.version));
        let choice = match core {
            Some(c) if Some(c) == chosen.as_deref() => Some(Choice::Library),
            Some(c) if user_core.is_none() => Some(Choice::Forced(c.to_string())),
            _ => None,
        };
        if let Some(choice) = choice {
            // `apply` consumes the library; it is opened again below when the choice fails.
            if let Some(done) = apply(b, &choice, String::new(), Source::Recorded) {
                return done;
            }
            let Some(again) = names.iter().find_map(|n| open(n)) else {
                return candle_only(String::new(), Source::Fixed);
            };
            b = again;
            if let (Some(c), None) = (&simulate, &user_core) {
                reinit_core(&mut b, c);
            }
        }
    }
    let forced = match (&chosen, &user_core) {
        (Some(c), None) => core_to_force(&cpu, c),
        _ => None,
    };
    let key = cache_key(&[
        ("cache", "1".into()),
        ("prefixscope", env!("CARGO_PKG_VERSION").into()),
        ("cpu", cpu_identity(&cpu)),
        ("library", library_identity(&b)),
        ("config", b.config.clone()),
        ("kernel", chosen.clone().unwrap_or_default()),
        ("PREFIXSCOPE_BLAS", wanted.clone().unwrap_or_default()),
        ("OPENBLAS_CORETYPE", user_core.clone().unwrap_or_default()),
        (
            "PREFIXSCOPE_BLAS_SIMULATE_CORE",
            simulate.unwrap_or_default(),
        ),
    ]);
    let path = cache_dir().map(|d| cache_file(&d, &key));
    let remeasure = std::env::var_os("PREFIXSCOPE_BLAS_REMEASURE").is_some_and(|v| v != "0");
    let cached = path
        .as_ref()
        .filter(|_| !remeasure)
        .and_then(|p| read_cache(p, &key));
    if let (Some(e), Some(p)) = (cached, &path) {
        if let Some(choice) = Choice::from_token(&e.choice) {
            // A kernel that cannot be applied any more is measured again below.
            match apply(b, &choice, e.description, Source::Cache(p.clone())) {
                Some(done) => return done,
                None => match names.iter().find_map(|n| open(n)) {
                    Some(again) => b = again,
                    None => return candle_only(String::new(), Source::Fixed),
                },
            }
        }
    }
    // Candidates: the library's own kernel, then (when it is narrower than the CPU allows) the
    // forced one; candle's gemm is timed last. A library the user named is timed too: it is kept
    // only if it beats candle's gemm.
    let mut trials = vec![];
    let mut choices = vec![];
    if let Some(c) = &chosen {
        trials.push(Trial::Blas(c.as_str()));
        choices.push(Choice::Library);
    }
    if let Some(f) = forced {
        trials.push(Trial::Blas(f));
        choices.push(Choice::Forced(f.to_string()));
    }
    if trials.is_empty() {
        // A CBLAS that does not name its kernel: it is timed as it is.
        trials.push(Trial::Blas(""));
        choices.push(Choice::Library);
    }
    trials.push(Trial::Candle);
    choices.push(Choice::Candle);
    let all = time_trials(&mut b, &trials);
    let candle_t = all[all.len() - 1];
    let times = &all[..all.len() - 1];
    let ms = |t: f64| format!("{:.2} ms", t * 1e3);
    // The default: the kernel the CPU's extensions call for (the forced one where there is one).
    let default = if forced.is_some() { 1 } else { 0 };
    let pick = decide(&all, default, SWITCH_MARGIN).map_or(Choice::Candle, |i| choices[i].clone());
    tracing::info!(
        "matmul candidates on {}: library kernel {:?} {}, forced {:?} {}, candle {}",
        cpu.describe(),
        chosen,
        ms(times[0]),
        forced,
        times.get(1).map_or("-".into(), |&t| ms(t)),
        ms(candle_t)
    );
    // The library is on the kernel of the last BLAS trial: put it on the library's own when that
    // is what was picked, so that `apply` starts from the library's choice.
    if let (Some(_), Some(c)) = (forced, &chosen) {
        reinit_core(&mut b, c);
    }
    let description = match &pick {
        Choice::Candle => format!(
            "candle gemm ({} measured slower: {} against {}{})",
            b.version,
            ms(times.iter().copied().fold(f64::INFINITY, f64::min)),
            ms(candle_t),
            if explicit { ", PREFIXSCOPE_BLAS" } else { "" }
        ),
        // Filled in by `apply` from the library's state.
        _ => String::new(),
    };
    let entry = CacheEntry {
        key: key.clone(),
        choice: pick.to_token(),
        description,
    };
    // Another process that measured at the same time may have stored its decision first: use that.
    let entry = match &path {
        Some(p) => write_cache(p, &entry),
        None => entry,
    };
    let choice = Choice::from_token(&entry.choice).unwrap_or(Choice::Candle);
    let source = Source::Measured(path.clone());
    let description = entry.description.clone();
    match apply(b, &choice, description, source.clone()) {
        Some(done) => done,
        None => candle_only(
            " (the chosen OpenBLAS kernel failed to start)".into(),
            source,
        ),
    }
}

/// The token [`token`] gives for candle's gemm.
const CANDLE_TOKEN: &str = "candle gemm";

/// The backend in use as a token a later process can prefer ([`init_preferring`]): "candle gemm",
/// or "<library version> core <kernel>" ("OpenBLAS 0.3.21 core SkylakeX").
pub fn token() -> String {
    match blas() {
        None => CANDLE_TOKEN.into(),
        Some(b) => format!(
            "{} core {}",
            b.version,
            b.core.as_deref().unwrap_or("unnamed")
        ),
    }
}

/// Where the backend choice came from, for `inspect` and `bench`: "measured now (cached in PATH)",
/// "from the cache PATH", "as recorded in the run being resumed", "fixed (nothing to choose)".
pub fn source() -> String {
    match &backend_state().source {
        Source::Fixed => "fixed (no BLAS library in use to choose)".into(),
        Source::Measured(Some(p)) => format!("measured now (cached in {})", p.display()),
        Source::Measured(None) => "measured now (no cache folder)".into(),
        Source::Cache(p) => format!("from the cache {}", p.display()),
        Source::Recorded => "as recorded in the run being resumed".into(),
    }
}

/// Whether the choice came from the per-machine cache.
pub fn from_cache() -> bool {
    matches!(backend_state().source, Source::Cache(_))
}

/// Whether the products run on a BLAS library (it was found and measured faster than candle's gemm).
pub fn active() -> bool {
    blas().is_some()
}

/// Which backend the projections use and its kernel, for `inspect`/`bench`: "OpenBLAS 0.3.21, core
/// SkylakeX (forced: Prescott was chosen by the library)", or "candle gemm".
pub fn backend() -> String {
    backend_state().description.clone()
}

/// `x (m, k) @ w (k, n)` for contiguous f32 CPU matrices, through OpenBLAS when it is there.
pub fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match product(x, w, false)? {
        Some(t) => Ok(t),
        None => x.matmul(w),
    }
}

/// `x (m, k) @ w^T` for an `(n, k)` weight (a dequantized GGUF/HF layout), through OpenBLAS's
/// transposed-B `sgemm` when it is there, so the weight is never copied into `(k, n)`.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match product(&x.contiguous()?, &w.contiguous()?, true)? {
        Some(t) => Ok(t),
        None => x.matmul(&w.t()?),
    }
}

/// `x @ w` (or `x @ w^T` with `w_transposed`, `w` then `(n, k)`) through `sgemm`, or `None` when
/// OpenBLAS is absent or the operands are not plain contiguous f32 CPU matrices large enough.
fn product(x: &Tensor, w: &Tensor, w_transposed: bool) -> candle_core::Result<Option<Tensor>> {
    let usable = x.rank() == 2
        && w.rank() == 2
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.is_contiguous()
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op();
    let Some(b) = blas().filter(|_| usable) else {
        return Ok(None);
    };
    let (m, k) = x.dims2()?;
    let (k2, n) = match (w_transposed, w.dims2()?) {
        (false, (k2, n)) => (k2, n),
        (true, (n, k2)) => (k2, n),
    };
    if k != k2 || m * n * k < BLAS_MIN_MACS || [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws) else {
        return Ok(None);
    };
    let xa = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k];
    let wa = &ws.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + k * n];
    let out = gemm(b, xa, false, wa, w_transposed, m, n, k);
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// `op(a) @ op(b)` as a new `(m, n)` row-major buffer, where `op(a)` is `(m, k)` (`a` stored `(k, m)`
/// when `ta`) and `op(b)` is `(k, n)` (`b` stored `(n, k)` when `tb`).
#[allow(clippy::too_many_arguments)]
fn gemm(
    blas: &Blas,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "gemm operands too short"
    );
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    if m * n * k == 0 {
        return vec![0f32; m * n];
    }
    // Not zeroed first: with beta = 0 sgemm writes every element (a 6 MB memset per MLP product at
    // N = 512 otherwise).
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: a and b hold at least m*k and k*n floats (checked above) in row-major order with the
    // leading dimensions given; sgemm reads them and writes all m*n floats of `out` (beta = 0, k > 0),
    // after which they are initialized.
    unsafe {
        blas.call(
            (ta, tb),
            (m, n, k),
            1.0,
            (a.as_ptr(), lda),
            (b.as_ptr(), ldb),
            (out.as_mut_ptr(), n),
        );
        out.set_len(m * n);
    }
    out
}

/// OpenBLAS's `sgemm` for products that the caller itself runs on several threads at once (the
/// attention's query blocks, in parallel on rayon). While any such scope is open OpenBLAS runs each
/// product on the calling thread (`openblas_set_num_threads(1)`): two callers would otherwise both
/// hand their products to OpenBLAS's one set of worker threads, and those workers would compete with
/// rayon's for the same cores. The last scope to close restores the library's thread count; a
/// projection another thread runs meanwhile is single-threaded, not wrong.
///
/// Worth it because OpenBLAS's AVX-512 kernels are about twice as fast as candle's gemm (AVX2 only)
/// on the attention's `(64, P + T) x 64` shapes (`prefixscope bench --attention-blocks`).
pub struct SerialGemm {
    blas: &'static Blas,
    set: SetThreads,
}

/// Open [`SerialGemm`] scopes and the thread count to restore when the last one closes.
static SERIAL: std::sync::Mutex<(usize, i32)> = std::sync::Mutex::new((0, 0));

/// Whether an OpenBLAS of this `openblas_get_config` line may have its thread count switched between
/// one and all by [`SerialGemm`]: a pthreads build without affinity (Debian's: `NO_AFFINITY`), where
/// `openblas_set_num_threads` only sets the count the next product reads. An OpenMP build
/// (`USE_OPENMP`) takes each caller's own OpenMP thread count instead, and a build with affinity pins
/// the calling thread to core 0 when the count goes back up.
pub fn serial_safe(config: &str) -> bool {
    let has = |w: &str| config.split_whitespace().any(|x| x == w);
    has("NO_AFFINITY") && !has("USE_OPENMP")
}

/// A [`SerialGemm`] scope, or `None` when the backend is not OpenBLAS (candle's gemm then), or an
/// OpenBLAS that cannot be kept to the calling thread ([`serial_safe`]).
pub fn serial_gemm() -> Option<SerialGemm> {
    let blas = blas()?;
    let (set, get) = blas.threads?;
    let mut open = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if open.0 == 0 {
        // SAFETY: OpenBLAS's own thread-count functions, no pointers involved.
        unsafe {
            open.1 = get();
            set(1);
        }
    }
    open.0 += 1;
    Some(SerialGemm { blas, set })
}

impl Drop for SerialGemm {
    fn drop(&mut self) {
        let mut open = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if open.0 == 0 && open.1 > 0 {
            // SAFETY: as in `serial_gemm`.
            unsafe { (self.set)(open.1) };
        }
    }
}

impl SerialGemm {
    /// `c = alpha * a @ op(b)` on the calling thread, for row-major operands with row strides: `a` is
    /// `m` rows of stride `lda` (the first `k` read), `op(b)` is `(k, n)`: `b` stored `k` rows of
    /// stride `ldb` (first `n` read), or with `b_transposed` `n` rows of stride `ldb` (first `k` read);
    /// `c` gets `m` rows of stride `ldc`, the first `n` of each written.
    ///
    /// Panics when a slice is shorter than its rows and strides need, or a stride is shorter than its
    /// row: the caller's sizes, never a file's.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        b_transposed: bool,
        c: &mut [f32],
        ldc: usize,
    ) {
        let (b_rows, b_cols) = if b_transposed { (n, k) } else { (k, n) };
        let fits = |len: usize, rows: usize, ld: usize, cols: usize| {
            ld >= cols.max(1) && (rows == 0 || len >= (rows - 1) * ld + cols)
        };
        assert!(
            fits(a.len(), m, lda, k)
                && fits(b.len(), b_rows, ldb, b_cols)
                && fits(c.len(), m, ldc, n)
                && [m, n, k, lda, ldb, ldc]
                    .iter()
                    .all(|&d| d <= i32::MAX as usize),
            "SerialGemm::product: operands do not match ({m}, {n}, {k})"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
            return;
        }
        // SAFETY: every operand holds its rows at its stride (asserted above); sgemm reads `a` and
        // `b` and writes the first `n` floats of `m` rows of `c`.
        unsafe {
            self.blas.call(
                (false, b_transposed),
                (m, n, k),
                alpha,
                (a.as_ptr(), lda),
                (b.as_ptr(), ldb),
                (c.as_mut_ptr(), ldc),
            );
        }
    }
}

/// Differentiable `x (m, k) @ w` for training: `w` is `(k, n)`, or `(n, k)` read transposed when
/// `w_transposed` (an `nn.Linear` weight). Through OpenBLAS forward and backward when it is there
/// (candle's matmul and its backward otherwise): the projections are half of a toy training step.
pub fn matmul_train(x: &Tensor, w: &Tensor, w_transposed: bool) -> candle_core::Result<Tensor> {
    let fits = x.rank() == 2
        && w.rank() == 2
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.device().is_cpu()
        && [x.dims(), w.dims()]
            .concat()
            .iter()
            .all(|&d| d <= i32::MAX as usize);
    if blas().is_none() || !fits {
        return match w_transposed {
            true => x.matmul(&w.t()?),
            false => x.matmul(w),
        };
    }
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Gemm {
            ta: false,
            tb: w_transposed,
        },
    )
}

/// `op(a) @ op(b)` as a candle op (see [`gemm`]); only built when OpenBLAS is loaded.
struct Gemm {
    ta: bool,
    tb: bool,
}

impl candle_core::CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "openblas-sgemm"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let Some(blas) = blas() else {
            candle_core::bail!("{}: OpenBLAS is not loaded", self.name());
        };
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: expected contiguous operands", self.name());
        };
        let ((r1, c1), (r2, c2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let (m, k) = if self.ta { (c1, r1) } else { (r1, c1) };
        let (k2, n) = if self.tb { (c2, r2) } else { (r2, c2) };
        if k != k2 {
            candle_core::bail!(
                "{}: inner dimensions differ, {:?} against {:?}",
                self.name(),
                l1.shape(),
                l2.shape()
            );
        }
        let a = &s1.as_slice::<f32>()?[a0..a1];
        let b = &s2.as_slice::<f32>()?[b0..b1];
        let out = gemm(blas, a, self.ta, b, self.tb, m, n, k);
        Ok((candle_core::CpuStorage::F32(out), (m, n).into()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let op = |ta, tb| Gemm { ta, tb };
        // Only the forms `matmul_train` builds: C = A B (B stored (k, n)) or C = A B^T (B (n, k)).
        if self.ta {
            candle_core::bail!("{}: no backward for a transposed left operand", self.name());
        }
        // A frozen operand (the model's weights under prefix or LoRA training) gets no gradient:
        // computing it would be a third of the backward products, thrown away.
        let da = match (a.track_op(), self.tb) {
            (false, _) => None,
            // dA = G B.
            (true, true) => Some(g.apply_op2_no_bwd(b, &op(false, false))?),
            // dA = G B^T.
            (true, false) => Some(g.apply_op2_no_bwd(b, &op(false, true))?),
        };
        let db = match (b.track_op(), self.tb) {
            (false, _) => None,
            // dB = G^T A.
            (true, true) => Some(g.apply_op2_no_bwd(a, &op(true, false))?),
            // dB = A^T G.
            (true, false) => Some(a.apply_op2_no_bwd(&g, &op(true, false))?),
        };
        Ok((da, db))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{flat, max_abs_diff};
    use super::*;

    fn cpu(avx: bool, avx2_fma: bool, avx512: bool) -> Cpu {
        Cpu {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 207,
            avx,
            avx2_fma,
            avx512,
        }
    }

    /// The case of the issue: an AVX-512 Xeon newer than Debian's OpenBLAS 0.3.21, which falls back
    /// to Prescott; and the cases where the library's own kernel must be left alone.
    #[test]
    fn a_fallback_kernel_is_replaced_by_the_widest_the_cpu_has() {
        let xeon = cpu(true, true, true);
        assert_eq!(core_to_force(&xeon, "Prescott"), Some("SKYLAKEX"));
        assert_eq!(core_to_force(&xeon, "Haswell"), Some("SKYLAKEX"));
        // The library knows this CPU: its AVX-512 kernel (Zen 4 gets Cooperlake) is kept.
        assert_eq!(core_to_force(&xeon, "Cooperlake"), None);
        assert_eq!(core_to_force(&xeon, "SkylakeX"), None);
        // AVX2 machine: Haswell over a fallback, never an AVX-512 kernel it cannot run.
        let avx2 = cpu(true, true, false);
        assert_eq!(core_to_force(&avx2, "Prescott"), Some("HASWELL"));
        assert_eq!(core_to_force(&avx2, "Nehalem"), Some("HASWELL"));
        assert_eq!(core_to_force(&avx2, "Zen"), None);
        assert_eq!(core_to_force(&avx2, "SkylakeX"), None);
        assert_eq!(
            core_to_force(&cpu(true, false, false), "Core2"),
            Some("SANDYBRIDGE")
        );
        // No AVX: nothing to force, whatever the library says.
        assert_eq!(core_to_force(&cpu(false, false, false), "Prescott"), None);
        // An unknown name counts as the narrowest, so a CPU with AVX-512 gets SkylakeX.
        assert_eq!(core_to_force(&xeon, "SomeFutureCore"), Some("SKYLAKEX"));
    }

    #[test]
    fn the_fastest_measured_candidate_wins_and_a_failed_one_never_does() {
        // The issue's figures: Prescott 0.341 s, SkylakeX 0.219 s, candle 0.353 s.
        assert_eq!(fastest(&[0.341, 0.219, 0.353]), Some(1));
        // The library's kernel slower than candle's gemm: candle (last) wins.
        assert_eq!(fastest(&[0.40, 0.353]), Some(1));
        assert_eq!(fastest(&[0.2, 0.3]), Some(0));
        // Ties go to the earlier candidate.
        assert_eq!(fastest(&[0.3, 0.3, 0.3]), Some(0));
        assert_eq!(fastest(&[f64::NAN, 0.5, 0.0, 0.6]), Some(1));
        assert_eq!(fastest(&[f64::INFINITY]), None);
        assert_eq!(fastest(&[]), None);
        // More rounds while the two best are within 20%.
        assert!(close_call(&[1.0, 1.1, 5.0]));
        assert!(close_call(&[5.0, 1.15, 1.0]));
        assert!(!close_call(&[1.0, 1.3]));
        assert!(!close_call(&[1.0, f64::NAN]));
        assert!(!close_call(&[1.0]));
    }

    /// The default candidate is left only for a clear win: two processes whose timings differ by
    /// noise must make the same choice (the flaky resumed-tuning test of issue 16).
    #[test]
    fn the_default_is_kept_unless_another_is_clearly_faster() {
        // Within the margin either way: the default stays.
        assert_eq!(decide(&[1.0, 0.9, 1.2], 0, 0.15), Some(0));
        assert_eq!(decide(&[1.0, 0.86, 1.2], 0, 0.15), Some(0));
        assert_eq!(decide(&[0.9, 1.0, 1.2], 1, 0.15), Some(1));
        // Past the margin: the fastest, not merely the first that beats it.
        assert_eq!(decide(&[1.0, 0.8, 0.5], 0, 0.15), Some(2));
        assert_eq!(decide(&[0.7, 1.0, 0.9], 1, 0.15), Some(0));
        // Margin 0 is the plain fastest (ties to the default).
        assert_eq!(decide(&[1.0, 0.99], 0, 0.0), Some(1));
        assert_eq!(decide(&[1.0, 1.0], 1, 0.0), Some(1));
        // A failed default: the fastest that worked; nothing measured: none.
        assert_eq!(decide(&[f64::NAN, 0.9, 0.5], 0, 0.15), Some(2));
        assert_eq!(decide(&[0.4, f64::INFINITY], 1, 0.15), Some(0));
        assert_eq!(decide(&[0.4], 3, 0.15), Some(0));
        assert_eq!(decide(&[f64::NAN, 0.0], 0, 0.15), None);
        assert_eq!(decide(&[], 0, 0.15), None);
    }

    #[test]
    fn choices_round_trip_through_their_tokens_and_nothing_else_parses() {
        for c in [
            Choice::Candle,
            Choice::Library,
            Choice::Forced("SKYLAKEX".into()),
        ] {
            assert_eq!(Choice::from_token(&c.to_token()), Some(c));
        }
        for bad in [
            "",
            "gpu",
            "forced:",
            "forced:../x",
            "forced:SKY LAKE",
            "Candle",
        ] {
            assert_eq!(Choice::from_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_cache_key_separates_every_part_and_names_its_file() {
        let k = |parts: &[(&str, &str)]| {
            cache_key(
                &parts
                    .iter()
                    .map(|(a, b)| (*a, b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let base = k(&[("cpu", "A"), ("library", "L")]);
        assert_eq!(base, "cpu=A\nlibrary=L\n");
        assert_ne!(base, k(&[("cpu", "B"), ("library", "L")]));
        assert_ne!(base, k(&[("cpu", "A"), ("library", "L2")]));
        // A value cannot pose as another part.
        assert_ne!(k(&[("cpu", "A\nlibrary=L")]), base);
        let dir = std::path::Path::new("/c");
        let f = cache_file(dir, &base);
        assert_eq!(f, cache_file(dir, &base));
        assert_ne!(f, cache_file(dir, &k(&[("cpu", "B"), ("library", "L")])));
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("matmul-") && name.ends_with(".json") && name.len() == 28);
    }

    fn entry(key: &str, choice: &str) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            choice: choice.into(),
            description: format!("{choice} backend"),
        }
    }

    /// A corrupt, truncated, oversized or mismatched cache file is ignored (measured again and
    /// replaced), never a panic; a valid one is read back as written.
    #[test]
    fn the_cache_ignores_what_is_not_an_entry_for_this_key() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/matmul-x.json");
        assert_eq!(read_cache(&path, "k"), None);
        let e = entry("k", "forced:HASWELL");
        assert_eq!(write_cache(&path, &e), e);
        assert_eq!(read_cache(&path, "k"), Some(e.clone()));
        // Another key (a new library, CPU or version) does not match.
        assert_eq!(read_cache(&path, "k2"), None);
        let text = std::fs::read(&path).unwrap();
        for bad in [
            &b""[..],
            &b"\xff\xfe garbage"[..],
            &text[..text.len() / 2],
            br#"{"key":"k","choice":"gpu","description":""}"#,
            br#"{"key":"k","choice":"candle"}"#,
            br#"{"key":"k","choice":"candle","description":7}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(
                read_cache(&path, "k"),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            // Storing a fresh measurement replaces it.
            let fresh = entry("k", "candle");
            assert_eq!(write_cache(&path, &fresh), fresh);
            assert_eq!(read_cache(&path, "k"), Some(fresh));
        }
        // Larger than any entry: refused before it is read.
        let mut big = serde_json::to_vec(&entry("k", "library")).unwrap();
        big.resize(CACHE_MAX_BYTES as usize + 1, b' ');
        std::fs::write(&path, &big).unwrap();
        assert_eq!(read_cache(&path, "k"), None);
        // A folder where the file should be: no entry, and storing fails quietly.
        let dir_path = d.path().join("adir");
        std::fs::create_dir_all(dir_path.join("x")).unwrap();
        assert_eq!(read_cache(&dir_path, "k"), None);
        // A parent that is a file: nothing can be written, the entry is still returned.
        let file_parent = d.path().join("afile");
        std::fs::write(&file_parent, b"x").unwrap();
        let e = entry("k", "library");
        assert_eq!(write_cache(&file_parent.join("m.json"), &e), e);
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("matmul-x.json")]);
    }

    /// Two processes measuring at once store different decisions: the first stored wins and the
    /// second adopts it, so both compute alike.
    #[test]
    fn the_first_decision_stored_for_a_key_wins() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.json");
        let first = entry("k", "library");
        let second = entry("k", "candle");
        assert_eq!(write_cache(&path, &first), first);
        assert_eq!(write_cache(&path, &second), first);
        assert_eq!(read_cache(&path, "k"), Some(first));
        // A stale entry (another key) is replaced by the new measurement.
        let other = entry("k2", "forced:SKYLAKEX");
        assert_eq!(write_cache(&path, &other), other);
        assert_eq!(read_cache(&path, "k2"), Some(other));
        assert_eq!(read_cache(&path, "k"), None);
    }

    /// Whatever this machine has, the backend says what it is in one line, and the products agree
    /// with candle's (the measured choice changes speed, never numbers).
    #[test]
    fn the_backend_is_described() {
        let d = backend();
        assert!(
            d.starts_with("candle gemm") || d.contains("core ") || d.contains("BLAS"),
            "{d}"
        );
        assert_eq!(active(), !d.starts_with("candle gemm"));
    }

    #[test]
    fn blas_matmul_equals_a_naive_f64_product() {
        let dev = candle_core::Device::Cpu;
        // Large enough for OpenBLAS.
        let (m, k, n) = (130, 177, 301);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        // The expected product from a naive f64 triple loop, not from candle: without OpenBLAS
        // `matmul` is candle's own, and candle against candle would prove nothing.
        let (xs, ws) = (flat(&x), flat(&w));
        let mut naive = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                naive[i * n + j] = (0..k)
                    .map(|t| xs[i * k + t] as f64 * ws[t * n + j] as f64)
                    .sum();
            }
        }
        let want = Tensor::from_vec(
            naive.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
            (m, n),
            &dev,
        )
        .unwrap();
        // f32 sums of 177 products of unit normals: rounding well below 1e-3.
        let d = max_abs_diff(&matmul(&x, &w).unwrap(), &want);
        assert!(d < 1e-3, "{} vs the f64 product: {d}", backend());
        // The transposed-weight form.
        let wt = w.t().unwrap().contiguous().unwrap();
        let d = max_abs_diff(&matmul_t(&x, &wt).unwrap(), &want);
        assert!(d < 1e-3, "{} transposed vs the f64 product: {d}", backend());
        // A narrowed (non-contiguous) view falls back to candle and is still right.
        let wv = w.narrow(1, 3, 7).unwrap();
        assert_eq!(
            flat(&matmul(&x, &wv).unwrap()),
            flat(&x.matmul(&wv).unwrap())
        );
    }

    #[test]
    fn only_a_pthreads_openblas_without_affinity_is_switched_to_one_thread() {
        assert!(serial_safe(
            "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Cooperlake MAX_THREADS=64"
        ));
        assert!(!serial_safe(
            "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY USE_OPENMP Haswell MAX_THREADS=64"
        ));
        // Built with affinity: switching the count back up would pin the caller to core 0.
        assert!(!serial_safe(
            "OpenBLAS 0.3.26 DYNAMIC_ARCH Haswell MAX_THREADS=64"
        ));
        // Another CBLAS says nothing, and is never switched.
        assert!(!serial_safe(""));
    }

    /// The attention's serial products: strided operands (a block of a wider map, values read at
    /// their own stride), the scale in `alpha`, both forms of `b`, against a naive f64 product; and
    /// OpenBLAS's thread count restored once the last of two overlapping scopes closes.
    #[test]
    fn serial_products_equal_a_naive_product_and_restore_the_thread_count() {
        let Some(outer) = serial_gemm() else {
            // No OpenBLAS here (CI installs it): the attention then runs on candle's gemm.
            assert!(!active() || blas().is_some_and(|b| b.threads.is_none()));
            return;
        };
        let (_, get) = blas().unwrap().threads.unwrap();
        // SAFETY: OpenBLAS's own thread-count getter.
        let inside = unsafe { get() };
        assert_eq!(inside, 1, "a scope runs OpenBLAS on the calling thread");
        let (m, n, k) = (7usize, 5usize, 3usize);
        let (lda, ldb, ldc) = (k + 2, n + 1, n + 3);
        let a: Vec<f32> = (0..m * lda)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let b: Vec<f32> = (0..k * ldb)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2)
            .collect();
        let want = |i: usize, j: usize| -> f64 {
            0.5 * (0..k)
                .map(|t| a[i * lda + t] as f64 * b[t * ldb + j] as f64)
                .sum::<f64>()
        };
        let check = |c: &[f32], what: &str| {
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j];
                    if j < n {
                        assert!((got as f64 - want(i, j)).abs() < 1e-5, "{what} ({i}, {j})");
                    } else {
                        // Past the `n` columns of a row: untouched.
                        assert_eq!(got, -9.0, "{what} wrote past its columns");
                    }
                }
            }
        };
        let mut c = vec![-9f32; m * ldc];
        outer.product((m, n, k), 0.5, &a, lda, &b, ldb, false, &mut c, ldc);
        check(&c, "b as (k, n)");
        // The same `b` stored `(n, k)`.
        let ldbt = k + 4;
        let mut bt = vec![0f32; n * ldbt];
        for t in 0..k {
            for j in 0..n {
                bt[j * ldbt + t] = b[t * ldb + j];
            }
        }
        let inner = serial_gemm().unwrap();
        let mut c = vec![-9f32; m * ldc];
        inner.product((m, n, k), 0.5, &a, lda, &bt, ldbt, true, &mut c, ldc);
        check(&c, "b as (n, k) transposed");
        drop(outer);
        // SAFETY: as above.
        assert_eq!(unsafe { get() }, 1, "the other scope is still open");
        drop(inner);
        // Another test's attention may hold a scope of its own now: check under the scopes' lock,
        // and only when none is open.
        let open = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 == 0 {
            // SAFETY: as above.
            let after = unsafe { get() };
            assert_eq!(after, open.1, "the thread count was not restored");
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cores > 1 && std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
                assert!(after > 1, "the thread count was not restored: {after}");
            }
        }
    }

    #[test]
    fn training_matmul_matches_candle_in_value_and_gradients() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::randn(0f32, 1.0, (37, 19), &dev).unwrap();
        let w = candle_core::Var::randn(0f32, 1.0, (19, 23), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (37, 23), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor, w: &Tensor| {
            let y = f(x.as_tensor(), w);
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        // x @ w, with w (k, n).
        let (y1, dx1) = run(&|x, w| matmul_train(x, w, false).unwrap(), w.as_tensor());
        let (y2, dx2) = run(&|x, w| x.matmul(w).unwrap(), w.as_tensor());
        assert!(max_abs_diff(&y1, &y2) < 1e-4 && max_abs_diff(&dx1, &dx2) < 1e-4);
        // Weight gradients of both forms: x @ w and x @ (w^T)^T.
        let dw = |f: &dyn Fn(&Tensor) -> Tensor| {
            let y = f(w.as_tensor());
            (&y * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(&w)
                .unwrap()
                .clone()
        };
        let want = dw(&|w| x.as_tensor().matmul(w).unwrap());
        let got = dw(&|w| matmul_train(x.as_tensor(), w, false).unwrap());
        assert!(max_abs_diff(&got, &want) < 1e-4, "{}", backend());
        let got_t = dw(&|w| {
            let wt = w.t().unwrap().contiguous().unwrap();
            matmul_train(x.as_tensor(), &wt, true).unwrap()
        });
        assert!(
            max_abs_diff(&got_t, &want) < 1e-4,
            "{} (transposed)",
            backend()
        );
    }
}
