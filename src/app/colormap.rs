//! The value scales of the heatmaps (linear, log, power) and egui colours from the library's maps (`crate::colormap`).

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
    /// The library's value scale for these settings: the maps on screen and an exported figure
    /// both go through it.
    pub fn value_scale(&self) -> crate::colormap::ValueScale {
        use crate::colormap::ValueScale;
        match self.scale {
            Scale::Linear => ValueScale::Linear,
            Scale::Log => ValueScale::Log {
                floor: self.log_floor,
            },
            Scale::Power => ValueScale::Power { gamma: self.gamma },
        }
    }

    /// Position of `x` on the colour bar, for values in `0..=hi`.
    pub fn position(&self, x: f32, hi: f32) -> f32 {
        self.value_scale().position(x, hi)
    }

    /// Inverse of [`Norm::position`]: the value at a colour-bar position (for tick labels).
    pub fn value_at(&self, t: f32, hi: f32) -> f32 {
        self.value_scale().value_at(t, hi)
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
