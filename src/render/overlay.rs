//! An overlay sampled at the voxels of sections: each drawn voxel takes the overlay's nearest voxel through both
//! affines (voxel for voxel when either image has no affine), reading only the box of overlay voxels needed.

use ndarray::Array2;

use super::{Image, Overlay, Section, canvas, orient};
use crate::error::{Result, VoxelError};
use crate::slicer::{Index, SliceSpec};

/// An overlay sampled at the elements of sections.
pub(super) struct Layer<'a, V> {
    /// The overlay's value at every element (NaN where it has none): one array per section, or one section's.
    pub(super) values: V,
    pub(super) overlay: &'a Overlay,
    /// The largest `|value|` drawn (above the threshold).
    pub(super) max_abs: f64,
}

/// The overlay's values at every element of every section.
pub(super) fn sample_overlay<'a>(
    base: &Image,
    sections: &[Section],
    overlay: &'a Overlay,
) -> Result<Layer<'a, Vec<Array2<f64>>>> {
    let ov = &overlay.image;
    ov.check_drawable()?;
    let ov_shape = ov.proxy.shape().to_vec();
    let mismatch =
        |msg: String| VoxelError::Invalid(format!("mismatched overlay {}: {msg}", ov.location));
    if ov_shape.is_empty() || ov_shape.iter().skip(3).any(|&d| d != 1) {
        return Err(mismatch(format!(
            "shape {ov_shape:?}; give one map (up to 3 axes, further axes of length 1)"
        )));
    }
    let dims: [usize; 3] = std::array::from_fn(|k| ov_shape.get(k).copied().unwrap_or(1));
    let to_overlay = voxel_map(base, ov, dims, mismatch)?;
    // Each element's overlay voxel, and the box around them all (read in one go).
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let targets: Vec<Array2<Option<[usize; 3]>>> = sections
        .iter()
        .map(|s| {
            Array2::from_shape_fn(s.shape(), |(a, b)| {
                let w = apply(&to_overlay, &s.voxel([a, b]));
                let o = nearest_inside(w, dims)?;
                for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(&o) {
                    *l = (*l).min(v);
                    *h = (*h).max(v);
                }
                Some(o)
            })
        })
        .collect();
    if lo[0] == usize::MAX {
        return Err(mismatch(format!(
            "its grid (shape {ov_shape:?}) does not cover any voxel of the section"
        )));
    }
    let box_len: usize = (0..3).map(|k| hi[k] - lo[k] + 1).product();
    canvas::check_size(box_len, 1).map_err(|_| mismatch(format!("{box_len} voxels to read")))?;
    let real = ov_shape.len().min(3);
    let items = (0..ov_shape.len())
        .map(|k| match k {
            k if k < real => Index::Slice {
                start: Some(lo[k] as i64),
                stop: Some(hi[k] as i64 + 1),
                step: None,
            },
            _ => Index::Int(0),
        })
        .collect();
    let block = ov
        .proxy
        .slice(&SliceSpec(items))
        .and_then(|a| a.to_f64_c_order())
        .map_err(|e| ov.in_file(e))?;
    let mut max_abs = 0.0f64;
    let values = targets
        .iter()
        .map(|t| {
            t.map(|o| {
                let Some(o) = o else { return f64::NAN };
                let idx: Vec<usize> = (0..real).map(|k| o[k] - lo[k]).collect();
                let v = block.get(idx.as_slice()).copied().unwrap_or(f64::NAN);
                if v.is_finite() && v.abs() > overlay.threshold {
                    max_abs = max_abs.max(v.abs());
                }
                v
            })
        })
        .collect();
    Ok(Layer {
        values,
        overlay,
        max_abs,
    })
}

/// Base voxel → overlay voxel (a 3×4 matrix): through both affines, or voxel for voxel when either image has no
/// affine (then the grids must have the same shape).
fn voxel_map(
    base: &Image,
    ov: &Image,
    dims: [usize; 3],
    mismatch: impl Fn(String) -> VoxelError,
) -> Result<[[f64; 4]; 3]> {
    let identity = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ];
    let (Some(ab), Some(ao)) = (base.affine, ov.affine) else {
        let base_dims: [usize; 3] =
            std::array::from_fn(|k| base.proxy.shape().get(k).copied().unwrap_or(1));
        if base_dims != dims {
            return Err(mismatch(format!(
                "without an affine on both images the grids must match: {dims:?} vs the image's {base_dims:?}"
            )));
        }
        return Ok(identity);
    };
    let rot: [[f64; 3]; 3] = std::array::from_fn(|r| [ao[r][0], ao[r][1], ao[r][2]]);
    let inv = orient::inverse3(&rot).ok_or_else(|| mismatch("its affine is singular".into()))?;
    // inv(Ao) · (Ab · v - to) = inv(Ao)·Ab_rot · v + inv(Ao)·(tb - to)
    Ok(std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let column = |k: usize| {
                if c < 3 { ab[k][c] } else { ab[k][3] - ao[k][3] }
            };
            (0..3).map(|k| inv[r][k] * column(k)).sum()
        })
    }))
}

fn apply(m: &[[f64; 4]; 3], voxel: &[usize]) -> [f64; 3] {
    let v = |k: usize| voxel.get(k).map_or(0.0, |&i| i as f64);
    std::array::from_fn(|r| m[r][0] * v(0) + m[r][1] * v(1) + m[r][2] * v(2) + m[r][3])
}

/// The nearest voxel to `w`, when it lies inside `dims`.
fn nearest_inside(w: [f64; 3], dims: [usize; 3]) -> Option<[usize; 3]> {
    let mut o = [0usize; 3];
    for ((slot, &x), &dim) in o.iter_mut().zip(&w).zip(&dims) {
        let r = (x + 0.5).floor();
        if !(0.0..dim as f64).contains(&r) {
            return None;
        }
        *slot = r as usize;
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_voxel_inside() {
        assert_eq!(nearest_inside([0.49, 1.5, 2.0], [2, 3, 3]), Some([0, 2, 2]));
        assert_eq!(nearest_inside([-0.6, 0.0, 0.0], [2, 3, 3]), None);
        assert_eq!(nearest_inside([-0.5, 0.0, 0.0], [2, 3, 3]), Some([0, 0, 0]));
        assert_eq!(nearest_inside([f64::NAN, 0.0, 0.0], [2, 3, 3]), None);
        assert_eq!(nearest_inside([0.0, 0.0, 2.5], [2, 3, 3]), None);
    }
}
