//! The command line: one file per subcommand, each a thin layer over the library.

pub mod attention;
pub mod figures;
pub mod inspect;
pub mod render;

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
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a checkpoint's architecture, sizes, dtype, tokenizer and parameter count.
    Inspect(inspect::Args),
    /// Capture attention with and without a prefix and write it as .npz or .json.
    Attention(attention::Args),
    /// Draw one head's views (raw, renormalized, pretrained, difference, scaled) as SVG/PNG, or export their data.
    Render(render::Args),
    /// Regenerate the paper's figures (SVG, PNG, JSON and captions.md) from the shipped models.
    Figures(figures::Args),
}

/// Run a subcommand; errors come back as the library's error for `main` to print on one line.
pub fn run(cmd: Command) -> prefixscope::Result<()> {
    match cmd {
        Command::Inspect(a) => inspect::run(a),
        Command::Attention(a) => attention::run(a),
        Command::Render(a) => render::run(a),
        Command::Figures(a) => figures::run(a),
    }
}
