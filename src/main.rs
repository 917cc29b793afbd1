//! `prefixscope` with no subcommand opens the GUI; with one, it runs the CLI.

mod cli;

use clap::Parser;

fn main() {
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
