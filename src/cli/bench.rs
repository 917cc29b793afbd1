//! `prefixscope bench`: load time, the matmul backend, and the time and peak memory of one forward pass
//! that returns every attention matrix, at several prompt lengths; a long prompt with the maps of four
//! layers only; the slider-update latencies. Medians over repeated runs; numbers, never pass/fail.

use prefixscope::load;
use prefixscope::model::LayerSel;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to time (not read by `--attention-blocks`).
    #[arg(long, required_unless_present = "attention_blocks")]
    pub model: Option<PathBuf>,
    /// Keep GGUF weights quantized in memory (each is dequantized for its product): less memory, same numbers.
    #[arg(long)]
    pub quantized: bool,
    /// Prompt lengths to time (a full forward returning every attention matrix).
    #[arg(long, value_delimiter = ',', default_value = "32,128,512,2048")]
    pub lengths: Vec<usize>,
    /// Timed runs per length (after one warm-up); at most 3 from N = 1,024 on.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Prompt length of the long-prompt case: a forward keeping the maps of four layers only (first,
    /// two inner, last). 0 skips it.
    #[arg(long, default_value_t = 2048)]
    pub four_layer_n: usize,
    /// Only the full forwards and the long-prompt case (no update or redraw latencies).
    #[arg(long)]
    pub forward_only: bool,
    /// Prompt length for the slider-update latencies.
    #[arg(long, default_value_t = 128)]
    pub update_n: usize,
    /// Toy model for the `toy` update latency (default: the bundled 4-layer toy, else the sorter).
    #[arg(long)]
    pub toy: Option<PathBuf>,
    /// Skip `tune_step_s` (one Adam step of a P = 4 soft prompt and key/value prefix at N = 32).
    #[arg(long)]
    pub no_tune: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// After each timed length, one more forward with per-op timing (projections, attention, norms,
    /// MLP activation, RoPE and head copies...), printed to stderr. Same as `PREFIXSCOPE_PROFILE=1`
    /// for any command, but reported here.
    #[arg(long)]
    pub profile: bool,
    /// Instead of the rest: the window's long-prompt path at this prompt length, headless (the app's
    /// compute thread, views, overview and plots), with its times and peak memory (`bench_app`).
    #[arg(long)]
    pub app: Option<usize>,
    /// Instead of the rest: time the blocked causal attention's query-block sizes (16 to 256 rows) on
    /// SmolLM2's shapes (9 heads, 3 key/value heads, head dimension 64) at N = 128, 512 and 2,048, on
    /// the matmul backend's products and on the gemm crate's: what the block size and the kernel
    /// were chosen by. Needs no model.
    #[arg(long)]
    pub attention_blocks: bool,
}

impl Args {
    /// `--model`, which clap requires unless `--attention-blocks` is given.
    fn model(&self) -> prefixscope::Result<&std::path::Path> {
        self.model
            .as_deref()
            .ok_or(prefixscope::Error::Internal("bench: no --model"))
    }
}

/// `--attention-blocks`: the best of several runs per block size, printed one line each.
fn attention_blocks() -> prefixscope::Result<()> {
    use prefixscope::model::attention::{causal_attention_blocks, AttnDims, BlockKernel};
    for t in [128usize, 512, 2048] {
        let d = AttnDims {
            heads: 9,
            kv_heads: 3,
            t,
            p: 0,
            head_dim: 64,
        };
        // Deterministic, bounded values: the kernel's speed does not depend on them.
        let q: Vec<f32> = (0..9 * t * 64)
            .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
            .collect();
        let k: Vec<f32> = (0..3 * t * 64)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        let kernels = [
            (BlockKernel::Backend, prefixscope::model::blas::backend()),
            (BlockKernel::GemmCrate, "gemm crate".to_string()),
        ];
        // Once when the backend is candle's (both rows would time the same kernel).
        let n_kernels = if prefixscope::model::blas::active() {
            2
        } else {
            1
        };
        for (kernel, name) in &kernels[..n_kernels] {
            for b in [16usize, 32, 64, 128, 256] {
                let mut best = f64::INFINITY;
                for _ in 0..if t > 1000 { 3 } else { 10 } {
                    let t0 = Instant::now();
                    std::hint::black_box(causal_attention_blocks(
                        &q, &k, &k, d, 0.125, true, b, *kernel,
                    ));
                    best = best.min(t0.elapsed().as_secs_f64());
                }
                println!("N {t} block {b} {name}: {:.3} ms", best * 1e3);
            }
        }
    }
    Ok(())
}

