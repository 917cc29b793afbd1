//! Rotary position embeddings, every variant a supported checkpoint can ask for, written once.
//!
//! A [`Rope`] turns a base (`rope_theta`), an optional scaling and the rotated width into the inverse
//! frequencies `inv_freq` `(rotary_dim / 2,)` and the factor that multiplies cos and sin
//! (`attention_factor`, 1 except for YaRN). Formulas follow transformers'
//! `modeling_rope_utils.py` (`_compute_{default,linear_scaling,llama3,yarn}_parameters`) and, for GGUF
//! `rope_freqs.weight`, llama.cpp's `ggml_rope_ext` (each frequency is divided by its factor:
//! `theta = p * theta_scale^i / freq_factors[i]`). Any other variant is refused by the config parsers
//! before a [`Rope`] is made.
//!
//! Rotation is rotate-half (Hugging Face / NeoX order) over the first `rotary_dim` dimensions of a head;
//! the rest pass through (`partial_rotary_factor`).

use candle_core::{Device, Tensor};

/// How the base frequencies are rescaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN (arXiv 2309.00071) as transformers computes it.
    Yarn {
        factor: f64,
        /// The context the frequencies were trained for (`original_max_position_embeddings`, else
        /// `max_position_embeddings`).
        original_max_position_embeddings: f64,
        /// Multiplies cos and sin; `None`: `0.1 ln(factor) + 1` (or the `mscale` form).
        attention_factor: Option<f64>,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Round the correction range to whole dimensions (transformers' default, llama.cpp's too).
        truncate: bool,
    },
    /// GGUF `rope_freqs.weight` `(rotary_dim / 2,)`: frequency `i` divided by `factors[i]`.
    FreqFactors(Vec<f32>),
}

impl RopeScaling {
    /// The name transformers uses (`rope_type`), or `gguf rope_freqs`.
    pub fn kind(&self) -> &'static str {
        match self {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::FreqFactors(_) => "rope_freqs",
        }
    }

    /// The Hugging Face `rope_scaling` dictionary (4.x spelling) for this scaling; `FreqFactors` has
    /// no Hugging Face spelling and is written under its own `rope_type`, which parsers refuse.
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let mut v = json!({
                    "rope_type": "yarn", "factor": factor, "beta_fast": beta_fast,
                    "beta_slow": beta_slow,
                    "original_max_position_embeddings": *original_max_position_embeddings as u64,
                    "truncate": truncate,
                });
                if let Some(a) = attention_factor {
                    v["attention_factor"] = (*a).into();
                }
                if let Some(m) = mscale {
                    v["mscale"] = (*m).into();
                }
                if let Some(m) = mscale_all_dim {
                    v["mscale_all_dim"] = (*m).into();
                }
                v
            }
            RopeScaling::FreqFactors(f) => json!({"rope_type": "gguf_rope_freqs", "factors": f}),
        }
    }
}

impl serde::Serialize for RopeScaling {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_hf_json().serialize(s)
    }
}

/// One layer's rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
    /// Dimensions rotated per head (even, at most the head dimension).
    pub rotary_dim: usize,
}

impl Rope {
    /// The inverse frequencies `(rotary_dim / 2,)`, in f32 like transformers keeps them.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.rotary_dim;
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / self.theta.powf(2.0 * i as f64 / dim as f64))
            .collect();
        let scaled: Vec<f64> = match &self.scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::FreqFactors(ff)) => {
                base.iter().zip(ff).map(|(f, &k)| f / k as f64).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            }) => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: ctx,
                beta_fast,
                beta_slow,
                truncate,
                ..
            }) => {
                let d = dim as f64;
                // Inverse dimension formula: the dimension that makes `rot` turns over `ctx` positions.
                let corr = |rot: f64| {
                    (d * (ctx / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, high) = (low.max(0.0), high.min(d - 1.0));
                let span = if low == high { 0.001 } else { high - low };
                base.iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }

    /// The factor that multiplies cos and sin (YaRN's attention scaling; 1 otherwise).
    pub fn attention_factor(&self) -> f64 {
        match &self.scaling {
            Some(RopeScaling::Yarn {
                factor,
                attention_factor,
                mscale,
                mscale_all_dim,
                ..
            }) => {
                if let Some(a) = attention_factor {
                    return *a;
                }
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                match (mscale, mscale_all_dim) {
                    (Some(m), Some(ma)) => get_mscale(*factor, *m) / get_mscale(*factor, *ma),
                    _ => get_mscale(*factor, 1.0),
                }
            }
            _ => 1.0,
        }
    }

    /// One line for `inspect`: variant, base and rotated width.
    pub fn describe(&self, head_dim: usize) -> String {
        let kind = match &self.scaling {
            None => "default".to_string(),
            Some(RopeScaling::Linear { factor }) => format!("linear (factor {factor})"),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => format!(
                "llama3 (factor {factor}, low {low_freq_factor}, high {high_freq_factor}, original context {original_max_position_embeddings})"
            ),
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            }) => format!(
                "yarn (factor {factor}, original context {original_max_position_embeddings}, attention factor {:.4})",
                self.attention_factor()
            ),
            Some(RopeScaling::FreqFactors(f)) => {
                format!("rope_freqs (GGUF, {} frequency factors)", f.len())
            }
        };
        let width = if self.rotary_dim == head_dim {
            String::new()
        } else {
            format!(", {} of {head_dim} dimensions rotated", self.rotary_dim)
        };
        format!("{kind}, base {}{width}", self.theta)
    }
}

