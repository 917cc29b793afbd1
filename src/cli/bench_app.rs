//! `prefixscope bench --app N`: the window's long-prompt path without a window. It drives the app's
//! own compute thread ([`Worker`]: load, then the requests the window sends) for an `N`-token prompt
//! behind a soft prompt (the editor's default kind, P = 1), draws the views' four maps (their
//! textures) and reads the overview and the plots' figures, then switches head and layer as a user
//! would; it prints the time to each filled answer, the resident memory after each step and the
//! peak (`VmHWM`), with an estimate of where the memory goes.

use super::bench::{peak_rss_bytes, reset_peak_rss, synthetic_ids};
use prefixscope::app::views::{ViewData, ViewsPanel};
use prefixscope::app::worker::{ComputeRequest, Computed, Reply, Worker};
use prefixscope::model::ModelInfo;
use prefixscope::prefix::{Prefix, PrefixKind};
use std::path::Path;
use std::time::{Duration, Instant};

/// Resident memory now (`VmRSS`), in bytes.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of this process so far (user + system, every thread), in seconds: on a shared machine
/// the wall times depend on the load (the compute thread runs at nice 10), this does much less.
fn cpu_s() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |x: libc::timeval| x.tv_sec as f64 + x.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn mb(x: Option<u64>) -> String {
    x.map_or("n/a".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
}

/// Wait for the worker's answer to request `gen` that has `full` (the quick one comes first).
fn wait_for(w: &Worker, gen: u64, full: bool) -> prefixscope::Result<Box<Computed>> {
    let limit = Instant::now() + Duration::from_secs(3600);
    while Instant::now() < limit {
        for r in w.poll() {
            match r {
                Reply::Computed(c) if c.gen == gen && (c.full || !full) => return Ok(c),
                Reply::ComputeFailed { gen: g, message } if g == gen => {
                    return Err(prefixscope::Error::input(
                        "bench --app",
                        "an answer",
                        message,
                    ))
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(prefixscope::Error::Internal("no answer within an hour"))
}

/// Where the memory of the long-prompt path goes, by size (not measured: computed from the shapes).
fn breakdown(info: &ModelInfo, t: usize, p: usize) {
    let f = 4.0 / 1e6;
    let (l, h, kv, hd, d) = (
        info.n_layers as f64,
        info.n_heads as f64,
        info.n_kv_heads as f64,
        info.head_dim as f64,
        info.d_model as f64,
    );
    let t = t as f64;
    let n = t - p as f64;
    println!("  estimate by shape (MB):");
    println!(
        "    layer inputs, every layer        {:>8.0}",
        l * t * d * f
    );
    println!(
        "    queries/keys/values, every layer {:>8.0} (prefixed run) + {:.0} (pretrained run)",
        l * (h + 2.0 * kv) * t * hd * f,
        l * (h + 2.0 * kv) * n * hd * f
    );
    println!(
        "    one head's maps (4 kinds)        {:>8.0} (a layer's: {:.0}; every layer's: {:.0})",
        4.0 * n * t * f,
        4.0 * h * n * t * f,
        4.0 * l * h * n * t * f
    );
    println!(
        "    textures of the 4 maps (RGBA)    {:>8.0}",
        4.0 * n * t * f
    );
}

/// Run the app's path at `n` tokens with the model at `path`.
pub fn run(path: &Path, quantized: bool, n: usize) -> prefixscope::Result<()> {
    let windowed = reset_peak_rss();
    let t0 = Instant::now();
    let mut w = Worker::new();
    w.load(path.to_path_buf(), quantized);
    let loaded = loop {
        if let Some(r) = w.poll().into_iter().next() {
            match r {
                Reply::Loaded(m) => break m,
                Reply::LoadFailed { message, .. } => {
                    return Err(prefixscope::Error::input("bench --app", "a model", message))
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let info = loaded.info.clone();
    println!(
        "app path N={n}: {} ({} layers x {} heads), loaded in {:.2} s, resident {}",
        loaded.path.display(),
        info.n_layers,
        info.n_heads,
        t0.elapsed().as_secs_f64(),
        mb(rss_bytes())
    );
    let ids = synthetic_ids(n, info.vocab_size);
    let mut prefix = Prefix::zeros(PrefixKind::SoftPrompt, 1, &info);
    for (i, x) in prefix.values_mut().enumerate() {
        *x = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.1;
    }
    let layer = info.n_layers / 2;
    let req = |gen: u64, view_layer: usize, view_head: usize| ComputeRequest {
        gen,
        model_gen: loaded.model_gen,
        ids: ids.clone(),
        prefix: Some(prefix.clone()),
        view_layer,
        view_head,
    };
    // The first answer: the viewed maps; then the full one: the overview, the plots' figures.
    let t = Instant::now();
    let cpu0 = cpu_s();
    w.compute(req(1, layer, 0));
    let quick = wait_for(&w, 1, false)?;
    let quick_s = t.elapsed().as_secs_f64();
    let quick_cpu = cpu_s() - cpu0;
    let c = if quick.full {
        quick
    } else {
        drop(quick);
        wait_for(&w, 1, true)?
    };
    let first_s = t.elapsed().as_secs_f64();
    let first_cpu = cpu_s() - cpu0;
    let filled = c.overview.iter().flatten().filter(|x| x.is_some()).count();
    let devs = c.summaries.as_ref().map_or(0, |s| s.deviations.len());
    println!(
        "  views of layer {layer} head 0 in {quick_s:.2} s (CPU {quick_cpu:.2} s); overview and \
         plots in {first_s:.2} s (CPU {first_cpu:.2} s) \
         (overview cells filled {filled}/{}, layers in the deviation plot {devs}); \
         maps held {:.0} MB; resident {}",
        info.n_layers * info.n_heads,
        c.map_bytes() as f64 / 1e6,
        mb(rss_bytes())
    );
    // The maps' textures, as the window builds them (one a frame), then a redraw.
    let labels: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let mut panel = ViewsPanel::default();
    panel.layer = layer;
    let ctx = egui::Context::default();
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        // What a window's renderer reports (wgpu's default limit); egui alone assumes 2,048.
        max_texture_side: Some(8192),
        ..Default::default()
    };
    let t = Instant::now();
    let mut deltas = Vec::new();
    for _ in 0..6 {
        let data = ViewData {
            computed: &c,
            labels: &labels,
            stale: None,
        };
        let out = ctx.run_ui(input(), |ui| panel.ui(ui, &data));
        // The images stay alive, as a window holds them until it uploads them.
        deltas.push(out.textures_delta);
    }
    println!(
        "  views drawn with their textures: {:.2} s; resident {}",
        t.elapsed().as_secs_f64(),
        mb(rss_bytes())
    );
    // Nothing here uploads them: cleared, as a window would after uploading.
    for d in &mut deltas {
        d.clear();
    }
    drop(deltas);
    drop(c);
    // Another head of the same layer, then another layer: computed when viewed.
    for (gen, l, h, what) in [
        (2, layer, 1.min(info.n_heads - 1), "another head"),
        (3, info.n_layers - 1, 0, "another layer"),
    ] {
        let t = Instant::now();
        let cpu0 = cpu_s();
        w.compute(req(gen, l, h));
        let quick = wait_for(&w, gen, false)?;
        let quick_s = t.elapsed().as_secs_f64();
        let quick_cpu = cpu_s() - cpu0;
        drop(quick);
        let full = wait_for(&w, gen, true)?;
        println!(
            "  {what} (layer {l} head {h}): views in {quick_s:.2} s (CPU {quick_cpu:.2} s), full \
             answer in {:.2} s (CPU {:.2} s); maps held {:.0} MB; resident {}",
            t.elapsed().as_secs_f64(),
            cpu_s() - cpu0,
            full.map_bytes() as f64 / 1e6,
            mb(rss_bytes())
        );
    }
    println!(
        "  peak resident memory {} ({}), total {:.1} s",
        mb(peak_rss_bytes()),
        if windowed {
            "this run"
        } else {
            "since the process started"
        },
        t0.elapsed().as_secs_f64()
    );
    breakdown(&info, n + 1, 1);
    Ok(())
}
