//! The paper's bias plot (Petrov, Torr and Bibi, Fig. 3): a prefix can only add a bias to the
//! attention block output, `t_pt_i = (1 - a_i) t_i + sum_k A_pt[i,k] v_k`, so the output at a
//! position moves by a shift whose direction barely depends on the content. This module computes
//! that output (`blocks.{l}.hook_attn_out`, [`crate::hooks`]) at one position of several prompts,
//! with and without a prefix, and picks the two dimensions the prefix moves most.

use crate::error::{Error, Result};
use crate::model::{LayerSel, Transformer};
use crate::prefix::Prefix;

/// One prompt's attention block output at the chosen position: `(d_model,)` each.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasPoint {
    /// The position the outputs are read at (0-based in the prompt).
    pub position: usize,
    pub without: Vec<f32>,
    pub with: Vec<f32>,
}

/// The attention block output of layer `layer` at position `n - 1 - from_end` of `ids` (`n` the
/// prompt length), in the pretrained run (`Transformer::pretrained`, the paper's "no prefix") and
/// with `prefix`. A prompt shorter than `from_end + 1` tokens is refused (input error).
pub fn block_output_at(
    model: &dyn Transformer,
    ids: &[u32],
    prefix: &Prefix,
    layer: usize,
    from_end: usize,
) -> Result<BiasPoint> {
    crate::capture::check_ids(model, ids, prefix.len())?;
    if from_end >= ids.len() {
        return Err(Error::input(
            "bias plot position",
            format!("at most {} tokens from the end", ids.len() - 1),
            from_end.to_string(),
        ));
    }
    let sel = LayerSel::Only(vec![layer]);
    let position = ids.len() - 1 - from_end;
    let out = |run: crate::model::Run| -> Result<Vec<f32>> {
        let lr = run
            .layers
            .iter()
            .find(|r| r.layer == layer)
            .ok_or_else(|| {
                Error::input(
                    "bias plot layer",
                    format!("a layer below {}", model.info().n_layers),
                    layer.to_string(),
                )
            })?;
        let o = model.attn_block_output(layer, &lr.z)?;
        Ok(o.get(position)?.to_vec1::<f32>()?)
    };
    let without = out(model.pretrained(ids, prefix.len(), &sel)?)?;
    let with = out(model.forward(ids, Some(prefix), &sel)?)?;
    Ok(BiasPoint {
        position,
        without,
        with,
    })
}

/// The two dimensions with the largest mean |shift| (`with − without`) over `points`, largest
/// first; `(0, 1)` when there are fewer than two dimensions' worth of data.
pub fn top_shift_dims(points: &[BiasPoint]) -> (usize, usize) {
    let d = points.first().map_or(0, |p| p.with.len());
    if d < 2 {
        return (0, 1.min(d.saturating_sub(1)));
    }
    let mut mean = vec![0f64; d];
    for p in points {
        for (m, (a, b)) in mean.iter_mut().zip(p.with.iter().zip(&p.without)) {
            *m += (a - b).abs() as f64;
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    // Stable: ties keep the lower dimension first.
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
    (order[0], order[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(without: &[f32], with: &[f32]) -> BiasPoint {
        BiasPoint {
            position: 0,
            without: without.to_vec(),
            with: with.to_vec(),
        }
    }

    #[test]
    fn the_two_most_moved_dimensions() {
        // Mean |shift| per dimension: d0 0.1, d1 2.0, d2 0.5, d3 1.0 (the second point flips d3).
        let pts = [
            pt(&[0.0, 0.0, 0.0, 0.0], &[0.1, 2.0, 0.5, 1.0]),
            pt(&[1.0, 1.0, 1.0, 1.0], &[1.1, 3.0, 1.5, 0.0]),
        ];
        assert_eq!(top_shift_dims(&pts), (1, 3));
        assert_eq!(top_shift_dims(&[pt(&[0.0, 0.0], &[0.0, 0.0])]), (0, 1));
        assert_eq!(top_shift_dims(&[]), (0, 0));
    }
}
