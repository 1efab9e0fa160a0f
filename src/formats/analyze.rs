//! Analyze 7.5 headers (348 bytes, data in a separate `.img`) and the SPM99 / SPM2 variants (reference §4.2–4.3).
//!
//! The three read the same layout and differ in scaling and affine:
//! * Analyze: no scaling; affine `shape_zoom_affine(dims, zooms, x_flip)`.
//! * SPM99: `scl_slope` (byte 112) as a float32 factor (0/NaN/±inf → none), no intercept; SPM origin affine.
//! * SPM2: `scl_slope`/`scl_inter` (112/116) as float64, else the glmax/glmin + cal_max/cal_min fallback;
//!   SPM origin affine.
//!
//! `nib.load` tries SPM2 before SPM99 and Analyze, so a plain `.hdr`/`.img` pair loads as SPM2.
//! The helpers for shapes, zooms and the load-time pixdim fixes are shared with NIfTI (which nibabel derives
//! from these classes).

use super::affine::{Affine, IDENTITY, shape_zoom_affine};
use super::fields::{Fields, guess_byte_order};
use super::source::Source;
use super::{ArrayLayout, Factor, Format, NO_SCALING, Order, Parsed, checked_shape};
use crate::dtype::{ByteOrder, DType, Scalar};
use crate::error::{Result, VoxelError};
use std::path::Path;

pub const HEADER_SIZE: usize = 348;

/// Which nibabel class reads the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Analyze,
    Spm99,
    Spm2,
}

impl Variant {
    pub fn format(self) -> Format {
        match self {
            Variant::Analyze => Format::Analyze,
            Variant::Spm99 => Format::Spm99Analyze,
            Variant::Spm2 => Format::Spm2Analyze,
        }
    }
}

/// A header shorter than its format's fixed size.
pub(crate) fn short_header(path: &Path, needed: usize, got: usize) -> VoxelError {
    VoxelError::Truncated {
        path: path.display().to_string(),
        expected: needed as u64,
        actual: got as u64,
    }
}

/// Which datatype table a header's code is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codes {
    /// `analyze.data_type_codes`: the first seven NIfTI codes.
    Analyze,
    /// `nifti1.data_type_codes` (NIfTI-1 and -2).
    Nifti,
}

/// The dtype of a header's `datatype` code in `order`, or the error nibabel gives for it.
pub(crate) fn datatype(code: i64, codes: Codes, order: ByteOrder, path: &Path) -> Result<DType> {
    let scalar = match codes {
        Codes::Analyze => Scalar::from_analyze_code(code),
        Codes::Nifti => Scalar::from_nifti_code(code),
    };
    if let Some(s) = scalar {
        return Ok(DType::new(s, order));
    }
    let family = match codes {
        Codes::Analyze => "Analyze",
        Codes::Nifti => "NIfTI",
    };
    let problem = match code {
        1536 | 2048 if codes == Codes::Nifti => {
            let name = if code == 1536 {
                "float128"
            } else {
                "complex256"
            };
            return Err(VoxelError::Unsupported {
                path: path.display().to_string(),
                what: format!("NIfTI datatype {code} ({name}): no 128-bit floats on this platform"),
            });
        }
        0 | 1 | 255 => {
            format!("data code {code} not supported ({family} 'none'/'binary'/'all' have no dtype)")
        }
        _ => format!("data code {code} not recognized"),
    };
    Err(VoxelError::header_field(path, "datatype", code, problem))
}

/// `dim[1..=dim[0]]` (nibabel's `get_data_shape` before any format hack): `(0,)` when `dim[0] == 0`; `dim[0]`
/// outside 0..=7 is an error (nibabel would slice `dim` with it).
pub(crate) fn shape_dims(dim: &[i64; 8], path: &Path) -> Result<Vec<i64>> {
    match dim[0] {
        0 => Ok(vec![0]),
        n @ 1..=7 => Ok(dim[1..=n as usize].to_vec()),
        n => Err(VoxelError::header_field(
            path,
            "dim",
            n,
            format!("dim[0] = {n}: the number of dimensions must be 0..=7"),
        )),
    }
}

