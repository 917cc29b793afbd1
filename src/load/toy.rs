//! Our own safetensors files: toy GPT checkpoints (and constructions), config in the metadata.

use super::{LoadControl, Loaded};
use crate::error::{Error, Result};
use std::path::Path;

pub fn load(path: &Path, _ctl: &LoadControl) -> Result<Loaded> {
    Err(Error::unsupported(
        path,
        "safetensors kind",
        "not yet readable",
        "toy-gpt",
    ))
}
