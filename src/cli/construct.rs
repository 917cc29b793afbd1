//! `prefixscope construct`: build one of the paper's constructions and the virtual token(s) that make it
//! write a target, generate, and print both.

use prefixscope::arrays::write_atomic;
use prefixscope::construct::{self, Built, Kind, Outcome};
use prefixscope::error::Error;
use prefixscope::model::Transformer;
use prefixscope::prefix::Prefix;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Text for the unconditional construction to write from one virtual token (at most 20
    /// characters from space to '}': the notebook's 94-character vocabulary, without '~').
    #[arg(long, conflicts_with = "map", required_unless_present = "map")]
    pub target: Option<String>,
    /// A map for the conditional constructions: `case-flip`, `random2[:SEED]`, or `KEY=VALUE` entries
    /// separated by commas (`\` makes the next character literal). One-character keys and values:
    /// one token to one token; longer values (up to 10): long responses; two-character keys over A..J:
    /// two-token conditioning.
    #[arg(long)]
    pub map: Option<String>,
    /// Force the construction for --map instead of inferring it: conditional, long, two-token.
    #[arg(long, requires = "map")]
    pub construction: Option<String>,
    /// With --map: run only this user input (one character, or two for two-token).
    #[arg(long, requires = "map")]
    pub input: Option<String>,
    /// Print {"target", "generated", "margin", ...} as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write DIR/model.safetensors, DIR/prefix.safetensors (the virtual tokens, a soft prompt) and
    /// DIR/construction.json.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

fn parse_kind(s: &str) -> prefixscope::Result<Kind> {
    match s {
        "conditional" => Ok(Kind::Conditional),
        "long" => Ok(Kind::Long),
        "two-token" => Ok(Kind::TwoToken),
        other => Err(Error::input(
            "--construction",
            "conditional, long or two-token",
            format!("'{other}'"),
        )),
    }
}

fn virtual_tokens(b: &Built) -> Vec<Vec<f32>> {
    let Prefix::SoftPrompt(a) = &b.prefix else {
        return vec![];
    };
    let d = a.shape[1];
    a.data
        .chunks(d)
        .map(|r| r[b.content.clone()].to_vec())
        .collect()
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    let built = match (&a.target, &a.map) {
        (Some(t), _) => construct::build_target(t)?,
        (None, Some(m)) => {
            let map = construct::parse_map(m)?;
            let kind = a.construction.as_deref().map(parse_kind).transpose()?;
            construct::build_map(&map, kind)?
        }
        (None, None) => return Err(Error::input("construct", "--target or --map", "neither")),
    };
    let outcomes: Vec<Outcome> = match &a.input {
        Some(inp) => {
            let expected = built
                .cases
                .iter()
                .find(|c| &c.input == inp)
                .map(|c| c.expected.clone());
            let want = expected.as_ref().map(|e| e.chars().count().max(1));
            let (generated, g) = construct::generate_text(&built.model, &built.prefix, inp, want)?;
            vec![Outcome {
                input: inp.clone(),
                expected: expected.unwrap_or_default(),
                generated,
                margin: g.margin(),
            }]
        }
        None => construct::run_cases(&built)?,
    };
    let margin = outcomes
        .iter()
        .map(|o| o.margin)
        .fold(f64::INFINITY, f64::min);
    let correct = outcomes
        .iter()
        .filter(|o| o.generated == o.expected)
        .count();
    let cfg = built.model.config();
    let vts = virtual_tokens(&built);
    let report = if built.kind == Kind::Unconditional {
        json!({
            "construction": built.kind.name(),
            "target": outcomes[0].expected,
            "generated": outcomes[0].generated,
            "margin": margin,
            "virtual_tokens": vts,
        })
    } else if a.input.is_some() {
        json!({
            "construction": built.kind.name(),
            "input": outcomes[0].input,
            "target": outcomes[0].expected,
            "generated": outcomes[0].generated,
            "margin": margin,
            "virtual_tokens": vts,
        })
    } else {
        let obj = |f: fn(&Outcome) -> &String| -> serde_json::Map<String, serde_json::Value> {
            outcomes
                .iter()
                .map(|o| (o.input.clone(), json!(f(o))))
                .collect()
        };
        json!({
            "construction": built.kind.name(),
            "target": obj(|o| &o.expected),
            "generated": obj(|o| &o.generated),
            "margin": margin,
            "correct": correct,
            "total": outcomes.len(),
            "virtual_tokens": vts,
        })
    };
    if let Some(dir) = &a.save {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        built.model.save(&dir.join("model.safetensors"))?;
        built.prefix.save(&dir.join("prefix.safetensors"))?;
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        write_atomic(&dir.join("construction.json"), text.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    let info = built.model.info();
    println!(
        "construction: {} (V = {}, N = {}, T = {}, d_model = {}, {} heads{})",
        built.kind.name(),
        info.vocab_size,
        cfg.n_positions,
        cfg.inv_temperature,
        info.d_model,
        info.n_heads,
        if cfg.mlps.is_empty() {
            String::new()
        } else {
            format!(", {} MLP blocks", cfg.mlps.len())
        }
    );
    for (i, v) in vts.iter().enumerate() {
        let nonzero = v.iter().filter(|x| **x != 0.0).count();
        let body = if nonzero * 2 < v.len() {
            // Mostly zeros (a map touches few characters): list only the coordinates in use.
            let nums: Vec<String> = v
                .iter()
                .enumerate()
                .filter(|(_, x)| **x != 0.0)
                .map(|(j, x)| format!("{}: {x}", j + built.content.start))
                .collect();
            format!("{{{}}}, all others 0", nums.join(", "))
        } else {
            let nums: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
            format!("[{}]", nums.join(", "))
        };
        println!(
            "virtual token {i} (coordinates {}..{}): {body}",
            built.content.start, built.content.end
        );
    }
    if built.kind == Kind::Unconditional {
        println!("target:    {:?}", outcomes[0].expected);
        println!("generated: {:?}", outcomes[0].generated);
    } else {
        for o in &outcomes {
            let mark = if o.generated == o.expected {
                "ok"
            } else {
                "MISMATCH"
            };
            println!(
                "input {:?} -> generated {:?} (target {:?}) {mark}",
                o.input, o.generated, o.expected
            );
        }
        println!("correct:   {correct}/{}", outcomes.len());
    }
    println!(
        "margin:    {margin:.6} (z may move this far before a character changes; at most 1/(2V) = {:.6})",
        0.5 / info.vocab_size as f64
    );
    if let Some(dir) = &a.save {
        println!(
            "saved:     {} (model.safetensors, prefix.safetensors, construction.json)",
            dir.display()
        );
    }
    Ok(())
}
