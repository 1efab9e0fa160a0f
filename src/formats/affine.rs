//! Voxel-to-world affines as nibabel computes them: `shape_zoom_affine` (reference §2.3) and the NIfTI qform
//! quaternion (`fillpositive` + `quat2mat`).

/// A 4×4 voxel-to-world transform, row-major.
pub type Affine = [[f64; 4]; 4];

pub const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// nibabel's `shape_zoom_affine(shape, zooms, x_flip)`: diag(zooms) (x negated when `x_flip`) with the volume
/// centre `(shape - 1) / 2` at the origin. Uses the first three axes; axes beyond `shape.len()` get shape 1
/// and zoom 1 (zooms past the shape's length are ignored; nibabel requires equal lengths).
pub fn shape_zoom_affine(shape: &[i64], zooms: &[f64], x_flip: bool) -> Affine {
    let mut aff = IDENTITY;
    for (axis, row) in aff.iter_mut().take(3).enumerate() {
        let (d, mut z) = match shape.get(axis) {
            Some(&d) => (d as f64, zooms.get(axis).copied().unwrap_or(1.0)),
            None => (1.0, 1.0),
        };
        if x_flip && axis == 0 {
            z = -z;
        }
        let origin = (d - 1.0) / 2.0;
        row[axis] = z;
        row[3] = -origin * z;
    }
    aff
}

/// `1 - (b² + c² + d²)` with the sum of squares carried in double-double precision: nibabel evaluates it in
/// x86 long double, and the sign test and zero threshold below need more than f64 near a 180° rotation.
fn w_squared(b: f64, c: f64, d: f64) -> f64 {
    // Error-free transformations: a*a = p + e exactly; s + t = sum + err exactly.
    let two_sq = |a: f64| {
        let p = a * a;
        (p, a.mul_add(a, -p))
    };
    let two_sum = |s: f64, t: f64| {
        let sum = s + t;
        let bv = sum - s;
        (sum, (s - (sum - bv)) + (t - bv))
    };
    let (pb, eb) = two_sq(b);
    let (pc, ec) = two_sq(c);
    let (pd, ed) = two_sq(d);
    let (s1, e1) = two_sum(pb, pc);
    let (s2, e2) = two_sum(s1, pd);
    let low = eb + ec + ed + e1 + e2;
    let (hi, e3) = two_sum(1.0, -s2);
    hi + (e3 - low)
}

/// The qform rotation from quaternion parameters (b, c, d): nibabel's `fillpositive(bcd, threshold)` then
/// `quat2mat`. `w = 0` when `|1 - (b²+c²+d²)| < |threshold|`; `Err(w²)` when w² is clearly negative.
pub fn quaternion_rotation(b: f64, c: f64, d: f64, threshold: f64) -> Result<[[f64; 3]; 3], f64> {
    let w2 = w_squared(b, c, d);
    let w = if w2.abs() < threshold.abs() {
        0.0
    } else if w2 < 0.0 {
        return Err(w2);
    } else {
        w2.sqrt()
    };
    let (x, y, z) = (b, c, d);
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return Ok([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    Ok([
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ])
}

/// `[[R · diag(zooms), offset], [0, 0, 0, 1]]`.
pub fn rotation_zoom_affine(r: &[[f64; 3]; 3], zooms: [f64; 3], offset: [f64; 3]) -> Affine {
    let mut aff = IDENTITY;
    for ((row, r_row), t) in aff.iter_mut().zip(r).zip(offset) {
        for ((a, rv), z) in row.iter_mut().zip(r_row).zip(zooms) {
            *a = rv * z;
        }
        row[3] = t;
    }
    aff
}

/// What an image says about its world space and time axis, beyond the affine (NIfTI codes; see [`space_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct WorldMeta {
    /// The xform code of the space `affine` maps into (0 unknown, 1 scanner, 2 aligned, 3 talairach, 4 mni,
    /// 5 template); `None` for formats without spatial metadata (npy, raw).
    pub space_code: Option<i64>,
    /// Seconds per unit of the fourth zoom (the repetition time); `None` when that zoom is not a time.
    pub time_scale: Option<f64>,
}

impl WorldMeta {
    /// NIfTI: the code of the transform nibabel's `img.affine` uses (sform, else qform, else 0 for the fall-back),
    /// and the time unit from `xyzt_units` (unset is taken as seconds, as BIDS requires; Hz, ppm and rad/s are not
    /// times).
    pub fn nifti(sform_code: i64, qform_code: i64, xyzt_units: i64) -> WorldMeta {
        let space = if sform_code > 0 {
            sform_code
        } else if qform_code > 0 {
            qform_code
        } else {
            0
        };
        let time_scale = match xyzt_units & 0x38 {
            0 | 8 => Some(1.0),
            16 => Some(1e-3),
            24 => Some(1e-6),
            _ => None,
        };
        WorldMeta {
            space_code: Some(space),
            time_scale,
        }
    }

    /// A format with an affine but no space code: Analyze (unknown space, seconds) or MGH (scanner RAS, TR in
    /// milliseconds as nibabel's `get_zooms` reports it).
    pub fn other(space_code: i64, time_scale: f64) -> WorldMeta {
        WorldMeta {
            space_code: Some(space_code),
            time_scale: Some(time_scale),
        }
    }

    /// The space's name, `None` without spatial metadata.
    pub fn space(&self) -> Option<&'static str> {
        self.space_code.map(space_name)
    }

    /// The repetition time in seconds: the fourth zoom of a 4-d (or longer) image in time units.
    pub fn repetition_time(&self, zooms: &[f64], ndim: usize) -> Option<f64> {
        let tr = *zooms.get(3).filter(|_| ndim >= 4)?;
        Some(tr * self.time_scale?)
    }
}

