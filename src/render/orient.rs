//! Which way a section faces on screen: the world direction of each voxel axis (nibabel's `io_orientation`, the
//! basis of `aff2axcodes` and `as_closest_canonical`), and how nilearn's `plot_anat` lays a section out (RAS+
//! display axes; axial sections with anterior up, coronal and sagittal with superior up; the subject's left on the
//! image's left unless radiological).

use crate::formats::Affine;

/// The world (RAS+) direction a voxel axis runs along: `world` 0 = x (toward R), 1 = y (toward A), 2 = z (toward
/// S); `flipped` when increasing the index moves toward L, P or I instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisDir {
    pub world: usize,
    pub flipped: bool,
}

impl AxisDir {
    /// The same axis walked backwards (a negative slice step).
    pub fn reversed(self) -> AxisDir {
        AxisDir {
            flipped: !self.flipped,
            ..self
        }
    }
}

/// The letters of each world axis, (negative end, positive end).
const LETTERS: [(char, char); 3] = [('L', 'R'), ('P', 'A'), ('I', 'S')];

/// nibabel's `io_orientation(affine)` for the three spatial voxel axes: the closest rotation to the affine's
/// direction cosines (polar decomposition), then for each voxel axis in turn the world axis it moves along most,
/// taken out of consideration for the next axes. `None` for a voxel axis whose column is zero.
pub fn io_orientation(affine: &Affine) -> [Option<AxisDir>; 3] {
    let zooms: [f64; 3] = std::array::from_fn(|c| {
        let zoom = (0..3)
            .map(|r| affine[r][c] * affine[r][c])
            .sum::<f64>()
            .sqrt();
        if zoom == 0.0 { 1.0 } else { zoom }
    });
    let rs = std::array::from_fn(|r| std::array::from_fn(|c| affine[r][c] / zooms[c]));
    let mut rot = closest_rotation(rs);
    let mut out = [None; 3];
    for (in_ax, dir) in out.iter_mut().enumerate() {
        let col = [rot[0][in_ax], rot[1][in_ax], rot[2][in_ax]];
        // np.allclose(col, 0): every |entry| <= 1e-8.
        if col.iter().all(|v| v.abs() <= 1e-8) {
            continue;
        }
        // np.argmax(np.abs(col)): the first of equal maxima.
        let world = (1..3).fold(0, |best, r| {
            if col[r].abs() > col[best].abs() {
                r
            } else {
                best
            }
        });
        *dir = Some(AxisDir {
            world,
            flipped: col[world] < 0.0,
        });
        rot[world] = [0.0; 3];
    }
    out
}

/// The orthogonal factor of the polar decomposition of `m` (nibabel: `U @ Vt` of the SVD), by Newton's iteration
/// `X ← (X + X⁻ᵀ) / 2`, which converges quadratically for a nonsingular matrix. A singular matrix (rank below 3,
/// where nibabel drops the null singular vectors) is returned as it is: its columns still point where the voxel
/// axes go.
fn closest_rotation(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = m;
    for _ in 0..100 {
        let Some(inv) = inverse3(&x) else {
            return m;
        };
        let next: [[f64; 3]; 3] =
            std::array::from_fn(|r| std::array::from_fn(|c| 0.5 * (x[r][c] + inv[c][r])));
        let change = (0..9)
            .map(|n| (next[n / 3][n % 3] - x[n / 3][n % 3]).abs())
            .fold(0.0, f64::max);
        x = next;
        if change < 1e-15 {
            break;
        }
    }
    x
}

/// The inverse of a 3×3 matrix, or `None` when it is (numerically) singular.
pub fn inverse3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let cof =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let adj = [
        [cof(1, 2, 1, 2), -cof(0, 2, 1, 2), cof(0, 1, 1, 2)],
        [-cof(1, 2, 0, 2), cof(0, 2, 0, 2), -cof(0, 1, 0, 2)],
        [cof(1, 2, 0, 1), -cof(0, 2, 0, 1), cof(0, 1, 0, 1)],
    ];
    let det = m[0][0] * adj[0][0] + m[0][1] * adj[1][0] + m[0][2] * adj[2][0];
    let scale = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    if !det.is_finite() || det.abs() <= 1e-12 * scale.powi(3) {
        return None;
    }
    Some(adj.map(|row| row.map(|v| v / det)))
}

/// A section's plane, named by the world axis it holds fixed (nilearn's display modes x, y, z).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Sagittal,
    Coronal,
    Axial,
}

