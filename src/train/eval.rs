//! Accuracy as the authors measure it: greedy generation of the 10 output tokens after
//! `[0]*p + input` (or after the prefix and the input), exact match of the whole output, on
//! test-split inputs.

use super::data::{self, Split, Task, LENGTH};
use crate::error::Result;
use crate::model::gpt::{Gpt, Lora, PrefixTensors};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// What runs on top of the frozen model.
#[derive(Clone, Default)]
pub struct Adapter {
    pub prefix: Option<PrefixTensors>,
    pub lora: Option<Lora>,
}

/// Greedy outputs for a batch of inputs: `(B, 10)` row-major. `p` is the placeholder count of the
/// layout (the prefix length when there is a prefix).
pub fn generate(
    model: &Gpt,
    adapter: &Adapter,
    p: usize,
    inputs: &[[u32; LENGTH]],
) -> Result<Vec<[u32; LENGTH]>> {
    let b = inputs.len();
    let pad = if adapter.prefix.is_some() { 0 } else { p };
    let mut rows: Vec<Vec<u32>> = inputs
        .iter()
        .map(|inp| {
            let mut r = vec![0u32; pad];
            r.extend_from_slice(inp);
            r
        })
        .collect();
    for _ in 0..LENGTH {
        let t = rows[0].len();
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, t), &Device::Cpu)?;
        let logits = model.logits(&ids, adapter.prefix.as_ref(), adapter.lora.as_ref(), 1)?;
        let next = crate::model::gpt::argmax_rows(&logits.squeeze(1)?)?;
        for (r, n) in rows.iter_mut().zip(next) {
            r.push(n);
        }
    }
    Ok(rows
        .iter()
        .map(|r| {
            let mut out = [0u32; LENGTH];
            out.copy_from_slice(&r[r.len() - LENGTH..]);
            out
        })
        .collect())
}

/// Exact-match and per-position counts over a set of test inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    /// Outputs equal to the answer in all 10 positions (the authors' measure).
    pub correct: usize,
    pub samples: usize,
    /// Per output position, how many greedy outputs had the right token there (the model reads its
    /// own earlier outputs, as in the exact-match run): which positions an adapter gets wrong.
    pub per_position: [usize; LENGTH],
}

/// `(correct, samples)` on `samples` test inputs drawn with `seed`.
pub fn accuracy(
    model: &Gpt,
    adapter: &Adapter,
    p: usize,
    task: Task,
    samples: usize,
    seed: u64,
) -> Result<(usize, usize)> {
    let s = score(model, adapter, p, task, samples, seed)?;
    Ok((s.correct, s.samples))
}

/// [`accuracy`] with the per-position counts.
pub fn score(
    model: &Gpt,
    adapter: &Adapter,
    p: usize,
    task: Task,
    samples: usize,
    seed: u64,
) -> Result<Score> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ex = data::examples(task, Split::Test, samples, 0, &mut rng);
    let mut s = Score {
        correct: 0,
        samples,
        per_position: [0; LENGTH],
    };
    for chunk in ex.chunks(400) {
        let inputs: Vec<[u32; LENGTH]> = chunk.iter().map(|(i, _)| *i).collect();
        let got = generate(model, adapter, p, &inputs)?;
        for (g, (_, want)) in got.iter().zip(chunk) {
            s.correct += usize::from(g == want);
            for (k, (a, b)) in g.iter().zip(want).enumerate() {
                s.per_position[k] += usize::from(a == b);
            }
        }
    }
    Ok(s)
}
