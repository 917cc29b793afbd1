//! `prefixscope` with no subcommand opens the GUI; with one, it runs the CLI.

mod cli;

use clap::Parser;

fn main() {
    // candle asks for its thread count on every matmul, and without this variable it finds it by
    // reading /proc/cpuinfo each time (7% of a toy slider update). Rayon's default, made explicit.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    match args.command {
        Some(cmd) => {
            if let Err(e) = cli::run(cmd) {
                eprintln!("error: {}", e.one_line());
                std::process::exit(2);
            }
        }
        None => {
            let opened = args.gui.into_options().and_then(prefixscope::app::run);
            if let Err(e) = opened {
                eprintln!("error: {}", e.one_line());
                std::process::exit(2);
            }
        }
    }
}
