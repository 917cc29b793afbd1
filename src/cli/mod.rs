//! The command line: one file per subcommand, each a thin layer over the library.

pub mod attention;
pub mod bench;
#[cfg(feature = "gui")]
pub mod bench_app;
pub mod capacity;
pub mod construct;
pub mod eval;
pub mod figures;
pub mod gui;
pub mod inspect;
pub mod peft;
pub mod render;
pub mod train;
pub mod tune;

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
    /// Time loading and full forward passes (numbers for the README and issue notes).
    Bench(bench::Args),
    /// Train the paper's toy models: pretrain, finetune, prefix, lora.
    Train(train::Args),
    /// Tune a prefix (soft, kv or paper) on a frozen model so that it continues a prompt with a target.
    Tune(tune::Args),
    /// Accuracy of a toy model, alone or with a prefix, LoRA or fine-tune (the authors' measure).
    Eval(eval::Args),
    /// Build one of the paper's constructions and the virtual token that makes it write a target.
    Construct(construct::Args),
    /// Count distinct outputs: one hard token against many random virtual tokens.
    Capacity(capacity::Args),
    /// Draw one head's views (raw, renormalized, pretrained, difference, scaled) as SVG/PNG/PDF, or export their data.
    Render(render::Args),
    /// Regenerate the paper's figures (SVG, PNG, PDF, JSON and captions.md) from the shipped models.
    Figures(figures::Args),
}

/// Run a subcommand; errors come back as the library's error for `main` to print on one line.
pub fn run(cmd: Command) -> prefixscope::Result<()> {
    match cmd {
        Command::Inspect(a) => inspect::run(a),
        Command::Attention(a) => attention::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Construct(a) => construct::run(a),
        Command::Capacity(a) => capacity::run(a),
        Command::Render(a) => render::run(a),
        Command::Figures(a) => figures::run(a),
    }
}
