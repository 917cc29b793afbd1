use prefixscope::capture::capture;
use prefixscope::error::Error;
use prefixscope::model::LayerSel;
use prefixscope::prefix::{Prefix, PrefixKind};
use prefixscope::{arrays, load};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub model: PathBuf,
    /// Keep GGUF weights quantized in memory (each is dequantized for its product): less memory, same numbers.
    #[arg(long)]
    pub quantized: bool,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    /// Layers to write: comma-separated indices or `all`.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Output file: .npz or .json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub save: super::peft::SaveAdapterArgs,
    /// Replace the --save-adapter folder if it exists (only an adapter folder is replaced).
    #[arg(long)]
    pub force: bool,
}

pub fn parse_layers(s: &str, n_layers: usize) -> prefixscope::Result<LayerSel> {
    if s.trim() == "all" {
        return Ok(LayerSel::All);
    }
    let mut v = Vec::new();
    for part in s.split(',') {
        let l: usize = part.trim().parse().map_err(|_| {
            Error::input(
                "--layers",
                "comma-separated layer indices or 'all'",
                format!("'{part}'"),
            )
        })?;
        if l >= n_layers {
            return Err(Error::input(
                "--layers",
                format!("layer indices below {n_layers}"),
                l.to_string(),
            ));
        }
        v.push(l);
    }
    Ok(LayerSel::Only(v))
}

pub fn parse_ids(raw: &[String]) -> prefixscope::Result<Vec<u32>> {
    raw.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                Error::input("--ids", "non-negative integer token ids", format!("'{s}'"))
            })
        })
        .collect()
}

/// The content token ids from `--text` (tokenized, BOS on request) or `--ids`.
/// The prompt: `--text` (tokenized) or `--ids`, and `--bos`.
#[derive(clap::Args, Debug)]
pub struct PromptArgs {
    /// Prompt text (tokenized by the model's tokenizer; no BOS unless --bos).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    pub text: Option<String>,
    /// Token ids, comma separated. Values starting with '-' are taken as ids (and refused by our own
    /// message), not as unknown flags.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub ids: Option<Vec<String>>,
    /// Prepend the tokenizer's BOS token.
    #[arg(long)]
    pub bos: bool,
}

impl PromptArgs {
    pub fn ids(&self, loaded: &load::Loaded) -> prefixscope::Result<Vec<u32>> {
        match (&self.text, &self.ids) {
            (Some(t), _) => loaded.tokenizer.encode(t, self.bos),
            (None, Some(raw)) => {
                if let Some(why) = loaded.tokenizer.unavailable_reason() {
                    eprintln!("warning: no tokenizer, token ids only (--ids): {why}");
                }
                parse_ids(raw)
            }
            (None, None) => Err(Error::input("prompt", "--text or --ids", "neither")),
        }
    }
}

/// At most one prefix file, by kind.
#[derive(clap::Args, Debug)]
pub struct PrefixArgs {
    /// Soft prompt, shape (P, d_model).
    #[arg(long, group = "prefix_kind")]
    pub soft_prompt: Option<PathBuf>,
    /// The paper's per-layer prefix, shape (n_layers, P, d_model).
    #[arg(long, group = "prefix_kind")]
    pub prefix: Option<PathBuf>,
    /// Key/value prefix: arrays `keys` and `values`, shape (n_layers, n_kv_heads, P, head_dim).
    #[arg(long, group = "prefix_kind")]
    pub prefix_kv: Option<PathBuf>,
    /// A PEFT adapter (its folder or its adapter_model.safetensors): PROMPT_TUNING, P_TUNING,
    /// PREFIX_TUNING or CARTRIDGE.
    #[arg(long, group = "prefix_kind")]
    pub adapter: Option<PathBuf>,
}

impl PrefixArgs {
    /// The named prefix, checked against the model (loaded from `model_path`).
    pub fn load(
        &self,
        info: &prefixscope::model::ModelInfo,
        model_path: &std::path::Path,
    ) -> prefixscope::Result<Option<Prefix>> {
        if let Some(f) = &self.adapter {
            return super::peft::open_adapter(f, info, model_path).map(Some);
        }
        Ok(match (&self.soft_prompt, &self.prefix, &self.prefix_kv) {
            (Some(f), _, _) => Some(Prefix::load_for(f, PrefixKind::SoftPrompt, info)?),
            (_, Some(f), _) => Some(Prefix::load_for(f, PrefixKind::Hidden, info)?),
            (_, _, Some(f)) => Some(Prefix::load_for(f, PrefixKind::KeyValue, info)?),
            _ => None,
        })
    }
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    a.save.check(a.force)?;
    let loaded = load::load_with(
        &a.model,
        &load::LoadControl {
            quantized: a.quantized,
            ..Default::default()
        },
    )?;
    let info = loaded.model.info().clone();
    let ids = a.prompt.ids(&loaded)?;
    let prefix = a.prefix.load(&info, &loaded.path)?;
    a.save.save(prefix.as_ref(), &loaded, a.force)?;
    let layers = parse_layers(&a.layers, info.n_layers)?;
    let model = loaded.model.as_ref();
    let prefix = prefix.as_ref();
    if arrays::extension(&a.out) != "npz" {
        let cap = capture(model, &ids, prefix, &layers)?;
        // Only the layers asked for were captured; their arrays move into the file, not copied.
        let named = cap.into_named_arrays();
        prefixscope::capture::check_named_finite(&named)?;
        return match arrays::extension(&a.out).as_str() {
            "json" => arrays::write_json(&a.out, &named),
            _ => arrays::write_arrays_owned(&a.out, named),
        };
    }
    // `.npz`: each layer's arrays go to the file as soon as its views are made (a long prompt holds
    // one layer's maps, not all of them); a failure on the way leaves no file.
    let mut npz = arrays::NpzWriter::create(&a.out)?;
    let (name, token_ids) = prefixscope::capture::token_ids_array(&ids);
    npz.add(&name, &token_ids)?;
    let ends = prefixscope::capture::capture_each(model, &ids, prefix, &layers, &mut |layer| {
        let named = layer.into_named_arrays();
        prefixscope::capture::check_named_finite(&named)?;
        named.iter().try_for_each(|(name, x)| npz.add(name, x))
    })?;
    for (name, x) in ends.logit_arrays() {
        npz.add(&name, &x)?;
    }
    npz.finish()
}
