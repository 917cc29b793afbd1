//! The paper's toy data (minGPT `CustomDataset`): 10 numbers from 0..7, vocabulary 10, the sequence
//! `[0]*p + input + output`, the loss on the 10 output positions only.
//!
//! Train/test split: the authors used Python's `hash(pickle.dumps(inp))` (salted per process, so not
//! reproducible). We use FNV-1a (64-bit) over the 10 input values, one byte each: an input is in the
//! test split when that hash is 0 mod 4 (25%, as in the original), in the training split otherwise.
//! The split is therefore a fixed function of the input, the same on every run and machine.
//! Sampling is seeded (`StdRng::seed_from_u64`); training batch `s` of a run with seed `S` is drawn
//! from its own generator seeded with `(S, s)`, so a resumed run sees exactly the batches it would
//! have seen without the interruption.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Numbers per input (and per output).
pub const LENGTH: usize = 10;
/// Input numbers are drawn from `0..NUM_DIGITS`.
pub const NUM_DIGITS: u32 = 8;
/// `NUM_DIGITS + 2`, so that `add2` can output 9.
pub const VOCAB: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Task {
    Ascending,
    Descending,
    Add1,
    Add2,
    /// The four pretraining tasks mixed, no task indicator: sample `i` uses `PRETRAIN[i % 4]`.
    Random,
    /// New task: `sort(inp) + 1`.
    AscendingAdd1,
    /// New task: `out[i] = count of inp[i] in inp` (the authors' per-element histogram).
    DoubleHist,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Ascending,
        Task::Descending,
        Task::Add1,
        Task::Add2,
        Task::Random,
        Task::AscendingAdd1,
        Task::DoubleHist,
    ];
    /// The tasks `random` mixes (the authors' `random_mode_list`).
    pub const PRETRAIN: [Task; 4] = [Task::Ascending, Task::Descending, Task::Add1, Task::Add2];

    pub const fn name(self) -> &'static str {
        match self {
            Task::Ascending => "ascending",
            Task::Descending => "descending",
            Task::Add1 => "add1",
            Task::Add2 => "add2",
            Task::Random => "random",
            Task::AscendingAdd1 => "ascending_add1",
            Task::DoubleHist => "double_hist",
        }
    }

    pub fn parse(s: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::input("--task", names.join(", "), format!("'{s}'"))
            })
    }

    /// The concrete task of sample `idx` (only `random` varies).
    pub fn for_index(self, idx: usize) -> Task {
        match self {
            Task::Random => Task::PRETRAIN[idx % 4],
            t => t,
        }
    }

    /// The output for `inp`. `random` has no single answer; pass a concrete task.
    pub fn solve(self, inp: &[u32; LENGTH]) -> [u32; LENGTH] {
        let mut out = *inp;
        out.copy_from_slice(&self.answer(inp));
        out
    }

    /// The output for an input of any length (the figures' prompts); `random` sorts ascending.
    pub fn answer(self, inp: &[u32]) -> Vec<u32> {
        let mut out = inp.to_vec();
        match self {
            Task::Ascending | Task::Random => out.sort_unstable(),
            Task::Descending => out.sort_unstable_by(|a, b| b.cmp(a)),
            Task::Add1 => out.iter_mut().for_each(|x| *x += 1),
            Task::Add2 => out.iter_mut().for_each(|x| *x += 2),
            Task::AscendingAdd1 => {
                out.sort_unstable();
                out.iter_mut().for_each(|x| *x += 1);
            }
            Task::DoubleHist => {
                for (i, o) in out.iter_mut().enumerate() {
                    // A count of 10 (all equal) is outside the vocabulary; clamp like a 9 would
                    // never happen in practice (probability 8 / 8^10).
                    *o =
                        (inp.iter().filter(|&&y| y == inp[i]).count() as u32).min(VOCAB as u32 - 1);
                }
            }
        }
        out
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// FNV-1a over the input values (one byte each).
pub fn input_hash(inp: &[u32; LENGTH]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in inp {
        h ^= x as u64 & 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn split_of(inp: &[u32; LENGTH]) -> Split {
    if input_hash(inp).is_multiple_of(4) {
        Split::Test
    } else {
        Split::Train
    }
}

/// One input as the authors draw it: with probability 0.5, an input with more than 5 distinct values
/// is rejected and redrawn (this makes repeated values, which sorting must handle, more common).
pub fn draw_input(rng: &mut StdRng) -> [u32; LENGTH] {
    loop {
        let mut inp = [0u32; LENGTH];
        for x in inp.iter_mut() {
            *x = rng.random_range(0..NUM_DIGITS);
        }
        if rng.random::<f64>() < 0.5 {
            let mut seen = [false; NUM_DIGITS as usize];
            inp.iter().for_each(|&x| seen[x as usize] = true);
            if seen.iter().filter(|&&s| s).count() > LENGTH / 2 {
                continue;
            }
        }
        return inp;
    }
}

/// An input of the given split.
pub fn draw(rng: &mut StdRng, split: Split) -> [u32; LENGTH] {
    loop {
        let inp = draw_input(rng);
        if split_of(&inp) == split {
            return inp;
        }
    }
}

/// Examples `(input, output)`; sample `i` of the list has index `idx0 + i` (for `random`).
pub fn examples(
    task: Task,
    split: Split,
    n: usize,
    idx0: usize,
    rng: &mut StdRng,
) -> Vec<([u32; LENGTH], [u32; LENGTH])> {
    (0..n)
        .map(|i| {
            let inp = draw(rng, split);
            (inp, task.for_index(idx0 + i).solve(&inp))
        })
        .collect()
}

/// The generator of training batch `step` of a run seeded `seed`.
pub fn batch_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (step as u64 + 1))
}

/// A training batch as token ids: `(ids (B, T), targets (B, 10))`. Without `content_only` the ids are
/// `[0]*p + input + output[..9]` (`T = p + 19`); with it (prefix-tuning, where the prefix takes the
/// first `p` positions) `input + output[..9]` (`T = 19`). The targets are the 10 outputs, predicted at
/// the last 10 positions.
pub fn batch_ids(
    ex: &[([u32; LENGTH], [u32; LENGTH])],
    p: usize,
    content_only: bool,
) -> (Vec<u32>, Vec<u32>, usize) {
    let pad = if content_only { 0 } else { p };
    let t = pad + 2 * LENGTH - 1;
    let mut ids = Vec::with_capacity(ex.len() * t);
    let mut tgt = Vec::with_capacity(ex.len() * LENGTH);
    for (inp, out) in ex {
        ids.extend(std::iter::repeat_n(0u32, pad));
        ids.extend_from_slice(inp);
        ids.extend_from_slice(&out[..LENGTH - 1]);
        tgt.extend_from_slice(out);
    }
    (ids, tgt, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_match_the_authors_definitions() {
        let inp = [2, 6, 0, 1, 4, 6, 3, 0, 1, 2];
        assert_eq!(Task::Ascending.solve(&inp), [0, 0, 1, 1, 2, 2, 3, 4, 6, 6]);
        assert_eq!(Task::Descending.solve(&inp), [6, 6, 4, 3, 2, 2, 1, 1, 0, 0]);
        assert_eq!(Task::Add2.solve(&inp), [4, 8, 2, 3, 6, 8, 5, 2, 3, 4]);
        assert_eq!(
            Task::AscendingAdd1.solve(&inp),
            [1, 1, 2, 2, 3, 3, 4, 5, 7, 7]
        );
        assert_eq!(Task::DoubleHist.solve(&inp), [2, 2, 2, 2, 1, 2, 1, 2, 2, 2]);
    }

    #[test]
    fn split_is_a_fixed_quarter() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let test = (0..n)
            .filter(|_| split_of(&draw_input(&mut rng)) == Split::Test)
            .count();
        let frac = test as f64 / n as f64;
        assert!((frac - 0.25).abs() < 0.02, "test fraction {frac}");
        // FNV-1a of the probe input, computed independently (Python): the split is pinned.
        assert_eq!(
            input_hash(&[2, 6, 0, 1, 4, 6, 3, 0, 1, 2]),
            0xd06fdbdc07882d0c
        );
        let mut a = batch_rng(3, 5);
        let mut b = batch_rng(3, 5);
        assert_eq!(draw_input(&mut a), draw_input(&mut b));
    }
}
