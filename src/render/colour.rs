//! Values to colours: the display window (percentiles of the section by default) and the colour maps.

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, VoxelError};

/// The default window: these percentiles of the section's finite non-zero values.
pub const DEFAULT_PERCENTILES: (f64, f64) = (2.0, 98.0);

/// Values at or below `lo` get the first colour of the map, at or above `hi` the last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub lo: f64,
    pub hi: f64,
}

impl Window {
    /// A window from the user: two finite numbers, `lo < hi`.
    pub fn new(lo: f64, hi: f64) -> Result<Window> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(VoxelError::Invalid(format!(
                "window {lo},{hi}: need two finite numbers LO,HI with LO < HI"
            )));
        }
        Ok(Window { lo, hi })
    }

    /// The default window: the 2nd and 98th percentiles (numpy's linear interpolation) of the finite non-zero
    /// values (of all values when none is non-zero). When these coincide (a mask, a constant image) the window
    /// starts at the smallest value instead, or one below the value, so that the values are drawn bright.
    pub fn from_values(values: impl Iterator<Item = f64>) -> Window {
        let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let mut chosen: Vec<f64> = finite.iter().copied().filter(|&v| v != 0.0).collect();
        if chosen.is_empty() {
            chosen = finite;
        }
        if chosen.is_empty() {
            return Window { lo: 0.0, hi: 1.0 };
        }
        chosen.sort_unstable_by(f64::total_cmp);
        let (p_lo, p_hi) = DEFAULT_PERCENTILES;
        let mut lo = percentile(&chosen, p_lo);
        let hi = percentile(&chosen, p_hi);
        if hi <= lo {
            lo = if min < hi { min } else { hi - 1.0 };
        }
        Window { lo, hi }
    }

    /// Where `v` falls in the window, 0 to 1 (clamped).
    pub fn level(&self, v: f64) -> f64 {
        ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

impl FromStr for Window {
    type Err = VoxelError;

    fn from_str(s: &str) -> Result<Window> {
        let bad = || VoxelError::Invalid(format!("window {s:?}: expected LO,HI (two numbers)"));
        let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
        let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
        let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
        Window::new(lo, hi)
    }
}

/// numpy's `percentile(a, p)` (method "linear") of sorted, non-empty values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len() - 1;
    let pos = p / 100.0 * last as f64;
    let below = (pos.floor() as usize).min(last);
    let above = (below + 1).min(last);
    let frac = pos - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * frac
}

/// A colour map: linear grey (matplotlib's `gray`) or one of colorous's perceptual and diverging gradients.
#[derive(Clone, Copy)]
pub struct Colormap {
    name: &'static str,
    gradient: Option<colorous::Gradient>,
    reversed: bool,
}

/// The names `--cmap` and `--overlay-cmap` take (matplotlib's names; `rdbu_r` runs blue → white → red, the
/// diverging map for signed statistics).
pub const COLORMAP_NAMES: [&str; 10] = [
    "gray", "viridis", "magma", "inferno", "plasma", "cividis", "turbo", "rdbu_r", "rdbu",
    "spectral",
];