impl Plane {
    /// The three planes in nilearn's `ortho` order (x, y, z cuts).
    pub const ORTHO: [Plane; 3] = [Plane::Sagittal, Plane::Coronal, Plane::Axial];

    pub fn fixed_world(self) -> usize {
        match self {
            Plane::Sagittal => 0,
            Plane::Coronal => 1,
            Plane::Axial => 2,
        }
    }

    fn with_fixed(world: usize) -> Plane {
        match world {
            0 => Plane::Sagittal,
            1 => Plane::Coronal,
            _ => Plane::Axial,
        }
    }

    /// The world axes shown left→right and bottom→top.
    fn display_axes(self) -> (usize, usize) {
        match self {
            Plane::Sagittal => (1, 2),
            Plane::Coronal => (0, 2),
            Plane::Axial => (0, 1),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Plane::Sagittal => "sagittal",
            Plane::Coronal => "coronal",
            Plane::Axial => "axial",
        }
    }
}

/// How a section's two axes (`[a, b]`, numpy's result order) are laid on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The section axis (0 or 1) that runs horizontally; the other runs vertically.
    pub horizontal: usize,
    /// The horizontal index grows right→left instead of left→right.
    pub flip_h: bool,
    /// The vertical index grows bottom→top instead of top→bottom.
    pub flip_v: bool,
    pub plane: Option<Plane>,
    /// Letters for the left, right, top and bottom edges.
    pub labels: [Option<char>; 4],
}

impl Placement {
    /// A section whose axes are not two spatial axes: shown as `imshow(a)` shows a 2-D array (first axis down,
    /// second axis across), unlabelled.
    pub const PLAIN: Placement = Placement {
        horizontal: 1,
        flip_h: false,
        flip_v: false,
        plane: None,
        labels: [None; 4],
    };

    /// Where a section goes whose axes run along `dirs` (None: not a spatial axis). Neurological by default (the
    /// subject's left on the image's left); `radiological` mirrors left and right. `labelled`: draw the letters.
    pub fn new(dirs: [Option<AxisDir>; 2], radiological: bool, labelled: bool) -> Placement {
        let (Some(d0), Some(d1)) = (dirs[0], dirs[1]) else {
            return Placement::PLAIN;
        };
        if d0.world == d1.world {
            return Placement::PLAIN;
        }
        let plane = Plane::with_fixed(3 - d0.world - d1.world);
        let (world_h, world_v) = plane.display_axes();
        let horizontal = if d0.world == world_h { 0 } else { 1 };
        let (dir_h, dir_v) = (dirs[horizontal], dirs[1 - horizontal]);
        let mirror = radiological && world_h == 0;
        // World coordinates grow to the right (mirrored for radiological x) and upward (rows count down).
        let flip_h = dir_h.is_some_and(|d| d.flipped) != mirror;
        let flip_v = !dir_v.is_some_and(|d| d.flipped);
        let (neg_h, pos_h) = LETTERS[world_h];
        let (left, right) = if mirror {
            (pos_h, neg_h)
        } else {
            (neg_h, pos_h)
        };
        let (bottom, top) = LETTERS[world_v];
        let labels = if labelled {
            [Some(left), Some(right), Some(top), Some(bottom)]
        } else {
            [None; 4]
        };
        Placement {
            horizontal,
            flip_h,
            flip_v,
            plane: Some(plane),
            labels,
        }
    }

    /// (rows, columns) on screen of a section of shape `[n0, n1]`.
    pub fn screen_shape(&self, shape: [usize; 2]) -> (usize, usize) {
        (shape[1 - self.horizontal], shape[self.horizontal])
    }

    /// The section element `[a, b]` shown at screen `(row, col)`.
    pub fn element_at(&self, shape: [usize; 2], row: usize, col: usize) -> [usize; 2] {
        let (rows, cols) = self.screen_shape(shape);
        let h = if self.flip_h { cols - 1 - col } else { col };
        let v = if self.flip_v { rows - 1 - row } else { row };
        if self.horizontal == 1 { [v, h] } else { [h, v] }
    }

