//! The CLI's PEFT flags: `--adapter PATH` (in [`super::attention::PrefixArgs`]) and
//! `--save-adapter DIR`, shared by `attention` and `render`.

use prefixscope::error::Error;
use prefixscope::model::ModelInfo;
use prefixscope::prefix::Prefix;
use prefixscope::{load, peft};
use std::path::{Path, PathBuf};

/// Open an adapter for the model; a `base_model_name_or_path` naming another model is a warning.
pub fn open_adapter(
    path: &Path,
    info: &ModelInfo,
    model_path: &Path,
) -> prefixscope::Result<Prefix> {
    let a = peft::open(path, info, model_path)?;
    if let Some(w) = &a.warning {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "adapter {} ({}): {}, P = {}",
        a.weights_path.display(),
        a.peft_type.name(),
        a.prefix.kind().label(),
        a.prefix.len()
    );
    Ok(a.prefix)
}

#[derive(clap::Args, Debug)]
pub struct SaveAdapterArgs {
    /// Also save the prefix as a PEFT adapter folder (soft prompt: PROMPT_TUNING; key/value prefix
    /// and the paper's prefix, as the keys and values it induces: PREFIX_TUNING).
    #[arg(long, value_name = "DIR")]
    pub save_adapter: Option<PathBuf>,
}

impl SaveAdapterArgs {
    /// The cheap check before a model is loaded: an existing folder needs `--force`.
    pub fn check(&self, force: bool) -> prefixscope::Result<()> {
        match &self.save_adapter {
            Some(d) => peft::write::check_target(d, force),
            None => Ok(()),
        }
    }

    pub fn save(
        &self,
        prefix: Option<&Prefix>,
        loaded: &load::Loaded,
        force: bool,
    ) -> prefixscope::Result<()> {
        let Some(dir) = &self.save_adapter else {
            return Ok(());
        };
        let prefix = prefix.ok_or_else(|| {
            Error::input(
                "--save-adapter",
                "a prefix to save (--soft-prompt, --prefix, --prefix-kv or --adapter)",
                "none",
            )
        })?;
        let base = loaded.path.display().to_string();
        let t = peft::save(dir, prefix, loaded.model.as_ref(), &base, force)?;
        eprintln!("saved {} ({})", dir.display(), t.name());
        Ok(())
    }
}