/// One forward at `n` with per-op timing, printed to stderr as a table (seconds, share, calls).
fn profile_forward(
    model: &dyn prefixscope::model::Transformer,
    ids: &[u32],
) -> prefixscope::Result<()> {
    use prefixscope::model::profile;
    profile::take();
    profile::enable(true);
    let t = Instant::now();
    let out = model.forward(ids, None, &LayerSel::All);
    let total = t.elapsed().as_secs_f64();
    profile::enable(false);
    drop(out?);
    let mut spans = profile::take();
    spans.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("profile N={}: {total:.4} s", ids.len());
    let mut sum = 0.0;
    for (name, secs, calls) in spans {
        sum += secs;
        eprintln!(
            "  {name:<32} {secs:>8.4} s {:>5.1}%  {calls:>5} calls",
            100.0 * secs / total
        );
    }
    eprintln!(
        "  {:<32} {:>8.4} s {:>5.1}%",
        "(outside the spans)",
        total - sum,
        100.0 * (total - sum) / total
    );
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Start a new peak-memory window: Linux resets `VmHWM` to the current resident size when "5" is
/// written to `/proc/self/clear_refs` (since 4.0). False where that is not possible (then
/// [`peak_rss_bytes`] keeps the peak since the process started).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Time of `f` (median of `repeats` after one warm-up) and the peak resident memory while it ran
/// (`None` where the peak cannot be reset per case).
fn timed_with_peak<T>(
    repeats: usize,
    mut f: impl FnMut() -> prefixscope::Result<T>,
) -> prefixscope::Result<(f64, Option<u64>)> {
    let windowed = reset_peak_rss();
    drop(f()?); // warm-up
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let out = f()?;
        times.push(t.elapsed().as_secs_f64());
        drop(out);
    }
    Ok((median(times), peak_rss_bytes().filter(|_| windowed)))
}

