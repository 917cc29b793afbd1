//! The tuning state beside the output (`OUT.tune`, a safetensors file of kind `tune-state`): the
//! prefix as its `Var`s hold it (`prefix.0`, and `prefix.1` for the values of a key/value prefix),
//! Adam's moments and step count, and the steps done. A resumed run restores all of it and takes
//! exactly the steps an uninterrupted run takes: the data is the whole set every step, so nothing else
//! varies. The prefix is kept here too because an adapter folder holds a per-layer prefix only as
//! the keys and values it induces.

use super::Tuner;
use crate::error::{Error, Result};
use crate::load::toy;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const KIND: &str = "tune-state";
const STEPS: &str = "prefixscope.tune.steps_done";
const PREFIX_KIND: &str = "prefixscope.tune.kind";
/// The matmul backend the run computed with (`blas::token`): products on another backend differ at
/// rounding level, so a resumed run takes the same one where it can (`main` reads it before the
/// backend is chosen).
const MATMUL: &str = "prefixscope.tune.matmul";

/// `out` with `.tune` appended (for a folder: beside it).
pub fn state_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".tune");
    out.with_file_name(name)
}

/// Write the state of `t` atomically.
pub fn save(out: &Path, t: &Tuner) -> Result<()> {
    let mut tensors = Vec::new();
    let mut meta = HashMap::new();
    meta.insert(toy::KIND.to_string(), KIND.to_string());
    meta.insert(STEPS.to_string(), t.steps_done.to_string());
    meta.insert(PREFIX_KIND.to_string(), format!("{:?}", t.prefix.kind()));
    meta.insert(MATMUL.to_string(), crate::model::blas::token());
    for (i, v) in t.prefix.vars().iter().enumerate() {
        tensors.push((format!("prefix.{i}"), v.as_tensor().clone()));
    }
    t.opt.state("adam", &mut tensors, &mut meta);
    toy::write(&state_path(out), &tensors, &meta)
}

/// The matmul backend recorded in the state beside `out` (`blas::token` of the run that wrote it);
/// `None` when there is no readable state or it predates the record. Errors are left to [`restore`],
/// which reports them with the file's name.
pub fn recorded_matmul(out: &Path) -> Option<String> {
    let path = state_path(out);
    let file = toy::read(&path).ok()?;
    (file.kind() == KIND)
        .then(|| file.get(MATMUL).map(str::to_string))
        .flatten()
}

/// Restore the state saved beside `out` into `t`; `Ok(false)` when there is no state file. A state
/// of another kind, length or model is refused (resuming it would silently tune something else).
pub fn restore(out: &Path, t: &mut Tuner) -> Result<bool> {
    let path = state_path(out);
    if !path.exists() {
        return Ok(false);
    }
    let file = toy::read(&path)?;
    if file.kind() != KIND {
        return Err(Error::format(
            &path,
            toy::KIND,
            KIND,
            file.kind().to_string(),
        ));
    }
    let steps: usize = file.require(&path, STEPS)?;
    let want_kind = format!("{:?}", t.prefix.kind());
    let kind = file.get(PREFIX_KIND).unwrap_or("");
    if kind != want_kind {
        return Err(Error::format(
            &path,
            format!("metadata '{PREFIX_KIND}'"),
            want_kind,
            kind.to_string(),
        ));
    }
    let mut values = Vec::new();
    for (i, v) in t.prefix.vars().iter().enumerate() {
        let name = format!("prefix.{i}");
        let s = file
            .tensors
            .get(&name)
            .ok_or_else(|| Error::missing(&path, &name))?;
        if s.dims() != v.dims() {
            return Err(Error::shape(&path, &name, v.dims(), s.dims()));
        }
        values.push(s.to_dtype(v.dtype())?);
    }
    if t.opt.restore("adam", &file)?.is_none() {
        return Err(Error::format(
            &path,
            "Adam state 'adam.*'",
            "moments of the prefix's shapes and a step count",
            "missing or of other shapes",
        ));
    }
    for (v, s) in t.prefix.vars().iter().zip(values) {
        v.set(&s)?;
    }
    t.steps_done = steps;
    Ok(true)
}
