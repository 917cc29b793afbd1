//! Our own safetensors files: toy GPT checkpoints (and constructions), config in the metadata.

use super::{LoadControl, Loaded};
use crate::error::{Error, Result};
use std::path::Path;

pub fn load(path: &Path, _ctl: &LoadControl) -> Result<Loaded> {
    let kind = crate::model::construction::safetensors_kind(path)?;
    match kind.as_deref() {
        Some(crate::model::construction::KIND) => crate::model::construction::open(path),
        other => Err(Error::unsupported(
            path,
            "safetensors kind (metadata 'prefixscope.kind')",
            other.map_or("none".to_string(), |k| format!("'{k}'")),
            "construction",
        )),
    }
}