/// The best GFLOP/s of a projection-shaped product `(1024, 576) @ (576, 1536)` (SmolLM2's gate/up
/// at N = 1,024) on the backend in use: what the forward's GFLOP/s are measured against.
fn matmul_peak_gflops() -> prefixscope::Result<f64> {
    let dev = candle_core::Device::Cpu;
    let (m, k, n) = (1024, 576, 1536);
    let x = candle_core::Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = candle_core::Tensor::randn(0f32, 1.0, (k, n), &dev)?;
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let t = Instant::now();
        drop(prefixscope::model::blas::matmul(&x, &w)?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Deterministic token ids spread over the vocabulary (no tokenizer needed).
pub fn synthetic_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|k| ((k * 7919 + 13) % vocab) as u32).collect()
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    if let Some(n) = a.app {
        return app_path(&a, n);
    }
    if a.attention_blocks {
        return attention_blocks();
    }
    let t0 = Instant::now();
    let loaded = load::load_with(
        a.model()?,
        &load::LoadControl {
            quantized: a.quantized,
            ..Default::default()
        },
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let model = loaded.model.as_ref();
    let info = model.info().clone();
    let mut forward = serde_json::Map::new();
    let mut flops = serde_json::Map::new();
    let mut peaks = serde_json::Map::new();
    // Matrix work of one pass: 2 flops per weight per token (the embedding table is a lookup,
    // except one row through the tied head), plus QK^T and AV over the causal half.
    let gflop_at = |n: usize| {
        let matmul_params = info.n_params - info.vocab_size * info.d_model;
        let attn =
            4.0 * (info.n_layers * info.n_heads * info.head_dim) as f64 * (n * n) as f64 / 2.0;
        (2.0 * matmul_params as f64 * n as f64 + attn) / 1e9
    };
    let repeats_at = |n: usize| {
        if n >= 1024 {
            a.repeats.clamp(1, 3)
        } else {
            a.repeats.max(1)
        }
    };
    for &n in &a.lengths {
        let n = info.max_positions.map_or(n, |m| n.min(m));
        let ids = synthetic_ids(n, info.vocab_size);
        let (med, peak) =
            timed_with_peak(repeats_at(n), || model.forward(&ids, None, &LayerSel::All))?;
        if a.profile {
            profile_forward(model, &ids)?;
        }
        forward.insert(n.to_string(), med.into());
        flops.insert(n.to_string(), (gflop_at(n) / med).into());
        peaks.insert(n.to_string(), peak.into());
    }
    let four = if a.four_layer_n > 0 {
        let n = info
            .max_positions
            .map_or(a.four_layer_n, |m| a.four_layer_n.min(m));
        let last = info.n_layers - 1;
        let mut layers = vec![0, last / 3, 2 * last / 3, last];
        layers.dedup();
        let ids = synthetic_ids(n, info.vocab_size);
        let sel = LayerSel::Only(layers.clone());
        let (med, peak) = timed_with_peak(repeats_at(n), || model.forward(&ids, None, &sel))?;
        Some(serde_json::json!({
            "n": n,
            "layers": layers,
            "forward_s": med,
            "gflops": gflop_at(n) / med,
            "peak_rss_bytes": peak,
        }))
    } else {
        None
    };
    let figures = ForwardFigures {
        load_s,
        sgemm_gflops: matmul_peak_gflops()?,
        forward,
        flops,
        peaks,
        four,
    };
    if a.forward_only {
        if a.json {
            println!("{}", serde_json::Value::Object(figures.json(&a)?));
        } else {
            figures.print(&a, &info);
        }
        return Ok(());
    }
    let mut update = update_latencies(model, a.repeats.max(1), a.update_n)?;
    // `None` in a build without the window (feature `gui` off): there is no view to lay out.
    #[cfg(feature = "gui")]
    let redraw_s = Some(redraw_latency(&loaded, a.repeats.max(1), a.update_n)?);
    #[cfg(not(feature = "gui"))]
    let redraw_s: Option<f64> = None;
    // Peak memory is the big model's: read it before the toy is loaded (the toy adds a few MB).
    let peak = peak_rss_bytes().unwrap_or(0);
    let mut toy_detail = serde_json::Map::new();
    if let Some(toy_path) = a.toy.clone().or_else(prefixscope::bundled::largest_toy) {
        let toy = load::load(&toy_path)?;
        let cases = update_latencies(toy.model.as_ref(), a.repeats.max(1), a.update_n)?;
        // "Any update": the slowest of the toy's cases.
        let worst = cases
            .values()
            .filter_map(|v| v.as_f64())
            .fold(0.0, f64::max);
        update.insert("toy".into(), worst.into());
        toy_detail.insert("model".into(), toy_path.display().to_string().into());
        toy_detail.extend(cases);
    }
    let tune = if a.no_tune {
        serde_json::Map::new()
    } else {
        tune_steps(std::sync::Arc::from(loaded.model), a.repeats.max(1), 32)?
    };
    if a.json {
        let mut v = figures.json(&a)?;
        v.insert("peak_rss_bytes".into(), peak.into());
        v.insert("update_n".into(), a.update_n.into());
        v.insert("update_s".into(), update.into());
        v.insert("toy_update_s".into(), toy_detail.into());
        v.insert("redraw_s".into(), redraw_s.into());
        v.insert("tune_step_s".into(), tune.into());
        println!("{}", serde_json::Value::Object(v));
    } else {
        figures.print(&a, &info);
        println!(
            "peak memory     {:.1} MB (whole run, before the toy)",
            peak as f64 / 1e6
        );
        for (k, v) in &update {
            println!(
                "update {k:<18} {:.3} ms (median, N={}, P=1)",
                v.as_f64().unwrap_or(0.0) * 1e3,
                a.update_n
            );
        }
        if let Some(m) = toy_detail.get("model").and_then(|v| v.as_str()) {
            println!("toy model       {m}");
        }
        for (k, v) in toy_detail.iter().filter(|(k, _)| *k != "model") {
            println!(
                "  toy {k:<14} {:.3} ms (median)",
                v.as_f64().unwrap_or(0.0) * 1e3
            );
        }
        for (k, v) in &tune {
            println!(
                "tune step {k:<9} {:.3} s (median, N=32, P=4, forward + backward + Adam)",
                v.as_f64().unwrap_or(0.0)
            );
        }
        match redraw_s {
            Some(r) => println!(
                "redraw          {:.3} ms (median, layout and tessellation of the four maps, N={})",
                r * 1e3,
                a.update_n
            ),
            None => println!("redraw          not measured (built without the window)"),
        }
    }
    Ok(())
}

type Map = serde_json::Map<String, serde_json::Value>;

/// The machine's and the forwards' figures: what `--forward-only` prints, and what the whole bench
/// extends with the update, redraw and tuning figures.
struct ForwardFigures {
    load_s: f64,
    /// [`matmul_peak_gflops`].
    sgemm_gflops: f64,
    /// Per N (as a string key): the median full forward in seconds, its GFLOP/s, its peak memory.
    forward: Map,
    flops: Map,
    peaks: Map,
    /// The four-layer case, when it ran.
    four: Option<serde_json::Value>,
}

impl ForwardFigures {
    /// As one JSON object.
    fn json(&self, a: &Args) -> prefixscope::Result<Map> {
        let v = serde_json::json!({
            "model": a.model()?.display().to_string(),
            "threads": std::thread::available_parallelism().map(|x| x.get()).unwrap_or(1),
            "matmul": prefixscope::model::blas::backend(),
            "matmul_choice": prefixscope::model::blas::source(),
            "matmul_from_cache": prefixscope::model::blas::from_cache(),
            "cpu": prefixscope::model::blas::Cpu::detect().describe(),
            "matmul_peak_gflops": self.sgemm_gflops,
            "load_s": self.load_s,
            "full_forward_s": self.forward,
            "gflops": self.flops,
            "forward_peak_rss_bytes": self.peaks,
            "four_layers": self.four,
        });
        // `json!` of an object literal is always an object.
        Ok(match v {
            serde_json::Value::Object(m) => m,
            _ => Map::new(),
        })
    }

    /// As text lines.
    fn print(&self, a: &Args, info: &prefixscope::model::ModelInfo) {
        let ForwardFigures {
            load_s,
            sgemm_gflops,
            forward,
            flops,
            peaks,
            four,
        } = self;
        let mb = |v: Option<&serde_json::Value>| match v.and_then(|x| x.as_f64()) {
            Some(b) => format!("{:.0} MB", b / 1e6),
            None => "peak n/a".into(),
        };
        println!(
            "model           {}",
            a.model
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        );
        println!("load            {load_s:.3} s");
        println!("matmul          {}", prefixscope::model::blas::backend());
        println!("matmul from     {}", prefixscope::model::blas::source());
        println!(
            "cpu             {}",
            prefixscope::model::blas::Cpu::detect().describe()
        );
        println!(
            "matmul peak     {sgemm_gflops:.1} GFLOP/s ((1024, 576) @ (576, 1536), best of 8)"
        );
        let mut ns: Vec<&String> = forward.keys().collect();
        ns.sort_by_key(|n| n.parse::<usize>().unwrap_or(usize::MAX));
        for n in ns {
            let t = &forward[n];
            let g = flops.get(n).and_then(|x| x.as_f64()).unwrap_or(0.0);
            println!(
            "forward N={n:<5} {:.4} s (median), {g:.1} GFLOP/s, peak {}, all {} x {} attention matrices",
            t.as_f64().unwrap_or(0.0),
            mb(peaks.get(n)),
            info.n_layers,
            info.n_heads
        );
        }
        if let Some(f) = four {
            println!(
                "forward N={:<5} {:.4} s (median), {:.1} GFLOP/s, peak {}, maps of layers {} only",
                f["n"],
                f["forward_s"].as_f64().unwrap_or(0.0),
                f["gflops"].as_f64().unwrap_or(0.0),
                mb(f.get("peak_rss_bytes")),
                f["layers"]
            );
        }
    }
}

/// CPU time of one redraw of the views (raw, renormalized, pretrained, difference) at `n` tokens,
/// on real data: the egui frame that lays out the four heatmaps with their labels and colour bars,
/// plus tessellation into triangles. This is what the UI thread spends per frame on the maps; the
/// GPU's rasterization is not included (there is no window here).
#[cfg(feature = "gui")]
fn redraw_latency(loaded: &load::Loaded, repeats: usize, n: usize) -> prefixscope::Result<f64> {
    use prefixscope::app::views::{ViewData, ViewsPanel};
    use prefixscope::app::worker::{compute_once, ComputeRequest};
    use prefixscope::prefix::{Prefix, PrefixKind};
    let model = loaded.model.as_ref();
    let info = model.info().clone();
    let n = info.max_positions.map_or(n, |m| n.min(m.saturating_sub(1)));
    let ids = synthetic_ids(n, info.vocab_size);
    let mut prefix = Prefix::zeros(PrefixKind::SoftPrompt, 1, &info);
    for (i, x) in prefix.values_mut().enumerate() {
        *x = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.1;
    }
    let layer = info.n_layers / 2;
    let req = ComputeRequest {
        gen: 1,
        model_gen: 1,
        ids: ids.clone(),
        prefix: Some(prefix),
        view_layer: layer,
        view_head: 0,
    };
    let computed = compute_once(model, &req, &[0, layer])?;
    let labels = loaded.tokenizer.labels(&ids);
    let data = ViewData {
        computed: &computed,
        labels: &labels,
        stale: None,
    };
    let mut panel = ViewsPanel::default();
    panel.layer = layer;
    // The window size the screenshot checks use.
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        ..Default::default()
    };
    let ctx = egui::Context::default();
    let mut frame = || {
        let t = Instant::now();
        let mut out = ctx.run_ui(input(), |ui| panel.ui(ui, &data));
        let shapes = std::mem::take(&mut out.shapes);
        let prims = ctx.tessellate(shapes, out.pixels_per_point);
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(prims);
        // No GPU here to upload the font atlas to.
        out.drop_without_applying_deltas();
        dt
    };
    // The first frames build the font atlas and caches; a real session has them already.
    for _ in 0..3 {
        frame();
    }
    let times: Vec<f64> = (0..repeats.max(3) * 4).map(|_| frame()).collect();
    Ok(median(times))
}

