//! Whole-vector operations on prefix vectors, for the editor and scripts: seeded Gaussian samples,
//! the Euclidean norm, growing or shrinking the prefix axis, and interpolating two prefixes.

use crate::arrays::Array;
use crate::prefix::Prefix;
use rand::{Rng, SeedableRng};

/// Standard normal samples (Box-Muller) from a seeded generator, so "randomize" is reproducible.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = rng.random::<f32>();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// `a` with `axis` resized to `new` (kept entries stay, new ones are zero).
pub fn resize_axis(a: &Array, axis: usize, new: usize) -> Array {
    let mut shape = a.shape.clone();
    let old = shape[axis];
    shape[axis] = new;
    let outer: usize = a.shape[..axis].iter().product();
    let inner: usize = a.shape[axis + 1..].iter().product();
    let mut out = Array::zeros(&shape);
    for o in 0..outer {
        for k in 0..old.min(new) {
            let src = (o * old + k) * inner;
            let dst = (o * new + k) * inner;
            out.data[dst..dst + inner].copy_from_slice(&a.data[src..src + inner]);
        }
    }
    out
}

/// `(1 - t) a + t b`, elementwise, for two prefixes of the same kind and shape; `None` otherwise.
pub fn interpolate(a: &Prefix, b: &Prefix, t: f32) -> Option<Prefix> {
    let mix = |x: &Array, y: &Array| -> Option<Array> {
        (x.shape == y.shape).then(|| Array {
            shape: x.shape.clone(),
            data: x
                .data
                .iter()
                .zip(&y.data)
                .map(|(u, v)| (1.0 - t) * u + t * v)
                .collect(),
        })
    };
    Some(match (a, b) {
        (Prefix::SoftPrompt(x), Prefix::SoftPrompt(y)) => Prefix::SoftPrompt(mix(x, y)?),
        (Prefix::Hidden(x), Prefix::Hidden(y)) => Prefix::Hidden(mix(x, y)?),
        (
            Prefix::KeyValue {
                keys: k1,
                values: v1,
            },
            Prefix::KeyValue {
                keys: k2,
                values: v2,
            },
        ) => Prefix::KeyValue {
            keys: mix(k1, k2)?,
            values: mix(v1, v2)?,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_existing_tokens() {
        let a = Array {
            shape: vec![2, 2, 3],
            data: (0..12).map(|x| x as f32).collect(),
        };
        let r = resize_axis(&a, 1, 1);
        assert_eq!(r.shape, vec![2, 1, 3]);
        assert_eq!(r.data, vec![0., 1., 2., 6., 7., 8.]);
    }

    #[test]
    fn gaussian_is_seeded() {
        assert_eq!(gaussian(3, 5), gaussian(3, 5));
        assert_ne!(gaussian(3, 5), gaussian(4, 5));
        let g = gaussian(1, 20000);
        let mean = g.iter().sum::<f32>() / g.len() as f32;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / g.len() as f32;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn interpolation_mixes_and_refuses_mismatched_prefixes() {
        let a = Prefix::SoftPrompt(Array {
            shape: vec![1, 2],
            data: vec![0.0, 4.0],
        });
        let b = Prefix::SoftPrompt(Array {
            shape: vec![1, 2],
            data: vec![2.0, 0.0],
        });
        let Some(Prefix::SoftPrompt(m)) = interpolate(&a, &b, 0.25) else {
            panic!("same kind and shape must interpolate");
        };
        assert_eq!(m.data, vec![0.5, 3.0]);
        let c = Prefix::SoftPrompt(Array {
            shape: vec![2, 1],
            data: vec![0.0, 4.0],
        });
        assert!(interpolate(&a, &c, 0.5).is_none());
    }
}