/// cos/sin tables of one [`Rope`] for positions `0..len`, grown on demand: every layer of every run
/// needs the same rows.
pub struct RopeTables {
    rope: Rope,
    inv_freq: Vec<f32>,
    scale: f64,
    cache: std::sync::Mutex<Option<(Tensor, Tensor)>>,
}

impl RopeTables {
    pub fn new(rope: Rope) -> Self {
        RopeTables {
            inv_freq: rope.inv_freq(),
            scale: rope.attention_factor(),
            rope,
            cache: std::sync::Mutex::new(None),
        }
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// cos/sin `(t, rotary_dim / 2)` for positions `start..start + t`.
    pub fn tables(&self, start: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let end = start + t;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let have = cache.as_ref().map_or(0, |(c, _)| c.dim(0).unwrap_or(0));
        if have < end {
            *cache = Some(self.compute(end.max(2 * have).max(256))?);
        }
        let Some((cos, sin)) = cache.as_ref() else {
            candle_core::bail!("RoPE table cache is empty after filling it");
        };
        Ok((cos.narrow(0, start, t)?, sin.narrow(0, start, t)?))
    }

    fn compute(&self, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for &f in &self.inv_freq {
                // Angles in f64 so long positions keep their precision, then f32 like the reference.
                let a = pos as f64 * f as f64;
                cos.push((a.cos() * self.scale) as f32);
                sin.push((a.sin() * self.scale) as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (len, half), &Device::Cpu)?,
        ))
    }

