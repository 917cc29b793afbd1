//! The command line: one file per subcommand, each a thin layer over the library.

pub mod attention;
pub mod gui;
pub mod inspect;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "prefixscope",
    version,
    about = "See what a prefix does to a transformer's attention"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the window (used when no subcommand is given).
    #[command(flatten)]
    pub gui: gui::GuiArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a checkpoint's architecture, sizes, dtype, tokenizer and parameter count.
    Inspect(inspect::Args),
    /// Capture attention with and without a prefix and write it as .npz or .json.
    Attention(attention::Args),
}

/// Run a subcommand; errors come back as the library's error for `main` to print on one line.
pub fn run(cmd: Command) -> prefixscope::Result<()> {
    match cmd {
        Command::Inspect(a) => inspect::run(a),
        Command::Attention(a) => attention::run(a),
    }
}