/// `dim[1..=dim[0]]` as the affine sees it (empty when `dim[0]` is 0 or out of range).
pub(crate) fn affine_dims(dim: &[i64; 8]) -> &[i64] {
    match dim[0] {
        n @ 1..=7 => &dim[1..=n as usize],
        _ => &[],
    }
}

/// nibabel's `get_zooms`: `pixdim[1..=dim[0]]`, or `(1.0,)` when `dim[0] == 0`.
pub(crate) fn zooms(dim: &[i64; 8], pixdim: &[f64; 8]) -> Vec<f64> {
    match dim[0] {
        n @ 1..=7 => pixdim[1..=n as usize].to_vec(),
        _ => vec![1.0],
    }
}

/// The load-time fix of `_chk_pixdims`: `pixdim[1..=3]` zero → 1, negative → absolute value (NaN untouched).
pub(crate) fn fix_pixdim(mut pixdim: [f64; 8]) -> [f64; 8] {
    for p in &mut pixdim[1..4] {
        if *p == 0.0 {
            *p = 1.0;
        }
        if *p < 0.0 {
            *p = -*p;
        }
    }
    pixdim
}

/// `int(vox_offset)` for a float32 field: truncated toward zero; NaN, infinite or negative is an error.
pub(crate) fn float_offset(v: f32, path: &Path) -> Result<u64> {
    let t = f64::from(v).trunc();
    if !t.is_finite() || !(0.0..18_446_744_073_709_551_616.0).contains(&t) {
        return Err(VoxelError::header_field(
            path,
            "vox_offset",
            v,
            format!("vox_offset {v} is not a valid byte offset"),
        ));
    }
    Ok(t as u64)
}

pub(crate) fn read_dims(f: &Fields, at: usize) -> [i64; 8] {
    std::array::from_fn(|k| i64::from(f.i16(at + 2 * k)))
}

pub(crate) fn read_pixdim_f32(f: &Fields, at: usize) -> [f64; 8] {
    std::array::from_fn(|k| f64::from(f.f32(at + 4 * k)))
}

/// SPM99's `scl_slope`: a 0-d float32 (F32 factor); 0, NaN and ±inf mean no scaling. No intercept.
fn spm99_scaling(f: &Fields) -> (Factor, Factor) {
    let slope = f.f32(112);
    if slope.is_nan() || slope == 0.0 || slope.is_infinite() {
        NO_SCALING
    } else {
        (Factor::F32(slope), Factor::F64(0.0))
    }
}

/// SPM2's `get_slope_inter` (spm_vol_ana.m): `scl_slope`/`scl_inter`, else the glmax/glmin + cal_max/cal_min
/// fallback computed with numpy's scalar types (int32 wrap-around, float32 difference, float64 quotient).
fn spm2_scaling(f: &Fields) -> (Factor, Factor) {
    let slope = f64::from(f.f32(112));
    if slope.is_finite() && slope != 0.0 {
        let inter = f64::from(f.f32(116));
        let inter = if inter.is_finite() { inter } else { 0.0 };
        return (Factor::F64(slope), Factor::F64(inter));
    }
    let (glmax, glmin) = (f.i32(140), f.i32(144));
    let (cal_max, cal_min) = (f.f32(124), f.f32(128));
    let unscaled_range = glmax.wrapping_sub(glmin);
    let scaled_range = cal_max - cal_min;
    if unscaled_range != 0 && scaled_range != 0.0 {
        let slope = f64::from(scaled_range) / f64::from(unscaled_range);
        let inter = f64::from(cal_min) - slope * f64::from(glmin);
        return (Factor::F64(slope), Factor::F64(inter));
    }
    NO_SCALING
}

