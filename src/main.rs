//! `prefixscope` with no subcommand opens the GUI; with one, it runs the CLI.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    // SAFETY (both `set_var`s): nothing has started a thread yet.
    // candle asks for its thread count on every matmul, and without this variable it finds it by
    // reading /proc/cpuinfo each time (7% of a toy slider update). Rayon's default, made explicit.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    // candle's element-wise and quantized ops have their own pool, whose threads spin after each op
    // (25,000 turns) before they sleep; on a 2-core machine that spinning takes the cores from
    // OpenBLAS's threads (which do the f32 projections) and from the UI: SmolLM2's forward at
    // N = 128 took 0.26-0.27 s with it and 0.22-0.23 s with the threads sleeping at once. The pool
    // keeps its size (quantized mode needs it: 3.2 s against 6 s on one thread). Training keeps
    // candle's default.
    let training = matches!(
        args.command,
        Some(cli::Command::Train(_)) | Some(cli::Command::Eval(_))
    );
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() && !training {
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1") };
    }
    // OpenBLAS's worker threads spin (yielding) for 2^28 cycles, about 0.1 s, after each product
    // before they sleep; through a layer's attention and element-wise passes that spinning takes a
    // third of the cores from rayon's threads. 2^22 cycles (about 1.6 ms) keeps them awake between
    // the products of a layer and of a slider update and lets them sleep through a long attention:
    // SmolLM2's forward at N = 512 took 0.81-0.83 s instead of 0.88 s, the updates the same. Read
    // when OpenBLAS loads (below).
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_none() {
        unsafe { std::env::set_var("OPENBLAS_THREAD_TIMEOUT", "22") };
    }
    // Training keeps up to 1 GB of freed memory at the heap's top, everything else 256 MB: the app
    // at long prompts gives back what a closed view freed.
    keep_freed_memory(if training { 1 << 30 } else { 256 << 20 });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // The matmul backend is chosen (OpenBLAS loaded, its kernel possibly re-initialized through
    // `OPENBLAS_CORETYPE`, candidates timed) while this is still the only thread: see `blas::init`.
    // A resumed tuning run takes the backend it started with (recorded in its state file), so that it
    // ends where an uninterrupted run does, not merely within rounding of it.
    let recorded = match &args.command {
        Some(cli::Command::Tune(t)) if t.resume => {
            prefixscope::tune::state::recorded_matmul(&t.out)
        }
        _ => None,
    };
    prefixscope::model::blas::init_preferring(recorded.as_deref());
    match args.command {
        Some(cmd) => {
            // The loaders already turn a reader's panic into an error naming the file; this catches
            // any other (a bug of ours) so that the command still ends with one line and status 2.
            let guarded = prefixscope::load::guard::catch(
                std::path::Path::new("prefixscope"),
                "command",
                || cli::run(cmd),
            );
            if let Err(e) = guarded {
                eprintln!("error: {}", e.one_line());
                std::process::exit(2);
            }
        }
        None => {
            let opened = args.gui.open();
            if let Err(e) = opened {
                eprintln!("error: {}", e.one_line());
                std::process::exit(2);
            }
        }
    }
}

/// A forward and a training step allocate and free the same few-megabyte buffers (activations, the
/// MLP's intermediate, a layer's attention maps) again and again. glibc hands such blocks back to the
/// kernel (mmap for those above its threshold, trimming the heap top), so each use paid for fresh
/// zeroed pages: a quarter of a 4-layer toy step, and 0.07-0.11 s of SmolLM2's 0.88 s forward at
/// N = 512 (820,000 page faults against 260,000 with this). Blocks under 32 MB now come from the heap
/// and are reused; the heap's top is given back past `trim` bytes, and the loader gives back what its
/// temporaries left (`load::load_with`). A user's own `MALLOC_*` settings are left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory(trim: usize) {
    let set = |var: &str| std::env::var_os(var).is_some();
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        if !set("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
        if !set("MALLOC_TRIM_THRESHOLD_") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim.min(i32::MAX as usize) as i32);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory(_trim: usize) {}
