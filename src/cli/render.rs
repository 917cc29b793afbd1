//! `prefixscope render`: one head's views as a figure (SVG or PNG) or as the data behind it.

use super::attention::{PrefixArgs, PromptArgs};
use prefixscope::capture::capture;
use prefixscope::error::Error;
use prefixscope::figure::{self, Annotate, ExportOptions, ViewKind};
use prefixscope::load;
use prefixscope::model::LayerSel;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint: a Hugging Face folder, a .gguf file, or a prefixscope toy .safetensors.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    /// Layer index (0-based).
    #[arg(long)]
    pub layer: usize,
    /// Head index (0-based).
    #[arg(long)]
    pub head: usize,
    /// Views, comma separated: raw, renormalized, pretrained, difference, scaled.
    /// Default: raw,renormalized,pretrained,difference with a prefix, pretrained without.
    #[arg(long)]
    pub panels: Option<String>,
    /// Output: .svg, .png or .pdf for a figure; .csv, .json, .npz or .npy (one panel) for its data.
    #[arg(long)]
    pub out: PathBuf,
    /// PNG scale (2 and 4 stay crisp for print).
    #[arg(long, default_value_t = 2.0)]
    pub scale: f32,
    /// Panels per row (0: all on one row).
    #[arg(long, default_value_t = 0)]
    pub columns: usize,
    /// Print values in cells: auto (small matrices), always, never.
    #[arg(long, default_value = "auto")]
    pub values: String,
    /// Figure title (default: "Layer L, head H").
    #[arg(long)]
    pub title: Option<String>,
    #[command(flatten)]
    pub save: super::peft::SaveAdapterArgs,
    /// Replace --out (and the --save-adapter folder, when it is an adapter folder) if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    // Check the cheap things before loading a model.
    figure::ensure_writable(&a.out, a.force)?;
    a.save.check(a.force)?;
    let annotate = match a.values.as_str() {
        "auto" => Annotate::Auto,
        "always" => Annotate::Always,
        "never" => Annotate::Never,
        other => {
            return Err(Error::input(
                "--values",
                "auto, always or never",
                format!("'{other}'"),
            ))
        }
    };
    let asked_views = a.panels.as_deref().map(ViewKind::parse_list).transpose()?;
    let loaded = load::load(&a.model)?;
    let info = loaded.model.info().clone();
    if a.layer >= info.n_layers {
        return Err(Error::input(
            "--layer",
            format!("a layer index below {}", info.n_layers),
            a.layer.to_string(),
        ));
    }
    if a.head >= info.n_heads {
        return Err(Error::input(
            "--head",
            format!("a head index below {}", info.n_heads),
            a.head.to_string(),
        ));
    }
    let ids = a.prompt.ids(&loaded)?;
    let prefix = a.prefix.load(&info, &loaded.path)?;
    a.save.save(prefix.as_ref(), &loaded, a.force)?;
    let views = match asked_views {
        Some(v) => v,
        None if prefix.is_some() => vec![
            ViewKind::Raw,
            ViewKind::Renormalized,
            ViewKind::Pretrained,
            ViewKind::Difference,
        ],
        None => vec![ViewKind::Pretrained],
    };
    let cap = capture(
        loaded.model.as_ref(),
        &ids,
        prefix.as_ref(),
        &LayerSel::Only(vec![a.layer]),
    )?;
    // (capture refuses NaN/Inf views by layer; checked again here, where the figure is drawn.)
    for l in &cap.layers {
        l.check_finite()?;
    }
    let labels = loaded.tokenizer.labels(&ids);
    let opts = ExportOptions {
        scale: a.scale,
        overwrite: a.force,
        title: a.title.clone(),
        annotate,
        columns: a.columns,
        cmap: None,
        value_scale: Default::default(),
    };
    figure::export_views(&cap, &labels, a.layer, a.head, &views, &a.out, &opts)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
