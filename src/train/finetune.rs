//! Full fine-tuning: every weight of a pretrained toy trained on a new task (the paper's baseline).

use super::{LoopOpts, Outcome};
use crate::error::Result;
use crate::load::toy;
use std::path::Path;

pub fn run(base: &Path, opts: &LoopOpts, resume: bool) -> Result<Outcome> {
    let (gpt, file) = toy::load_gpt(base)?;
    let mut opts = opts.clone();
    opts.p = file.prefix_size(base)?;
    super::pretrain::train_full(
        gpt.config(),
        Some(&file),
        "toy-finetuned",
        Some(base),
        &opts,
        resume,
    )
}