    /// Rotate `x` `(heads, t, head_dim)` whose rows sit at positions `start..start + t`.
    pub fn apply(&self, x: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let (_, t, hd) = x.dims3()?;
        let (cos, sin) = self.tables(start, t)?;
        let rd = self.rope.rotary_dim;
        // candle's fused kernel has no backward pass (it would silently cut the gradient): tracked
        // inputs and other dtypes take the composition `x cos + rotate_half(x) sin`.
        let slow = x.track_op() || x.dtype() != candle_core::DType::F32;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let rot = |x: &Tensor| {
            let x = x.unsqueeze(0)?;
            if slow {
                candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?.squeeze(0)
            } else {
                candle_nn::rotary_emb::rope(&x, &cos, &sin)?.squeeze(0)
            }
        };
        if rd == hd {
            rot(x)
        } else {
            let r = rot(&x.narrow(2, 0, rd)?.contiguous()?)?;
            Tensor::cat(&[&r, &x.narrow(2, rd, hd - rd)?], 2)?.contiguous()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: Option<RopeScaling>) -> Rope {
        Rope {
            theta: 500_000.0,
            scaling,
            rotary_dim: 64,
        }
    }

    /// Llama 3.2's published frequencies (factor 32, low 1, high 4, 8192), recomputed by hand from
    /// the three regions of Meta's `apply_scaling` in `llama/model.py`.
    #[test]
    fn llama3_scaling_follows_the_three_regions() {
        let s = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = rope(None).inv_freq();
        let scaled = rope(Some(s)).inv_freq();
        for (i, (&f, &g)) in plain.iter().zip(&scaled).enumerate() {
            let wavelen = 2.0 * std::f64::consts::PI / f as f64;
            let expect = if wavelen < 8192.0 / 4.0 {
                f as f64
            } else if wavelen > 8192.0 {
                f as f64 / 32.0
            } else {
                let smooth = (8192.0 / wavelen - 1.0) / 3.0;
                (1.0 - smooth) * f as f64 / 32.0 + smooth * f as f64
            };
            assert!(
                ((g as f64 - expect) / expect).abs() < 1e-6,
                "frequency {i}: {g} against {expect}"
            );
        }
        // All three regions occur for this base and width.
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] as f64 - plain[31] as f64 / 32.0).abs() < 1e-12);
        assert!(scaled
            .iter()
            .zip(&plain)
            .any(|(g, f)| g != f && *g != f / 32.0));
    }

    #[test]
    fn linear_and_freq_factors_divide_each_frequency() {
        let plain = rope(None).inv_freq();
        let lin = rope(Some(RopeScaling::Linear { factor: 4.0 })).inv_freq();
        let ff: Vec<f32> = (0..32).map(|i| 1.0 + i as f32).collect();
        let fac = rope(Some(RopeScaling::FreqFactors(ff.clone()))).inv_freq();
        for i in 0..32 {
            assert!((lin[i] - plain[i] / 4.0).abs() <= plain[i] * 1e-7);
            assert!((fac[i] - plain[i] / ff[i]).abs() <= plain[i] * 1e-7);
        }
        // Base frequencies: theta^(-2i/d).
        assert!(((plain[1] as f64 / 500_000f64.powf(-2.0 / 64.0)) - 1.0).abs() < 1e-7);
    }

    /// Frequencies transformers 5.23.0 computes (`ROPE_INIT_FUNCTIONS[...](LlamaConfig(head_dim=64,
    /// ...))`, printed by hand), at a few indices across the three regions / the ramp.
    #[test]
    fn llama3_and_yarn_match_transformers() {
        let close = |got: f32, want: f64, what: &str| {
            assert!(
                ((got as f64 - want) / want).abs() < 2e-6,
                "{what}: {got} against transformers {want}"
            )
        };
        let l3 = rope(Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }))
        .inv_freq();
        let want = [
            (0, 1.0),
            (10, 0.016560440883040428),
            (16, 0.000429556705057621),
            (18, 1.9461638657958247e-05),
            (20, 8.570255886297673e-06),
            (22, 3.7740544485131977e-06),
            (25, 1.1028836297555245e-06),
            (31, 9.418306490260875e-08),
        ];
        for (i, w) in want {
            close(l3[i], w, &format!("llama3 frequency {i}"));
        }
        let yarn = Rope {
            theta: 10_000.0,
            scaling: Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 4096.0,
                attention_factor: None,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: None,
                mscale_all_dim: None,
                truncate: true,
            }),
            rotary_dim: 64,
        };
        let f = yarn.inv_freq();
        let want = [
            (0, 1.0),
            (5, 0.23713736236095428),
            (10, 0.05623412877321243),
            (15, 0.009488517418503761),
            (20, 0.0013378867879509926),
            (25, 0.00018747354624792933),
            (31, 3.333803761051968e-05),
        ];
        for (i, w) in want {
            close(f[i], w, &format!("yarn frequency {i}"));
        }
        assert!((yarn.attention_factor() - 1.138629436111989).abs() < 1e-12);
    }

    #[test]
    fn partial_rotation_leaves_the_tail_alone() {
        let t = RopeTables::new(Rope {
            theta: 10_000.0,
            scaling: None,
            rotary_dim: 4,
        });
        let x = Tensor::from_vec(
            (0..2 * 3 * 6).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
            (2, 3, 6),
            &Device::Cpu,
        )
        .unwrap();
        let y = t.apply(&x, 5).unwrap();
        let (xv, yv) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for row in 0..6 {
            let pos = 5 + row % 3;
            let (a, b) = (&xv[row * 6..row * 6 + 6], &yv[row * 6..row * 6 + 6]);
            assert_eq!(a[4..], b[4..]);
            // Rotate-half over 4 dims: pairs (0, 2) and (1, 3), frequencies 1 and 10000^(-1/2).
            for (j, freq) in [(0usize, 1.0f64), (1, 0.01)] {
                let ang = pos as f64 * freq;
                let (c, s) = (ang.cos() as f32, ang.sin() as f32);
                assert!((b[j] - (a[j] * c - a[j + 2] * s)).abs() < 1e-5);
                assert!((b[j + 2] - (a[j + 2] * c + a[j] * s)).abs() < 1e-5);
            }
        }
    }
}