/// SPM99's `get_origin_affine`: zooms with x negated; translation from the 1-based `origin` (five int16 at byte
/// 253) when it is set and within (−dims, 2·dims) on the three axes, else from the volume centre. Computed with
/// numpy's types: int16 wrap-around, and a float32 product for the origin branch.
fn spm_origin_affine(f: &Fields, dim: &[i64; 8], pixdim: &[f64; 8]) -> Affine {
    let origin: [i16; 3] = std::array::from_fn(|k| f.i16(253 + 2 * k));
    let dims: [i16; 3] = std::array::from_fn(|k| dim[k + 1] as i16);
    let zooms: [f32; 3] = [-(pixdim[1] as f32), pixdim[2] as f32, pixdim[3] as f32];
    let use_origin = origin.iter().any(|&o| o != 0)
        && (0..3)
            .all(|k| origin[k] > dims[k].wrapping_neg() && origin[k] < dims[k].wrapping_mul(2));
    let mut aff = IDENTITY;
    for (k, row) in aff.iter_mut().take(3).enumerate() {
        row[k] = f64::from(zooms[k]);
        row[3] = if use_origin {
            let o = origin[k].wrapping_sub(1).wrapping_neg();
            f64::from(f32::from(o) * zooms[k])
        } else {
            let centre = f64::from(dims[k].wrapping_sub(1)) / 2.0;
            -centre * f64::from(zooms[k])
        };
    }
    aff
}

