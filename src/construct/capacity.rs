//! The counting experiment: how many different outputs one hard token gives against how many
//! random virtual tokens give, on a construction or a real model.

use super::*;

/// The counting experiment's result: how many different outputs one hard token can give against
/// how many random virtual tokens give.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Capacity {
    pub model: String,
    pub vocab_size: usize,
    /// Tokens generated per run.
    pub steps: usize,
    pub hard_tried: usize,
    pub hard_distinct: usize,
    pub soft_tried: usize,
    pub soft_distinct: usize,
    /// What was run, in words.
    pub protocol: String,
}

/// On construction (a): each of the V tokens alone at position 0 against `n_random` virtual tokens
/// with uniform random content, each followed by N greedy characters.
pub fn capacity_construction(n_random: usize, seed: u64) -> Result<Capacity> {
    let model = unconditional(UNCONDITIONAL_N, UNCONDITIONAL_T);
    let n = UNCONDITIONAL_N;
    let mut hard = HashSet::new();
    for v in 0..V as u32 {
        hard.insert(model.generate(None, &[v], Some(n))?.ids);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut soft = HashSet::new();
    let d = model.config().d_model;
    for _ in 0..n_random {
        let mut a = Array::zeros(&[1, d]);
        for x in a.data.iter_mut().take(n) {
            *x = rng.random::<f32>();
        }
        soft.insert(
            model
                .generate(Some(&Prefix::SoftPrompt(a)), &[], Some(n))?
                .ids,
        );
    }
    Ok(Capacity {
        model: format!("construction (a), N = {n}, T = {UNCONDITIONAL_T}"),
        vocab_size: V,
        steps: n,
        hard_tried: V,
        hard_distinct: hard.len(),
        soft_tried: n_random,
        soft_distinct: soft.len(),
        protocol: format!(
            "hard: each token alone at position 0; soft: a virtual token with uniform random content \
             in [0,1)^{n}; then {n} greedy tokens"
        ),
    })
}

/// On any model: a one-vector soft prompt set to each token's embedding row (a hard token) against
/// `n_random` random vectors with the embedding rows' per-coordinate mean and `spread` times their
/// standard deviation; each is
/// followed by the content `prompt` and `steps` greedy tokens (fewer if the context is shorter).
pub fn capacity_model(
    model: &dyn Transformer,
    name: &str,
    n_random: usize,
    steps: usize,
    prompt: &[u32],
    spread: f64,
    seed: u64,
) -> Result<Capacity> {
    let info = model.info().clone();
    if prompt.is_empty() {
        return Err(Error::input(
            "prompt",
            "at least one content token after the virtual token",
            "none",
        ));
    }
    // The last generated token needs no position of its own: 1 + prompt + steps - 1 positions.
    let steps = match info.max_positions {
        Some(m) => steps.min(m.saturating_sub(prompt.len())),
        None => steps,
    };
    if steps == 0 {
        return Err(Error::input(
            "steps",
            "at least 1 (and room in the context)",
            "0",
        ));
    }
    let d = info.d_model;
    let rows: Vec<Vec<f32>> = (0..info.vocab_size as u32)
        .map(|v| model.token_embedding(v))
        .collect::<Result<_>>()?;
    let run = |prefix: &Prefix| -> Result<Vec<u32>> {
        let mut ids = prompt.to_vec();
        let mut out = vec![];
        let none = LayerSel::Only(vec![]);
        for _ in 0..steps {
            let r = model.forward(&ids, Some(prefix), &none)?;
            let logits = r.logits_last.to_vec1::<f32>()?;
            let k = logits
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0 as u32;
            out.push(k);
            ids.push(k);
        }
        Ok(out)
    };
    let mut hard = HashSet::new();
    for r in &rows {
        hard.insert(run(&Prefix::SoftPrompt(Array {
            shape: vec![1, d],
            data: r.clone(),
        }))?);
    }
    let vn = rows.len() as f64;
    let mean: Vec<f64> = (0..d)
        .map(|c| rows.iter().map(|r| r[c] as f64).sum::<f64>() / vn)
        .collect();
    let sd: Vec<f64> = (0..d)
        .map(|c| {
            (rows
                .iter()
                .map(|r| (r[c] as f64 - mean[c]).powi(2))
                .sum::<f64>()
                / vn)
                .sqrt()
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut soft = HashSet::new();
    for _ in 0..n_random {
        let data = (0..d)
            .map(|c| {
                // Box-Muller: a standard normal from two uniforms.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
                let zn = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean[c] + spread * sd[c] * zn) as f32
            })
            .collect();
        soft.insert(run(&Prefix::SoftPrompt(Array {
            shape: vec![1, d],
            data,
        }))?);
    }
    Ok(Capacity {
        model: name.to_string(),
        vocab_size: info.vocab_size,
        steps,
        hard_tried: rows.len(),
        hard_distinct: hard.len(),
        soft_tried: n_random,
        soft_distinct: soft.len(),
        protocol: format!(
            "a one-vector soft prompt: each token's embedding row (hard) or a Gaussian vector with the \
             rows' per-coordinate mean and {spread} x their spread (soft); then content {prompt:?} and \
             {steps} greedy tokens"
        ),
    })
}
