//! The experiments behind the paper's figures: greedy generation, layer-0 attention and attention
//! block outputs of a toy model with or without a prefix, and the paper's input sampler. No drawing.

use crate::arrays::Array;
use crate::error::Result;
use crate::model::{LayerSel, Transformer};
use crate::prefix::Prefix;
use crate::train::data::Task;
use candle_core::Tensor;

/// The answer a task asks for (`None` for a name that is not one of the toy tasks).
pub fn task_answer(task: &str, input: &[u32]) -> Option<Vec<u32>> {
    Some(Task::parse(task).ok()?.answer(input))
}

pub(super) fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0 as u32
}

/// Greedy continuation of `input` by `steps` tokens, behind `prefix` or (without one) behind the
/// `p` placeholder tokens the model was trained with.
pub fn generate(
    model: &dyn Transformer,
    input: &[u32],
    prefix: Option<&Prefix>,
    p: usize,
    steps: usize,
) -> Result<Vec<u32>> {
    let mut ids = input.to_vec();
    let none = LayerSel::Only(vec![]);
    for _ in 0..steps {
        let run = match prefix {
            Some(pf) => model.forward(&ids, Some(pf), &none)?,
            None => model.pretrained(&ids, p, &none)?,
        };
        ids.push(argmax(&run.logits_last.to_vec1::<f32>()?));
    }
    Ok(ids[input.len()..].to_vec())
}

/// Raw attention `(H, n, p+n)` of layer 0 for `ids`, behind `prefix` or the placeholders.
pub(super) fn raw_attention(
    model: &dyn Transformer,
    ids: &[u32],
    prefix: Option<&Prefix>,
    p: usize,
) -> Result<Array> {
    let sel = LayerSel::Only(vec![0]);
    let run = match prefix {
        Some(pf) => model.forward(ids, Some(pf), &sel)?,
        None => model.pretrained(ids, p, &sel)?,
    };
    Ok(Array::from_tensor(&run.layers[0].pattern)?)
}

/// `count` inputs from the paper's generator (10 digits in 0..8; with probability 1/2 an input with
/// more than 5 distinct digits is redrawn), seeded so the figure is reproducible.
pub fn sample_inputs(count: usize, seed: u64) -> Vec<Vec<u32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    while out.len() < count {
        let x: Vec<u32> = (0..10).map(|_| rng.random_range(0..8u32)).collect();
        let mut u = x.clone();
        u.sort();
        u.dedup();
        if u.len() > 5 && rng.random::<f32>() < 0.5 {
            continue;
        }
        out.push(x);
    }
    out
}

/// Attention block output `(n, d)` at layer 0 for `ids` behind `prefix` (or the placeholders).
pub(super) fn block_output(
    model: &dyn Transformer,
    ids: &[u32],
    prefix: Option<&Prefix>,
    p: usize,
) -> Result<Vec<f32>> {
    let sel = LayerSel::Only(vec![0]);
    let run = match prefix {
        Some(pf) => model.forward(ids, Some(pf), &sel)?,
        None => model.pretrained(ids, p, &sel)?,
    };
    let z: &Tensor = &run.layers[0].z;
    let out = model.attn_block_output(0, z)?;
    let n = out.dim(0)?;
    Ok(out.get(n - 1)?.to_vec1::<f32>()?)
}