/// nibabel's xform code names (`nibabel.nifti1.xform_codes`); codes nibabel resets at load count as unknown.
pub fn space_name(code: i64) -> &'static str {
    match code {
        1 => "scanner",
        2 => "aligned",
        3 => "talairach",
        4 => "mni",
        5 => "template",
        _ => "unknown",
    }
}

/// `affine · (i, j, k, 1)`, the first three rows, evaluated in one fixed order so that pushdown can reproduce the
/// column's values bit for bit.
pub fn apply(a: &Affine, ijk: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| row_apply(&a[r], ijk))
}

/// One row of [`apply`].
pub fn row_apply(row: &[f64; 4], ijk: [f64; 3]) -> f64 {
    row[0] * ijk[0] + row[1] * ijk[1] + row[2] * ijk[2] + row[3]
}

/// The inverse of the 3×3 part and the translation: `voxel = inv · (world - t)`; `None` when singular.
pub fn inverse3(a: &Affine) -> Option<[[f64; 3]; 3]> {
    let m = |r: usize, c: usize| a[r][c];
    let det = m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1))
        - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
        + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0));
    if !det.is_finite() || det == 0.0 {
        return None;
    }
    let cof =
        |r0: usize, r1: usize, c0: usize, c1: usize| m(r0, c0) * m(r1, c1) - m(r0, c1) * m(r1, c0);
    Some([
        [
            cof(1, 2, 1, 2) / det,
            -cof(0, 2, 1, 2) / det,
            cof(0, 1, 1, 2) / det,
        ],
        [
            -cof(1, 2, 0, 2) / det,
            cof(0, 2, 0, 2) / det,
            -cof(0, 1, 0, 2) / det,
        ],
        [
            cof(1, 2, 0, 1) / det,
            -cof(0, 2, 0, 1) / det,
            cof(0, 1, 0, 1) / det,
        ],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_zoom_affine_reference_vector() {
        // Reference §2.3: shape (3,5,7), zooms (3,2,1).
        let a = shape_zoom_affine(&[3, 5, 7], &[3.0, 2.0, 1.0], true);
        assert_eq!(a[0], [-3.0, 0.0, 0.0, 3.0]);
        assert_eq!(a[1], [0.0, 2.0, 0.0, -4.0]);
        assert_eq!(a[2], [0.0, 0.0, 1.0, -3.0]);
        assert_eq!(a[3], [0.0, 0.0, 0.0, 1.0]);
        let b = shape_zoom_affine(&[3, 5, 7], &[3.0, 2.0, 1.0], false);
        assert_eq!(b[0], [3.0, 0.0, 0.0, -3.0]);
        // Fewer than three dims are padded with 1 (centre 0).
        let c = shape_zoom_affine(&[4], &[2.0, 5.0, 5.0], true);
        assert_eq!(c[0], [-2.0, 0.0, 0.0, 3.0]);
        assert_eq!(c[1], [0.0, 1.0, 0.0, 0.0]);
        let d = shape_zoom_affine(&[], &[], true);
        assert_eq!(d[0][0], -1.0);
    }

    #[test]
    fn quaternion_identity_and_half_turns() {
        let r = quaternion_rotation(0.0, 0.0, 0.0, 3.0 * f32::EPSILON as f64).unwrap();
        assert_eq!(r, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        // b = 1: 180° about x, w = 0.
        let r = quaternion_rotation(1.0, 0.0, 0.0, 3.0 * f32::EPSILON as f64).unwrap();
        assert_eq!(r, [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]);
        // Slightly over 1 but within the float32 threshold: still w = 0, no error.
        let b = 1.0f32 + f32::EPSILON;
        assert!(quaternion_rotation(b as f64, 0.0, 0.0, 3.0 * f32::EPSILON as f64).is_ok());
        // Clearly over 1: error carrying w².
        assert!(quaternion_rotation(1.1, 0.0, 0.0, 3.0 * f32::EPSILON as f64).is_err());
        // The same quaternion is an error under NIfTI-2's float64 threshold.
        assert!(quaternion_rotation(b as f64, 0.0, 0.0, 3.0 * f64::EPSILON).is_err());
    }

    #[test]
    fn w_squared_is_exact_enough_near_zero() {
        // b² + c² = 1 - 2^-60 would round to 1 in plain f64.
        let b = (0.5f64).sqrt();
        let exact = w_squared(b, b, 0.0);
        assert!(exact.abs() < 1e-15);
        assert_eq!(w_squared(0.0, 0.0, 0.0), 1.0);
        assert!(w_squared(f64::NAN, 0.0, 0.0).is_nan());
    }

    #[test]
    fn rotation_zoom_affine_scales_columns() {
        let r = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        let a = rotation_zoom_affine(&r, [2.0, 3.0, -4.0], [10.0, 20.0, 30.0]);
        assert_eq!(a[0], [0.0, -3.0, 0.0, 10.0]);
        assert_eq!(a[1], [2.0, 0.0, 0.0, 20.0]);
        assert_eq!(a[2], [0.0, 0.0, -4.0, 30.0]);
        assert_eq!(a[3], [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn inverse_undoes_the_affine() {
        let r = [[0.0, -1.0, 0.2], [1.0, 0.1, 0.0], [0.0, 0.3, 1.0]];
        let a = rotation_zoom_affine(&r, [2.0, 3.0, -4.0], [10.0, 20.0, 30.0]);
        let inv = inverse3(&a).unwrap();
        let w = apply(&a, [1.0, 2.0, 3.0]);
        let d = [w[0] - a[0][3], w[1] - a[1][3], w[2] - a[2][3]];
        for (r, want) in inv.iter().zip([1.0, 2.0, 3.0]) {
            let v = r[0] * d[0] + r[1] * d[1] + r[2] * d[2];
            assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        }
        let mut singular = IDENTITY;
        singular[2][2] = 0.0;
        assert!(inverse3(&singular).is_none());
    }

    #[test]
    fn space_and_repetition_time() {
        let m = WorldMeta::nifti(0, 1, 2 | 16);
        assert_eq!(m.space(), Some("scanner"));
        assert_eq!(m.repetition_time(&[2.0, 2.0, 2.0, 2000.0], 4), Some(2.0));
        assert_eq!(m.repetition_time(&[2.0, 2.0, 2.0], 3), None);
        assert_eq!(WorldMeta::nifti(4, 1, 10).space(), Some("mni"));
        assert_eq!(
            WorldMeta::nifti(0, 0, 32).repetition_time(&[1.0; 4], 4),
            None
        );
        assert_eq!(WorldMeta::default().space(), None);
        assert_eq!(space_name(9), "unknown");
    }
}
