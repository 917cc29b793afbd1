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
//!    is kept ([`fastest`]); so the backend is never slower than candle's gemm.
//!
//! Without any BLAS library everything runs on candle's matmul, with the same results up to rounding.
//! `PREFIXSCOPE_BLAS=off` forces candle's; a user's own `OPENBLAS_CORETYPE` is respected;
//! `PREFIXSCOPE_BLAS_SIMULATE_CORE=Prescott` starts OpenBLAS on that kernel as if the library had
//! chosen it (to see the forced path on a CPU the library knows). The
//! decision functions ([`core_level`], [`best_core`], [`core_to_force`], [`fastest`]) are pure, so that
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
    /// The kernel in use (`openblas_get_corename`), when the library says.
    core: Option<String>,
    /// The kernel the library chose itself, when we forced another.
    replaced: Option<String>,
}

/// The backend in use and how it was chosen.
struct Backend {
    blas: Option<Blas>,
    /// One line for `inspect` and `bench`.
    description: String,
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
    BACKEND.get_or_init(choose_backend)
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
        let version = c_str(config)
            .map(|c| c.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| name.to_string());
        Some(Blas {
            sgemm,
            version,
            core: c_str(corename),
            replaced: None,
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

fn choose_backend() -> Backend {
    let candle_only = |why: String| Backend {
        blas: None,
        description: format!("candle gemm{why}"),
    };
    let wanted = std::env::var("PREFIXSCOPE_BLAS").ok();
    if wanted.as_deref() == Some("off") {
        return candle_only(" (PREFIXSCOPE_BLAS=off)".into());
    }
    let explicit = wanted.is_some();
    let names: Vec<String> = match wanted {
        Some(p) => vec![p],
        None => vec![
            "libopenblas.so.0".into(),
            "libopenblas.so".into(),
            "libopenblas.dylib".into(),
        ],
    };
    let Some(mut b) = names.iter().find_map(|n| open(n)) else {
        return candle_only(String::new());
    };
    let cpu = Cpu::detect();
    let user_core = std::env::var_os("OPENBLAS_CORETYPE").is_some();
    // Candidates: the library's own kernel, then (when it is narrower than the CPU allows) the
    // forced one; candle's gemm is timed last. A library the user named is timed too: it is kept
    // only if it beats candle's gemm.
    // A diagnostic: start the library on the kernel named here, as if it had chosen it, to see the
    // forced path on a CPU the library knows (tests/blas_choice.rs).
    if let (Some(c), false) = (
        std::env::var("PREFIXSCOPE_BLAS_SIMULATE_CORE").ok(),
        user_core,
    ) {
        reinit_core(&mut b, &c);
    }
    let chosen = b.core.clone();
    let forced = match (&chosen, user_core) {
        (Some(c), false) => core_to_force(&cpu, c),
        _ => None,
    };
    let mut trials = vec![];
    if let Some(c) = &chosen {
        trials.push(Trial::Blas(c.as_str()));
    }
    if let Some(f) = forced {
        trials.push(Trial::Blas(f));
    }
    if trials.is_empty() {
        // A CBLAS that does not name its kernel: it is timed as it is.
        trials.push(Trial::Blas(""));
    }
    trials.push(Trial::Candle);
    let all = time_trials(&mut b, &trials);
    let candle_t = all[all.len() - 1];
    let times = &all[..all.len() - 1];
    let ms = |t: f64| format!("{:.2} ms", t * 1e3);
    let pick = fastest(&all);
    tracing::info!(
        "matmul candidates on {}: library kernel {:?} {}, forced {:?} {}, candle {}",
        cpu.describe(),
        chosen,
        ms(times[0]),
        forced,
        times.get(1).map_or("-".into(), |&t| ms(t)),
        ms(candle_t)
    );
    match pick {
        // The library's own kernel: undo the forced one (timed last) that measured slower.
        Some(0) => {
            if let (Some(_), Some(c)) = (forced, &chosen) {
                reinit_core(&mut b, c);
            }
            let description = describe(&b);
            Backend {
                blas: Some(b),
                description,
            }
        }
        Some(1) if forced.is_some() => {
            b.replaced = chosen;
            let description = describe(&b);
            Backend {
                blas: Some(b),
                description,
            }
        }
        _ => {
            let why = format!(
                " ({} measured slower: {} against {}{})",
                b.version,
                ms(times.iter().copied().fold(f64::INFINITY, f64::min)),
                ms(candle_t),
                if explicit { ", PREFIXSCOPE_BLAS" } else { "" }
            );
            // Never unloaded: OpenBLAS's threads are running, and unloading a library under its own
            // threads is not something its destructors are tested for.
            std::mem::forget(b);
            candle_only(why)
        }
    }
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
    let (trans_a, lda) = if ta { (TRANS, m) } else { (NO_TRANS, k) };
    let (trans_b, ldb) = if tb { (TRANS, k) } else { (NO_TRANS, n) };
    let mut out = vec![0f32; m * n];
    // SAFETY: a and b hold at least m*k and k*n floats (checked above) in row-major order with the
    // leading dimensions given; sgemm reads them and writes the m*n floats of `out`.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            trans_a,
            trans_b,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            lda as i32,
            b.as_ptr(),
            ldb as i32,
            0.0,
            out.as_mut_ptr(),
            n as i32,
        );
    }
    out
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
        // The figures: Prescott 0.341 s, SkylakeX 0.219 s, candle 0.353 s.
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