impl Colormap {
    pub fn gray() -> Colormap {
        Colormap {
            name: "gray",
            gradient: None,
            reversed: false,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The colour at `t` (0 to 1).
    pub fn colour(&self, t: f64) -> [u8; 3] {
        let t = t.clamp(0.0, 1.0);
        match self.gradient {
            None => {
                let g = (t * 255.0).round() as u8;
                [g, g, g]
            }
            Some(gradient) => {
                let t = if self.reversed { 1.0 - t } else { t };
                let c = gradient.eval_continuous(t);
                [c.r, c.g, c.b]
            }
        }
    }
}

impl fmt::Debug for Colormap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for Colormap {
    type Err = VoxelError;

    fn from_str(s: &str) -> Result<Colormap> {
        let lower = s.to_ascii_lowercase();
        let (gradient, reversed) = match lower.as_str() {
            "gray" | "grey" => return Ok(Colormap::gray()),
            "viridis" => (colorous::VIRIDIS, false),
            "magma" => (colorous::MAGMA, false),
            "inferno" => (colorous::INFERNO, false),
            "plasma" => (colorous::PLASMA, false),
            "cividis" => (colorous::CIVIDIS, false),
            "turbo" => (colorous::TURBO, false),
            // colorous's RED_BLUE runs red → blue, as matplotlib's RdBu does.
            "rdbu" => (colorous::RED_BLUE, false),
            "rdbu_r" => (colorous::RED_BLUE, true),
            "spectral" => (colorous::SPECTRAL, false),
            _ => {
                return Err(VoxelError::Invalid(format!(
                    "unknown colour map {s:?} (one of {})",
                    COLORMAP_NAMES.join(", ")
                )));
            }
        };
        let name = COLORMAP_NAMES
            .iter()
            .copied()
            .find(|n| *n == lower)
            .unwrap_or("gray");
        Ok(Colormap {
            name,
            gradient: Some(gradient),
            reversed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_numpy_linear() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // np.percentile(np.arange(1, 11), [0, 2, 50, 98, 100]) = 1, 1.18, 5.5, 9.82, 10
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!((percentile(&v, 2.0) - 1.18).abs() < 1e-12);
        assert_eq!(percentile(&v, 50.0), 5.5);
        assert!((percentile(&v, 98.0) - 9.82).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&[3.0], 98.0), 3.0);
    }

    #[test]
    fn default_window_ignores_zeros_and_nan() {
        let mut values = vec![0.0; 1000];
        values.extend((1..=10).map(f64::from));
        values.push(f64::NAN);
        let w = Window::from_values(values.into_iter());
        assert!(
            (w.lo - 1.18).abs() < 1e-12 && (w.hi - 9.82).abs() < 1e-12,
            "{w:?}"
        );
        // A 0/1 mask: the ones are drawn bright, not in a window of zero width.
        let mask = Window::from_values([0.0, 1.0, 1.0, 0.0].into_iter());
        assert_eq!((mask.lo, mask.hi), (0.0, 1.0));
        assert_eq!(mask.level(1.0), 1.0);
        let constant = Window::from_values([5.0; 4].into_iter());
        assert_eq!((constant.lo, constant.hi), (4.0, 5.0));
        let empty = Window::from_values([f64::NAN].into_iter());
        assert_eq!((empty.lo, empty.hi), (0.0, 1.0));
    }

    #[test]
    fn user_windows_are_checked() {
        let w: Window = "-5, 10.5".parse().unwrap();
        assert_eq!((w.lo, w.hi), (-5.0, 10.5));
        assert_eq!(w.level(-10.0), 0.0);
        assert_eq!(w.level(2.75), 0.5);
        for bad in ["5,1", "1,1", "1", "a,2", "1,inf", "nan,2"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn colour_maps() {
        let gray = Colormap::gray();
        assert_eq!(gray.colour(0.0), [0, 0, 0]);
        assert_eq!(gray.colour(1.0), [255, 255, 255]);
        assert_eq!(gray.colour(0.5), [128, 128, 128]);
        let viridis: Colormap = "Viridis".parse().unwrap();
        // matplotlib's viridis starts at #440154 and ends at #fde725.
        assert_eq!(viridis.colour(0.0), [0x44, 0x01, 0x54]);
        assert_eq!(viridis.colour(1.0), [0xfd, 0xe7, 0x25]);
        let rdbu_r: Colormap = "rdbu_r".parse().unwrap();
        let (neg, pos) = (rdbu_r.colour(0.0), rdbu_r.colour(1.0));
        assert!(neg[2] > neg[0] && pos[0] > pos[2], "{neg:?} {pos:?}");
        for name in COLORMAP_NAMES {
            assert_eq!(name.parse::<Colormap>().unwrap().name(), name);
        }
        assert!("jet".parse::<Colormap>().is_err());
    }
}