/// Latency of one slider change through the incremental evaluator (P = 1, one coordinate changed),
/// viewed at the layers the GUI would show.
fn update_latencies(
    model: &dyn prefixscope::model::Transformer,
    repeats: usize,
    n: usize,
) -> prefixscope::Result<serde_json::Map<String, serde_json::Value>> {
    use prefixscope::incremental::{Edit, Evaluator};
    use prefixscope::prefix::{Prefix, PrefixKind};
    let info = model.info().clone();
    let n = info.max_positions.map_or(n, |m| n.min(m.saturating_sub(1)));
    let ids = synthetic_ids(n, info.vocab_size);
    let last = info.n_layers - 1;
    let mid = info.n_layers / 2;
    let cases: Vec<(String, PrefixKind, usize, usize)> =
        if info.arch == prefixscope::model::Arch::Llama {
            vec![
                ("soft_L0".into(), PrefixKind::SoftPrompt, 0, 0),
                (format!("soft_L{mid}"), PrefixKind::SoftPrompt, 0, mid),
                (format!("soft_L{last}"), PrefixKind::SoftPrompt, 0, last),
                (format!("paper_prefix_L{mid}"), PrefixKind::Hidden, mid, mid),
                ("kv_prefix".into(), PrefixKind::KeyValue, mid, mid),
            ]
        } else {
            vec![
                ("soft_L0".into(), PrefixKind::SoftPrompt, 0, 0),
                (format!("paper_prefix_L{last}"), PrefixKind::Hidden, 0, last),
                ("kv_prefix".into(), PrefixKind::KeyValue, 0, last),
            ]
        };
    let mut out = serde_json::Map::new();
    for (name, kind, edit_layer, view) in cases {
        let mut prefix = Prefix::zeros(kind, 1, &info);
        for (i, x) in prefix.values_mut().enumerate() {
            *x = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.1;
        }
        let mut ev = Evaluator::new(&ids);
        ev.update(model, Some(&prefix), Edit::All, &[view])?;
        let edit = if kind == PrefixKind::SoftPrompt {
            Edit::SoftPrompt
        } else {
            Edit::Layer(edit_layer)
        };
        let per_layer = match &prefix {
            Prefix::SoftPrompt(a) => a.data.len(),
            Prefix::Hidden(a) => a.data.len() / info.n_layers,
            Prefix::KeyValue { keys, .. } => keys.data.len() / info.n_layers,
        };
        let mut times = Vec::new();
        for r in 0..repeats.max(3) * 4 {
            // One slider step on one coordinate of the edited layer.
            if let Some(x) = prefix
                .values_mut()
                .nth(edit_layer * per_layer + r % per_layer)
            {
                *x += 0.01;
            }
            let t = Instant::now();
            ev.update(model, Some(&prefix), edit, &[view])?;
            times.push(t.elapsed().as_secs_f64());
        }
        out.insert(name, median(times).into());
    }
    Ok(out)
}