    /// The screen `(row, col)` where section element `[a, b]` is shown (the inverse of [`Placement::element_at`]).
    pub fn screen_of(&self, shape: [usize; 2], element: [usize; 2]) -> (usize, usize) {
        let (rows, cols) = self.screen_shape(shape);
        let (h, v) = (element[self.horizontal], element[1 - self.horizontal]);
        let col = if self.flip_h { cols - 1 - h } else { h };
        let row = if self.flip_v { rows - 1 - v } else { v };
        (row, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(world: usize, flipped: bool) -> Option<AxisDir> {
        Some(AxisDir { world, flipped })
    }

    fn affine3(m: [[f64; 3]; 3]) -> Affine {
        let mut a = crate::formats::affine::IDENTITY;
        for (row, src) in a.iter_mut().zip(&m) {
            row[..3].copy_from_slice(src);
        }
        a
    }

    #[test]
    fn orientation_of_common_affines() {
        // RAS with anisotropic zooms.
        let ras = affine3([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]]);
        assert_eq!(
            io_orientation(&ras),
            [dir(0, false), dir(1, false), dir(2, false)]
        );
        // LAS (FSL's radiological storage): x flipped.
        let las = affine3([[-2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]);
        assert_eq!(
            io_orientation(&las),
            [dir(0, true), dir(1, false), dir(2, false)]
        );
        // MGH's default LIA-like coronal storage as nibabel reads it (axis codes L, S, P).
        let lsp = affine3([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]);
        assert_eq!(
            io_orientation(&lsp),
            [dir(0, true), dir(2, false), dir(1, true)]
        );
    }

    #[test]
    fn oblique_affine_picks_the_closest_axes() {
        // 30° about z, then sheared a little: i runs mostly along x, j along y.
        let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
        let m = affine3([[c, -s, 0.1], [s, c, 0.0], [0.0, 0.0, 1.0]]);
        assert_eq!(
            io_orientation(&m),
            [dir(0, false), dir(1, false), dir(2, false)]
        );
        // 60°: i runs mostly along y, j mostly along -x.
        let (s, c) = (60f64.to_radians().sin(), 60f64.to_radians().cos());
        let m = affine3([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]);
        assert_eq!(
            io_orientation(&m),
            [dir(1, false), dir(0, true), dir(2, false)]
        );
    }

    #[test]
    fn zero_column_has_no_direction() {
        let m = affine3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]);
        assert_eq!(io_orientation(&m), [dir(0, false), dir(1, false), None]);
    }

    #[test]
    fn axial_section_anterior_up_left_on_left() {
        // Section axes (i → x, j → y): i across left→right, j up.
        let p = Placement::new([dir(0, false), dir(1, false)], false, true);
        assert_eq!((p.horizontal, p.flip_h, p.flip_v), (0, false, true));
        assert_eq!(p.labels, [Some('L'), Some('R'), Some('A'), Some('P')]);
        // Element [a=i, b=j] of a 4×3 section: top-left pixel is i=0 (left), j=2 (anterior-most).
        assert_eq!(p.screen_shape([4, 3]), (3, 4));
        assert_eq!(p.element_at([4, 3], 0, 0), [0, 2]);
        // Radiological mirrors x only.
        let r = Placement::new([dir(0, false), dir(1, false)], true, true);
        assert_eq!((r.flip_h, r.flip_v), (true, true));
        assert_eq!(r.labels[..2], [Some('R'), Some('L')]);
        assert_eq!(r.element_at([4, 3], 0, 0), [3, 2]);
        for p in [p, r, Placement::PLAIN] {
            for row in 0..3 {
                for col in 0..4 {
                    let shape = if p == Placement::PLAIN {
                        [3, 4]
                    } else {
                        [4, 3]
                    };
                    assert_eq!(
                        p.screen_of(shape, p.element_at(shape, row, col)),
                        (row, col)
                    );
                }
            }
        }
    }

    #[test]
    fn flipped_and_transposed_sections() {
        // x flipped (LAS) cancels the radiological mirror.
        let p = Placement::new([dir(0, true), dir(1, false)], true, true);
        assert!(!p.flip_h);
        // Sagittal from axes (k → z, j → y): y runs across (anterior on the right), z up.
        let s = Placement::new([dir(2, false), dir(1, false)], false, true);
        assert_eq!(s.plane, Some(Plane::Sagittal));
        assert_eq!((s.horizontal, s.flip_h, s.flip_v), (1, false, true));
        assert_eq!(s.labels, [Some('P'), Some('A'), Some('S'), Some('I')]);
        // Coronal with z walked backwards: no vertical flip needed.
        let c = Placement::new([dir(0, false), dir(2, true)], false, false);
        assert_eq!(
            (c.plane, c.flip_v, c.labels[0]),
            (Some(Plane::Coronal), false, None)
        );
        // A time axis: plain imshow layout.
        assert_eq!(
            Placement::new([dir(0, false), None], false, true),
            Placement::PLAIN
        );
    }
}
