//! `prefixscope train {pretrain,finetune,prefix,lora}`: the paper's toy trainings (see `src/train`).

use prefixscope::model::gpt::GptConfig;
use prefixscope::train::data::{Task, VOCAB};
use prefixscope::train::{self, LoopOpts, Outcome, Schedule};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub kind: Kind,
}

#[derive(clap::Subcommand, Debug)]
pub enum Kind {
    /// Pretrain a toy GPT from scratch.
    Pretrain {
        #[arg(long, default_value_t = 1)]
        layers: usize,
        #[arg(long, default_value_t = 1)]
        heads: usize,
        #[arg(long, default_value_t = 96)]
        width: usize,
        /// No LayerNorm before attention (the paper's 1-layer 4-head toy).
        #[arg(long)]
        no_attn_layernorm: bool,
        /// Placeholder tokens before the input (the prefix size the model will be tuned with).
        #[arg(long, default_value_t = 1)]
        prefix_size: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Fine-tune every weight of a pretrained toy on a task.
    Finetune {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Train the paper's per-layer prefix for a frozen toy.
    Prefix {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        prefix_size: usize,
        /// Standard deviation of the initial prefix (the authors: 1.0).
        #[arg(long, default_value_t = 1.0)]
        init_std: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Train a rank-r LoRA on attn.c_proj, mlp.c_fc and mlp.c_proj of a frozen toy.
    Lora {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        rank: usize,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args, Debug)]
pub struct Common {
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Cosine decay of the learning rate to 10% over the run.
    #[arg(long)]
    pub cosine: bool,
    /// Weight decay (default: 0.1 for pretraining/fine-tuning as minGPT, 0.01 for prefix/LoRA as
    /// PyTorch's AdamW default).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW's beta2 (minGPT's 0.95; PyTorch's default is 0.999).
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from the output file if it exists.
    #[arg(long)]
    pub resume: bool,
    /// Write the output file at least every this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub ckpt_secs: f64,
    /// Quick evaluation and a log line every this many steps (0: never).
    #[arg(long, default_value_t = 500)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 200)]
    pub eval_samples: usize,
    /// Stop once the quick evaluation reaches this accuracy (0..1).
    #[arg(long)]
    pub stop_at: Option<f64>,
    /// Stop after this many minutes (the file stays resumable with --resume).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Samples of the final evaluation written into the file (0: none).
    #[arg(long, default_value_t = 3200)]
    pub final_samples: usize,
}

fn opts(c: &Common, p: usize, default_wd: f64) -> prefixscope::Result<LoopOpts> {
    Ok(LoopOpts {
        schedule: Schedule {
            steps: c.steps,
            batch: c.batch.max(1),
            lr: c.lr,
            warmup: c.warmup,
            cosine: c.cosine,
            weight_decay: c.weight_decay.unwrap_or(default_wd),
            beta2: c.beta2,
            grad_clip: c.grad_clip,
            seed: c.seed,
        },
        task: Task::parse(&c.task)?,
        p,
        out: c.out.clone(),
        ckpt_secs: c.ckpt_secs,
        eval_every: c.eval_every,
        eval_samples: c.eval_samples,
        stop_at: c.stop_at,
        max_minutes: c.max_minutes,
        final_samples: c.final_samples,
    })
}

fn report(out: &std::path::Path, o: &Outcome) {
    println!(
        "{}: {} steps, last loss {:.4}, {:.1} ms/step, wall {:.0} s, accuracy {}",
        out.display(),
        o.steps_done,
        o.last_loss,
        o.ms_per_step,
        o.wall_s,
        o.accuracy
            .map(|a| format!("{:.2}%", 100.0 * a))
            .unwrap_or_else(|| "not measured".into())
    );
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    let (out, o) = match a.kind {
        Kind::Pretrain {
            layers,
            heads,
            width,
            no_attn_layernorm,
            prefix_size,
            common,
        } => {
            let cfg = GptConfig {
                vocab_size: VOCAB,
                n_positions: prefix_size + 2 * train::data::LENGTH - 1,
                n_layer: layers,
                n_head: heads,
                n_embd: width,
                skip_attn_layernorm: no_attn_layernorm,
                layer_norm_eps: 1e-5,
                tied_head: false,
            };
            cfg.validate(std::path::Path::new("--layers/--heads/--width"))?;
            let o = opts(&common, prefix_size, 0.1)?;
            (
                common.out.clone(),
                train::pretrain::run(&cfg, &o, common.resume)?,
            )
        }
        Kind::Finetune { model, common } => {
            let o = opts(&common, 0, 0.1)?;
            (
                common.out.clone(),
                train::finetune::run(&model, &o, common.resume)?,
            )
        }
        Kind::Prefix {
            model,
            prefix_size,
            init_std,
            common,
        } => {
            let o = opts(&common, prefix_size, 0.01)?;
            (
                common.out.clone(),
                train::prefix_tuning::run(&model, &o, init_std, common.resume)?,
            )
        }
        Kind::Lora {
            model,
            rank,
            common,
        } => {
            let o = opts(&common, 0, 0.01)?;
            (
                common.out.clone(),
                train::lora::run(&model, &o, rank, common.resume)?,
            )
        }
    };
    report(&out, &o);
    Ok(())
}