/// Parse a 348-byte Analyze-family header as `variant`.
pub(crate) fn parse(src: &mut dyn Source, variant: Variant) -> Result<Parsed> {
    let path = src.path().to_path_buf();
    let block = src.read(0, HEADER_SIZE)?;
    if block.len() < HEADER_SIZE {
        return Err(short_header(&path, HEADER_SIZE, block.len()));
    }
    let order = guess_byte_order(&block, 40, 2, HEADER_SIZE as i32);
    let f = Fields::new(&block, order);
    let dtype = datatype(i64::from(f.i16(70)), Codes::Analyze, order, &path)?;
    let dim = read_dims(&f, 40);
    let pixdim = fix_pixdim(read_pixdim_f32(&f, 76));
    let dims = shape_dims(&dim, &path)?;
    let offset = float_offset(f.f32(108), &path)?;
    let shape = checked_shape(&path, &dims, dtype, offset)?;
    let (slope, inter) = match variant {
        Variant::Analyze => NO_SCALING,
        Variant::Spm99 => spm99_scaling(&f),
        Variant::Spm2 => spm2_scaling(&f),
    };
    let affine = match variant {
        Variant::Analyze => shape_zoom_affine(affine_dims(&dim), &pixdim[1..], true),
        Variant::Spm99 | Variant::Spm2 => spm_origin_affine(&f, &dim, &pixdim),
    };
    Ok(Parsed {
        format: variant.format(),
        layout: ArrayLayout {
            shape,
            dtype,
            offset,
            order: Order::F,
            slope,
            inter,
        },
        affine,
        zooms: zooms(&dim, &pixdim),
        world: super::WorldMeta::other(0, 1.0),
        header_bytes: HEADER_SIZE as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::source::SliceSource;
    use crate::formats::test_util::HeaderBuilder;

    fn parse_as(bytes: &[u8], v: Variant) -> Result<Parsed> {
        let mut src = SliceSource::new(bytes, true, Path::new("t.hdr"));
        parse(&mut src, v)
    }

    #[test]
    fn plain_analyze_both_byte_orders() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let h = HeaderBuilder::analyze(order, &[3, 5, 7], 4)
                .zooms(&[3.0, 2.0, 1.0])
                .vox_offset(16.9)
                .build();
            let p = parse_as(&h, Variant::Analyze).unwrap();
            assert_eq!(p.format, Format::Analyze);
            assert_eq!(p.layout.shape, vec![3, 5, 7]);
            assert_eq!(p.layout.dtype, DType::new(Scalar::I16, order));
            assert_eq!(p.layout.offset, 16, "float vox_offset truncates");
            assert_eq!((p.layout.slope, p.layout.inter), NO_SCALING);
            assert_eq!(p.layout.order, Order::F);
            assert_eq!(p.zooms, vec![3.0, 2.0, 1.0]);
            // Reference §2.3 vector.
            assert_eq!(p.affine[0], [-3.0, 0.0, 0.0, 3.0]);
            assert_eq!(p.affine[1], [0.0, 2.0, 0.0, -4.0]);
            assert_eq!(p.affine[2], [0.0, 0.0, 1.0, -3.0]);
        }
    }

    #[test]
    fn every_analyze_datatype_and_bad_codes() {
        for (code, scalar) in crate::dtype::NIFTI_CODES[..crate::dtype::ANALYZE_CODES]
            .iter()
            .copied()
        {
            let h = HeaderBuilder::analyze(ByteOrder::Big, &[2], code).build();
            assert_eq!(
                parse_as(&h, Variant::Spm2).unwrap().layout.dtype,
                DType::new(scalar, ByteOrder::Big)
            );
        }
        for code in [0, 1, 255] {
            let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], code).build();
            let e = parse_as(&h, Variant::Analyze).unwrap_err().to_string();
            assert!(e.contains("t.hdr") && e.contains("not supported"), "{e}");
        }
        for code in [3, 256, 1536, -1] {
            let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], code).build();
            let e = parse_as(&h, Variant::Analyze).unwrap_err().to_string();
            assert!(e.contains("not recognized"), "{e}");
        }
    }

    #[test]
    fn zero_ndim_and_pixdim_fixes() {
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[], 2).build();
        let p = parse_as(&h, Variant::Analyze).unwrap();
        assert_eq!(p.layout.shape, vec![0]);
        assert_eq!(p.zooms, vec![1.0]);
        assert_eq!(p.affine[0][0], -1.0);
        // Zero → 1 and negative → abs on pixdim[1..=3] only; pixdim[4] kept.
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[2, 2, 2, 2], 2)
            .zooms(&[0.0, -2.0, 3.0, -4.0])
            .build();
        let p = parse_as(&h, Variant::Analyze).unwrap();
        assert_eq!(p.zooms, vec![1.0, 2.0, 3.0, -4.0]);
    }

    #[test]
    fn bad_dims_and_offsets() {
        // dim[0] = 9 is invalid in both orders (2304 when swapped); datatype 512 reads as 2 when swapped.
        let mut h = HeaderBuilder::analyze(ByteOrder::Little, &[2, 3], 512).build();
        h[40..42].copy_from_slice(&9i16.to_le_bytes());
        let e = parse_as(&h, Variant::Analyze).unwrap_err().to_string();
        assert!(e.contains("dim[0]"), "{e}");
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[2, -3], 2).build();
        assert!(
            parse_as(&h, Variant::Analyze)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[32767; 7], 64).build();
        assert!(
            parse_as(&h, Variant::Analyze)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], 2)
                .vox_offset(bad)
                .build();
            assert!(
                parse_as(&h, Variant::Analyze)
                    .unwrap_err()
                    .to_string()
                    .contains("vox_offset")
            );
        }
        // -0.5 truncates to 0, like int(-0.5).
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], 2)
            .vox_offset(-0.5)
            .build();
        assert_eq!(parse_as(&h, Variant::Analyze).unwrap().layout.offset, 0);
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], 2).build();
        assert!(matches!(
            parse_as(&h[..300], Variant::Analyze),
            Err(VoxelError::Truncated {
                expected: 348,
                actual: 300,
                ..
            })
        ));
    }

    #[test]
    fn spm99_slope_is_float32_without_intercept() {
        let h = HeaderBuilder::analyze(ByteOrder::Big, &[2, 3, 4], 4)
            .f32_at(112, 0.1)
            .f32_at(116, 5.0)
            .build();
        let p = parse_as(&h, Variant::Spm99).unwrap();
        assert_eq!(p.format, Format::Spm99Analyze);
        assert_eq!(
            (p.layout.slope, p.layout.inter),
            (Factor::F32(0.1), Factor::F64(0.0))
        );
        for none in [0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let h = HeaderBuilder::analyze(ByteOrder::Big, &[2], 4)
                .f32_at(112, none)
                .build();
            assert_eq!(
                (
                    parse_as(&h, Variant::Spm99).unwrap().layout.slope,
                    parse_as(&h, Variant::Spm99).unwrap().layout.inter
                ),
                NO_SCALING
            );
        }
    }

    #[test]
    fn spm2_slope_intercept_and_fallback() {
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], 4)
            .f32_at(112, 0.1)
            .f32_at(116, 5.5)
            .build();
        let p = parse_as(&h, Variant::Spm2).unwrap();
        assert_eq!(
            (p.layout.slope, p.layout.inter),
            (Factor::F64(f64::from(0.1f32)), Factor::F64(5.5))
        );
        // Non-finite intercept → 0.
        let h = HeaderBuilder::analyze(ByteOrder::Little, &[2], 4)
            .f32_at(112, 2.0)
            .f32_at(116, f32::NAN)
            .build();
        let p = parse_as(&h, Variant::Spm2).unwrap();
        assert_eq!(
            (p.layout.slope, p.layout.inter),
            (Factor::F64(2.0), Factor::F64(0.0))
        );
        // Fallback from nibabel's doctest: glmax 110, glmin 10, cal 0.2..0.8.
        let h = HeaderBuilder::analyze(ByteOrder::Big, &[2], 4)
            .f32_at(112, 0.0)
            .i32_at(140, 110)
            .i32_at(144, 10)
            .f32_at(124, 0.8)
            .f32_at(128, 0.2)
            .build();
        let p = parse_as(&h, Variant::Spm2).unwrap();
        let range = f64::from(0.8f32 - 0.2f32);
        let slope = range / 100.0;
        assert_eq!(p.layout.slope, Factor::F64(slope));
        assert_eq!(
            p.layout.inter,
            Factor::F64(f64::from(0.2f32) - slope * 10.0)
        );
        assert!(
            (p.layout.slope.value() - 0.006).abs() < 1e-8
                && (p.layout.inter.value() - 0.14).abs() < 1e-7
        );
        // Only one of the ranges set → no scaling.
        let h = HeaderBuilder::analyze(ByteOrder::Big, &[2], 4)
            .f32_at(112, 0.0)
            .f32_at(124, 0.8)
            .build();
        let p = parse_as(&h, Variant::Spm2).unwrap();
        assert_eq!((p.layout.slope, p.layout.inter), NO_SCALING);
        // int32 wrap-around of glmax - glmin, as numpy computes it.
        let h = HeaderBuilder::analyze(ByteOrder::Big, &[2], 4)
            .f32_at(112, f32::NAN)
            .i32_at(140, i32::MAX)
            .i32_at(144, -1)
            .f32_at(124, 1.0)
            .build();
        let p = parse_as(&h, Variant::Spm2).unwrap();
        assert_eq!(p.layout.slope, Factor::F64(1.0 / f64::from(i32::MIN)));
    }

    #[test]
    fn spm_origin_affine_rules() {
        // nibabel doctest: shape (3,5,7), zooms (3,2,1), origin (3,4,5).
        let b = HeaderBuilder::analyze(ByteOrder::Little, &[3, 5, 7], 2).zooms(&[3.0, 2.0, 1.0]);
        let centre = parse_as(&b.clone().build(), Variant::Spm99).unwrap().affine;
        assert_eq!(centre[0], [-3.0, 0.0, 0.0, 3.0]);
        assert_eq!(centre[1], [0.0, 2.0, 0.0, -4.0]);
        assert_eq!(centre[2], [0.0, 0.0, 1.0, -3.0]);
        let with_origin = b
            .clone()
            .i16_at(253, 3)
            .i16_at(255, 4)
            .i16_at(257, 5)
            .build();
        let a = parse_as(&with_origin, Variant::Spm2).unwrap().affine;
        assert_eq!(a[0], [-3.0, 0.0, 0.0, 6.0]);
        assert_eq!(a[1], [0.0, 2.0, 0.0, -6.0]);
        assert_eq!(a[2], [0.0, 0.0, 1.0, -4.0]);
        // Out of (-dims, 2*dims) on one axis: centre instead.
        let far = b.clone().i16_at(253, 3).i16_at(255, 10).build();
        assert_eq!(parse_as(&far, Variant::Spm99).unwrap().affine, centre);
        // The origin branch multiplies in float32.
        let odd = HeaderBuilder::analyze(ByteOrder::Little, &[3, 5, 7], 2)
            .zooms(&[0.3, 1.0, 1.0])
            .i16_at(253, 3)
            .i16_at(255, 1)
            .i16_at(257, 1)
            .build();
        let a = parse_as(&odd, Variant::Spm99).unwrap().affine;
        assert_eq!(a[0][3], f64::from(2.0f32 * 0.3f32));
        // Plain Analyze ignores the origin.
        assert_eq!(
            parse_as(&with_origin, Variant::Analyze).unwrap().affine,
            centre
        );
    }
}
