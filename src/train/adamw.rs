//! AdamW with a state a checkpoint can keep.
//!
//! The update is `candle_nn::AdamW`'s, operation for operation (so a run's numbers are the ones that
//! optimizer gives), but the first and second moments and the step count are readable: the training
//! loop writes them beside its output file (`FILE.adamw`) each time it writes the file, and a resumed
//! run reads them back, so an interrupted and resumed run takes exactly the steps an uninterrupted one
//! takes (candle keeps its moments private, and a restart from zero moments takes other steps).

use crate::error::{Error, Result};
use crate::load::toy;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
pub use candle_nn::ParamsAdamW;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One optimizer over `vars`.
pub struct AdamW {
    /// `(parameter, first moment, second moment)`.
    vars: Vec<(Var, Var, Var)>,
    step_t: usize,
    params: ParamsAdamW,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|v| {
                let m = Var::zeros(v.shape(), v.dtype(), v.device())?;
                let s = Var::zeros(v.shape(), v.dtype(), v.device())?;
                Ok((v, m, s))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            vars,
            step_t: 0,
            params,
        })
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// One AdamW step (decoupled weight decay), as `candle_nn::AdamW::step`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let lr_lambda = p.lr * p.weight_decay;
        let scale_m = 1f64 / (1f64 - p.beta1.powi(self.step_t as i32));
        let scale_v = 1f64 / (1f64 - p.beta2.powi(self.step_t as i32));
        for (theta, m, v) in &self.vars {
            let Some(g) = grads.get(theta) else { continue };
            let next_m = ((m.as_tensor() * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let next_v = ((v.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let next_theta = (theta.as_tensor() * (1f64 - lr_lambda))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let next_theta = (next_theta - (adjusted * p.lr)?)?;
            m.set(&next_m)?;
            v.set(&next_v)?;
            theta.set(&next_theta)?;
        }
        Ok(())
    }

    /// The state as named tensors `{tag}.{i}.m`, `{tag}.{i}.v` (i: the parameter's index) and the step
    /// count.
    pub(crate) fn state(
        &self,
        tag: &str,
        out: &mut Vec<(String, Tensor)>,
        meta: &mut HashMap<String, String>,
    ) {
        for (i, (_, m, v)) in self.vars.iter().enumerate() {
            out.push((format!("{tag}.{i}.m"), m.as_tensor().clone()));
            out.push((format!("{tag}.{i}.v"), v.as_tensor().clone()));
        }
        meta.insert(format!("{tag}.step_t"), self.step_t.to_string());
    }

    /// Restore what [`AdamW::state`] wrote; `None` (and nothing changed) when `file` does not hold a
    /// state of exactly these parameters' shapes.
    pub(crate) fn restore(&mut self, tag: &str, file: &toy::ToyFile) -> Result<Option<()>> {
        let Some(step_t) = file
            .meta
            .get(&format!("{tag}.step_t"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return Ok(None);
        };
        let mut found = Vec::new();
        for (i, (theta, _, _)) in self.vars.iter().enumerate() {
            let get = |k: &str| {
                file.tensors
                    .get(&format!("{tag}.{i}.{k}"))
                    .filter(|t| t.dims() == theta.dims())
            };
            match (get("m"), get("v")) {
                (Some(m), Some(v)) => found.push((m.clone(), v.clone())),
                _ => return Ok(None),
            }
        }
        if file
            .tensors
            .contains_key(&format!("{tag}.{}.m", self.vars.len()))
        {
            return Ok(None);
        }
        for ((_, m, v), (mt, vt)) in self.vars.iter().zip(found) {
            m.set(&mt.to_dtype(m.dtype())?)?;
            v.set(&vt.to_dtype(v.dtype())?)?;
        }
        self.step_t = step_t;
        Ok(Some(()))
    }
}

/// Where the optimizer state of the run writing `out` is kept: `out` with `.adamw` appended.
pub fn state_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".adamw");
    out.with_file_name(name)
}

const STEPS: &str = "prefixscope.adamw.steps_done";

/// Write the state of `opts` (tagged `o0`, `o1`, ...) after `steps_done` steps, atomically.
pub fn save_state(out: &Path, steps_done: usize, opts: &[&AdamW]) -> Result<()> {
    let mut tensors = Vec::new();
    let mut meta = HashMap::new();
    meta.insert(toy::KIND.to_string(), "adamw-state".to_string());
    meta.insert(STEPS.to_string(), steps_done.to_string());
    for (k, o) in opts.iter().enumerate() {
        o.state(&format!("o{k}"), &mut tensors, &mut meta);
    }
    toy::write(&state_path(out), &tensors, &meta)
}

/// Restore the state written by [`save_state`] for a run resuming `out` at `steps_done`. `Ok(false)`
/// (optimizers untouched, their moments start at zero) when there is no state file or it is not
/// the state of this step and these parameters; an unreadable file is an error.
pub fn load_state(out: &Path, steps_done: usize, opts: &mut [&mut AdamW]) -> Result<bool> {
    let path = state_path(out);
    if !path.exists() {
        return Ok(false);
    }
    let file = toy::read(&path)?;
    if file.kind() != "adamw-state" {
        return Err(Error::format(
            &path,
            toy::KIND,
            "adamw-state",
            file.kind().to_string(),
        ));
    }
    if file.meta.get(STEPS).and_then(|s| s.parse::<usize>().ok()) != Some(steps_done) {
        return Ok(false);
    }
    // Check all before changing any.
    let mut probe: Vec<AdamW> = Vec::new();
    for (k, o) in opts.iter().enumerate() {
        let mut copy = AdamW::new(
            o.vars.iter().map(|(t, _, _)| t.clone()).collect(),
            o.params.clone(),
        )?;
        if copy.restore(&format!("o{k}"), &file)?.is_none() {
            return Ok(false);
        }
        probe.push(copy);
    }
    for (o, p) in opts.iter_mut().zip(probe) {
        for ((_, m, v), (_, pm, pv)) in o.vars.iter().zip(&p.vars) {
            m.set(pm.as_tensor())?;
            v.set(pv.as_tensor())?;
        }
        o.step_t = p.step_t;
    }
    Ok(true)
}
