//! `prefixscope eval`: the authors' accuracy (greedy 10-token outputs, exact match) of a toy model,
//! alone or with a prefix, a LoRA or as its full fine-tune; `--matrix` for the prefix x task table.

use prefixscope::error::Error;
use prefixscope::load::toy;
use prefixscope::model::gpt::{Gpt, PrefixTensors};
use prefixscope::model::Transformer;
use prefixscope::prefix::{Prefix, PrefixKind};
use prefixscope::train::data::Task;
use prefixscope::train::eval::{accuracy, score, Adapter};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pretrained toy model (.safetensors, kind toy-gpt).
    #[arg(long)]
    pub model: PathBuf,
    /// The paper's per-layer prefix for the model (repeatable with --matrix).
    #[arg(long)]
    pub prefix: Vec<PathBuf>,
    /// A LoRA adapter for the model (repeatable with --matrix).
    #[arg(long)]
    pub lora: Vec<PathBuf>,
    /// A full fine-tune of the model, evaluated in its place (repeatable with --matrix).
    #[arg(long)]
    pub finetuned: Vec<PathBuf>,
    /// Task (with --matrix: comma-separated tasks, default the four pretraining tasks).
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long, default_value_t = 3200)]
    pub samples: usize,
    /// Seed of the test samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Rows: the model alone, then each --prefix, --lora, --finetuned; columns: tasks.
    #[arg(long)]
    pub matrix: bool,
}

/// One row of an evaluation: a model, what runs on it, and its layout's placeholder count.
struct Row {
    name: String,
    model: Gpt,
    adapter: Adapter,
    p: usize,
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| p.display().to_string())
}

fn rows(a: &Args) -> prefixscope::Result<Vec<Row>> {
    let (base, file) = toy::load_gpt(&a.model)?;
    let p_base = file.prefix_size(&a.model)?;
    let mut out = Vec::new();
    let alone = a.prefix.is_empty() && a.lora.is_empty() && a.finetuned.is_empty();
    if a.matrix || alone {
        out.push(Row {
            name: "pretrained".into(),
            model: base.clone(),
            adapter: Adapter::default(),
            p: p_base,
        });
    }
    for f in &a.prefix {
        let pf = Prefix::load_for(f, PrefixKind::Hidden, base.info())?;
        out.push(Row {
            name: name_of(f),
            model: base.clone(),
            p: pf.len(),
            adapter: Adapter {
                prefix: Some(PrefixTensors::from_prefix(&pf)?),
                lora: None,
            },
        });
    }
    for f in &a.lora {
        let l = toy::load_lora(f, base.config())?;
        out.push(Row {
            name: name_of(f),
            model: base.clone(),
            p: p_base,
            adapter: Adapter {
                prefix: None,
                lora: Some(l),
            },
        });
    }
    for f in &a.finetuned {
        let (m, ff) = toy::load_gpt(f)?;
        if m.config() != base.config() {
            return Err(Error::format(
                f,
                "config",
                format!("the config of {} ({:?})", a.model.display(), base.config()),
                format!("{:?}", m.config()),
            ));
        }
        out.push(Row {
            name: name_of(f),
            model: m,
            adapter: Adapter::default(),
            p: ff.prefix_size(f)?,
        });
    }
    Ok(out)
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    let n_adapters = a.prefix.len() + a.lora.len() + a.finetuned.len();
    if !a.matrix && n_adapters > 1 {
        return Err(Error::input(
            "eval",
            "at most one of --prefix, --lora, --finetuned (or --matrix)",
            format!("{n_adapters}"),
        ));
    }
    if a.samples == 0 {
        return Err(Error::input("--samples", "at least 1", "0"));
    }
    let tasks: Vec<Task> = match (&a.task, a.matrix) {
        (Some(t), _) => t
            .split(',')
            .map(Task::parse)
            .collect::<prefixscope::Result<_>>()?,
        (None, true) => Task::PRETRAIN.to_vec(),
        (None, false) => return Err(Error::input("--task", "a task name", "nothing")),
    };
    if !a.matrix && tasks.len() != 1 {
        return Err(Error::input(
            "--task",
            "one task (several need --matrix)",
            format!("{} tasks", tasks.len()),
        ));
    }
    let rows = rows(&a)?;
    if !a.matrix {
        return print_one(&a, &rows[0], tasks[0]);
    }
    let mut table = Vec::new();
    for r in &rows {
        let mut accs = Vec::new();
        for &t in &tasks {
            let (c, n) = accuracy(&r.model, &r.adapter, r.p, t, a.samples, a.seed)?;
            accs.push((c, n));
        }
        table.push(accs);
    }
    if a.json {
        let v = serde_json::json!({
            "tasks": tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "samples": a.samples,
            "rows": rows.iter().zip(&table).map(|(r, accs)| serde_json::json!({
                "name": r.name,
                "accuracy": accs.iter().map(|(c, n)| *c as f64 / *n as f64).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        let w = rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(10)
            .max(10);
        print!("{:w$}", "");
        for t in &tasks {
            print!("  {:>14}", t.name());
        }
        println!();
        for (r, accs) in rows.iter().zip(&table) {
            print!("{:w$}", r.name);
            for (c, n) in accs {
                print!("  {:>13.2}%", 100.0 * *c as f64 / *n as f64);
            }
            println!();
        }
    }
    Ok(())
}

/// One model (and adapter) on one task: exact match, then the per-position accuracy.
fn print_one(a: &Args, r: &Row, task: Task) -> prefixscope::Result<()> {
    let s = score(&r.model, &r.adapter, r.p, task, a.samples, a.seed)?;
    let (c, n) = (s.correct, s.samples);
    let per_position: Vec<f64> = s
        .per_position
        .iter()
        .map(|&k| k as f64 / n as f64)
        .collect();
    if a.json {
        let v = serde_json::json!({
            "task": task.name(),
            "samples": n,
            "correct": c,
            "accuracy": c as f64 / n as f64,
            "position_accuracy": per_position,
            "model": a.model.display().to_string(),
            "adapter": r.name,
        });
        println!("{v}");
    } else {
        println!(
            "{} on {}: {c}/{n} = {:.2}% correct",
            r.name,
            task,
            100.0 * c as f64 / n as f64
        );
        let cells: Vec<String> = per_position
            .iter()
            .map(|f| format!("{:.1}", 100.0 * f))
            .collect();
        println!("right token per output position (%): {}", cells.join(" "));
    }
    Ok(())
}
