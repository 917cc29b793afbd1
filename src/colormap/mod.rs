//! The colour maps of every picture prefixscope makes, on screen and in files: one set of tables
//! (`tables.rs`, copied from matplotlib) and one interpolation, so that the window and an exported
//! figure paint the same value in the same colour.
//!
//! Colours are sRGB `[r, g, b]` bytes; the window converts them to egui's type, the figures write
//! them as SVG `rgb()`.

mod tables;

use tables::{MAGMA, RDBU, VIRIDIS};

/// An sRGB colour.
pub type Rgb = [u8; 3];

/// The sequential maps for attention values (0..=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColorMap {
    Viridis,
    Magma,
}

impl ColorMap {
    pub const ALL: [ColorMap; 2] = [ColorMap::Viridis, ColorMap::Magma];

    pub fn label(self) -> &'static str {
        match self {
            ColorMap::Viridis => "viridis",
            ColorMap::Magma => "magma",
        }
    }

    /// `t` in 0..=1 to a colour (linear interpolation between the 256 table entries; a non-finite
    /// `t` gives the low end).
    pub fn sample(self, t: f32) -> Rgb {
        let table: &[[u8; 3]] = match self {
            ColorMap::Viridis => &VIRIDIS,
            ColorMap::Magma => &MAGMA,
        };
        lerp_table(table, t)
    }
}

/// How a value in `0..=hi` becomes a colour-map position in `0..=1`: the window's "scale" choice,
/// which an exported figure uses too, so the file paints each value as the screen does.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ValueScale {
    #[default]
    Linear,
    /// `log10(x)` from `log10(floor)` to `log10(hi)` (values below `floor` take the low end).
    Log { floor: f32 },
    /// `(x / hi)^gamma` (below 1 lifts small values).
    Power { gamma: f32 },
}

impl ValueScale {
    /// Position of `x` for values in `0..=hi`, clamped to `0..=1`.
    pub fn position(self, x: f32, hi: f32) -> f32 {
        let hi = hi.max(f32::MIN_POSITIVE);
        match self {
            ValueScale::Linear => x / hi,
            ValueScale::Power { gamma } => (x / hi).clamp(0.0, 1.0).powf(gamma),
            ValueScale::Log { floor } => {
                let lo = floor.clamp(1e-12, hi * 0.5).log10();
                (x.max(1e-12).log10() - lo) / (hi.log10() - lo)
            }
        }
        .clamp(0.0, 1.0)
    }

    /// Inverse of [`ValueScale::position`]: the value at a position (tick labels).
    pub fn value_at(self, t: f32, hi: f32) -> f32 {
        let t = t.clamp(0.0, 1.0);
        match self {
            ValueScale::Linear => t * hi,
            ValueScale::Power { gamma } => hi * t.powf(1.0 / gamma.max(1e-3)),
            ValueScale::Log { floor } => {
                let lo = floor.clamp(1e-12, hi * 0.5).log10();
                10f32.powf(lo + t * (hi.log10() - lo))
            }
        }
    }

    /// "linear", "log from 1e-4", "power 0.5".
    pub fn describe(self) -> String {
        match self {
            ValueScale::Linear => "linear".into(),
            ValueScale::Log { floor } => format!("log from {floor:.0e}"),
            ValueScale::Power { gamma } => format!("power {gamma:.2}"),
        }
    }
}

/// The diverging map for signed values: `t` in -1..=1, blue below zero, white (247, 247, 247) at
/// zero, red above (ColorBrewer RdBu, colour-blind safe).
pub fn diverging(t: f32) -> Rgb {
    // RDBU runs red -> blue; reversed so that positive (renormalized above pretrained) is red.
    let t = if t.is_finite() { t } else { 0.0 };
    lerp_table(&RDBU, 0.5 - 0.5 * t.clamp(-1.0, 1.0))
}

fn lerp_table(table: &[[u8; 3]], t: f32) -> Rgb {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (table.len() - 1) as f32;
    let i = (x.floor() as usize).min(table.len() - 2);
    let f = x - i as f32;
    let (a, b) = (table[i], table[i + 1]);
    let mix = |k: usize| (a[k] as f32 + (b[k] as f32 - a[k] as f32) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_the_published_ends() {
        // matplotlib: viridis runs from (68, 1, 84) to (253, 231, 37), magma from (0, 0, 4) to
        // (252, 253, 191); RdBu's middle is (247, 247, 247) and its red end (103, 0, 31).
        assert_eq!(ColorMap::Viridis.sample(0.0), [68, 1, 84]);
        assert_eq!(ColorMap::Viridis.sample(1.0), [253, 231, 37]);
        assert_eq!(ColorMap::Magma.sample(0.0), [0, 0, 4]);
        assert_eq!(ColorMap::Magma.sample(1.0), [252, 253, 191]);
        assert_eq!(diverging(0.0), [247, 247, 247]);
        assert_eq!(diverging(1.0), [103, 0, 31]);
        assert_eq!(diverging(-1.0), [5, 48, 97]);
        assert_eq!(diverging(f32::NAN), [247, 247, 247]);
    }
}