/// Seconds of one tuning step (forward with the prefix as a `Var`, backward, Adam) for a soft prompt
/// and a key/value prefix of P = 4, on `n` synthetic prompt tokens and one target token: the median
/// over `repeats` steps after one warm-up step.
fn tune_steps(
    model: std::sync::Arc<dyn prefixscope::model::Transformer>,
    repeats: usize,
    n: usize,
) -> prefixscope::Result<serde_json::Map<String, serde_json::Value>> {
    use prefixscope::prefix::PrefixKind;
    use prefixscope::tune::{initial_prefix, Example, TuneConfig, Tuner};
    let info = model.info().clone();
    let n = info.max_positions.map_or(n, |m| n.min(m.saturating_sub(5)));
    let ids = synthetic_ids(n + 1, info.vocab_size);
    let ex = Example {
        prompt: ids[..n].to_vec(),
        target: ids[n..].to_vec(),
    };
    let mut out = serde_json::Map::new();
    for (name, kind) in [
        ("soft", PrefixKind::SoftPrompt),
        ("kv", PrefixKind::KeyValue),
    ] {
        let cfg = TuneConfig {
            kind,
            length: 4,
            lr: 0.01,
            seed: 0,
        };
        let start = initial_prefix(model.as_ref(), &cfg)?;
        let mut t = Tuner::new(model.clone(), vec![ex.clone()], cfg, &start)?;
        t.step()?; // warm-up
        let times: Vec<f64> = (0..repeats)
            .map(|_| {
                let t0 = Instant::now();
                t.step().map(|_| t0.elapsed().as_secs_f64())
            })
            .collect::<prefixscope::Result<_>>()?;
        out.insert(name.into(), median(times).into());
    }
    Ok(out)
}

#[cfg(feature = "gui")]
fn app_path(a: &Args, n: usize) -> prefixscope::Result<()> {
    super::bench_app::run(a.model()?, a.quantized, n)
}

#[cfg(not(feature = "gui"))]
fn app_path(_: &Args, _: usize) -> prefixscope::Result<()> {
    Err(prefixscope::Error::unsupported(
        "bench --app",
        "feature",
        "built without the window",
        "a build with the gui feature",
    ))
}
