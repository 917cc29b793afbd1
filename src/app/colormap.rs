//! Colour maps (from real tables, see `colormap_tables.rs`) and the value scales of the heatmaps.

use egui::Color32;

pub use crate::colormap::ColorMap;

/// The library's diverging map ([`crate::colormap::diverging`]) as an egui colour.
pub fn diverging(t: f32) -> Color32 {
    rgb(crate::colormap::diverging(t))
}

/// A colour map sample as an egui colour.
pub fn sample(cmap: ColorMap, t: f32) -> Color32 {
    rgb(cmap.sample(t))
}

fn rgb([r, g, b]: crate::colormap::Rgb) -> Color32 {
    Color32::from_rgb(r, g, b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scale {
    Linear,
    Log,
    Power,
}

impl Scale {
    pub const ALL: [Scale; 3] = [Scale::Linear, Scale::Log, Scale::Power];
    pub fn label(self) -> &'static str {
        match self {
            Scale::Linear => "linear",
            Scale::Log => "log",
            Scale::Power => "power",
        }
    }
}

/// How attention values (0..=1) map to the colour map's 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Norm {
    pub scale: Scale,
    /// Exponent of the power scale (below 1 lifts small values).
    pub gamma: f32,
    /// Smallest value the log scale shows (everything below is drawn as it).
    pub log_floor: f32,
    pub cmap: ColorMap,
}

impl Default for Norm {
    fn default() -> Self {
        Norm {
            scale: Scale::Linear,
            gamma: 0.5,
            log_floor: 1e-4,
            cmap: ColorMap::Viridis,
        }
    }
}

impl Norm {
    /// Position of `x` on the colour bar, for values in `0..=hi`.
    pub fn position(&self, x: f32, hi: f32) -> f32 {
        let hi = hi.max(f32::MIN_POSITIVE);
        match self.scale {
            Scale::Linear => x / hi,
            Scale::Power => (x / hi).clamp(0.0, 1.0).powf(self.gamma),
            Scale::Log => {
                let lo = self.log_floor.clamp(1e-12, hi * 0.5).log10();
                (x.max(1e-12).log10() - lo) / (hi.log10() - lo)
            }
        }
        .clamp(0.0, 1.0)
    }

    /// Inverse of [`Norm::position`]: the value at a colour-bar position (for tick labels).
    pub fn value_at(&self, t: f32, hi: f32) -> f32 {
        let t = t.clamp(0.0, 1.0);
        match self.scale {
            Scale::Linear => t * hi,
            Scale::Power => hi * t.powf(1.0 / self.gamma.max(1e-3)),
            Scale::Log => {
                let lo = self.log_floor.clamp(1e-12, hi * 0.5).log10();
                10f32.powf(lo + t * (hi.log10() - lo))
            }
        }
    }

    pub fn color(&self, x: f32, hi: f32) -> Color32 {
        sample(self.cmap, self.position(x, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_the_published_ends() {
        // viridis starts dark purple (68, 1, 84) and ends yellow (253, 231, 37).
        assert_eq!(sample(ColorMap::Viridis, 0.0), Color32::from_rgb(68, 1, 84));
        assert_eq!(
            sample(ColorMap::Viridis, 1.0),
            Color32::from_rgb(253, 231, 37)
        );
        assert_eq!(diverging(0.0), Color32::from_rgb(247, 247, 247));
        assert_eq!(diverging(1.0), Color32::from_rgb(103, 0, 31));
    }

    #[test]
    fn scales_invert() {
        for scale in Scale::ALL {
            let n = Norm {
                scale,
                ..Norm::default()
            };
            for x in [0.001f32, 0.02, 0.3, 0.9] {
                let t = n.position(x, 1.0);
                assert!(
                    (n.value_at(t, 1.0) - x).abs() < 1e-4 * x.max(1.0),
                    "{scale:?} {x}"
                );
            }
        }
    }
}
