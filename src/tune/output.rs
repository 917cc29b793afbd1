//! Where a tuned prefix goes: one of our prefix files (`.npz`, `.npy`, `.safetensors`, by
//! extension, written atomically) or a PEFT adapter folder (`peft::save`, written whole and renamed
//! into place), chosen by the path: a name with a prefix-file extension is a file, anything else a
//! folder.

use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::prefix::Prefix;
use std::path::{Path, PathBuf};

/// The file extensions a prefix file may have.
pub const FILE_EXTENSIONS: &[&str] = &["npz", "npy", "safetensors"];

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Our prefix format.
    File(PathBuf),
    /// A PEFT adapter folder (a soft prompt as PROMPT_TUNING, the other kinds as PREFIX_TUNING).
    Adapter(PathBuf),
}

impl Output {
    /// By extension: a prefix file, or else an adapter folder.
    pub fn for_path(path: &Path) -> Self {
        let ext = crate::arrays::extension(path);
        if FILE_EXTENSIONS.contains(&ext.as_str()) {
            Output::File(path.to_path_buf())
        } else {
            Output::Adapter(path.to_path_buf())
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Output::File(p) | Output::Adapter(p) => p,
        }
    }

    /// Refuse what cannot be written before any tuning is spent on it: an existing output without
    /// `resume` (it would be replaced), a file whose folder is missing, an existing folder that is
    /// not an adapter folder, or one `.npy` for the two arrays of a key/value prefix.
    pub fn check(&self, resume: bool, kind: crate::prefix::PrefixKind) -> Result<()> {
        let p = self.path();
        if kind == crate::prefix::PrefixKind::KeyValue && crate::arrays::extension(p) == "npy" {
            return Err(Error::input(
                format!("--out {}", p.display()),
                "a .npz or .safetensors file (a key/value prefix is two arrays)",
                "a .npy file",
            ));
        }
        if p.exists() && !resume {
            return Err(Error::input(
                format!("--out {}", p.display()),
                "a path that does not exist yet (or --resume to continue the run that wrote it)",
                "an existing path",
            ));
        }
        if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(Error::input(
                    format!("--out {}", p.display()),
                    "a path in an existing folder",
                    format!("no folder {}", parent.display()),
                ));
            }
        }
        if let Output::Adapter(d) = self {
            if d.exists() {
                crate::peft::write::check_target(d, true)?;
            }
        }
        Ok(())
    }

    /// Write `prefix` (replacing what an earlier save of the same run wrote).
    pub fn save(&self, prefix: &Prefix, model: &dyn Transformer, base_model: &str) -> Result<()> {
        match self {
            Output::File(p) => prefix.save(p),
            Output::Adapter(d) => crate::peft::save(d, prefix, model, base_model, true).map(|_| ()),
        }
    }
}
