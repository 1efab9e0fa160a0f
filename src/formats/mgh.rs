//! MGH / MGZ (FreeSurfer; reference §4.6): always big-endian, a 90-byte header, data at byte 284 in F order,
//! and an optional footer after the data whose first field is TR (the fourth zoom of a 4-D image).
//!
//! Checks follow `MGHHeader.from_fileobj` then `check_fix`: zero dims, unknown type code, version ≠ 1.
//! A footer shorter than 20 bytes is zero-padded as nibabel does; only a 4-D image reads it, and a file that
//! ends before the footer offset has truncated data.

use super::affine::{Affine, IDENTITY};
use super::analyze::short_header;
use super::fields::Fields;
use super::source::Source;
use super::{ArrayLayout, Format, Parsed, checked_shape};
use crate::dtype::{ByteOrder, DType, Scalar};
use crate::error::{Result, VoxelError};

/// Bytes of the fixed header fields.
pub const HEADER_SIZE: usize = 90;
/// Where the data start.
pub const DATA_OFFSET: u64 = 284;
/// Fixed footer fields: tr, flip_angle, te, ti, fov (float32 each).
pub const FOOTER_SIZE: usize = 20;

/// nibabel's default geometry when `goodRASFlag == 0`: Mdc rows (−1,0,0), (0,0,1), (0,−1,0).
const DEFAULT_MDC: [[f32; 3]; 3] = [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]];

fn mgh_dtype(code: i32) -> Option<Scalar> {
    Some(match code {
        0 => Scalar::U8,
        1 => Scalar::I32,
        3 => Scalar::F32,
        4 => Scalar::I16,
        10 => Scalar::U16,
        _ => return None,
    })
}

/// The geometry fields, after the `goodRASFlag == 0` substitution.
struct Geometry {
    delta: [f32; 3],
    mdc: [[f32; 3]; 3],
    pxyz_c: [f32; 3],
}

fn geometry(f: &Fields) -> Geometry {
    if f.i16(28) == 0 {
        return Geometry {
            delta: [1.0; 3],
            mdc: DEFAULT_MDC,
            pxyz_c: [0.0; 3],
        };
    }
    Geometry {
        delta: std::array::from_fn(|k| f.f32(30 + 4 * k)),
        mdc: std::array::from_fn(|i| std::array::from_fn(|j| f.f32(42 + 12 * i + 4 * j))),
        pxyz_c: std::array::from_fn(|k| f.f32(78 + 4 * k)),
    }
}

/// `MGHHeader.get_affine`: `MdcD = Mdc.T * delta` (float32), centre `MdcD · dims[:3] / 2` (float64),
/// translation `Pxyz_c − centre` — stored by `from_matvec` in a float32 matrix, so rounded to float32.
fn mgh_affine(g: &Geometry, dims: &[i32; 4]) -> Affine {
    let mdcd: [[f32; 3]; 3] =
        std::array::from_fn(|i| std::array::from_fn(|j| g.mdc[j][i] * g.delta[j]));
    let dims3 = [dims[0], dims[1], dims[2]].map(f64::from);
    let mut aff = IDENTITY;
    for ((row, m), p) in aff.iter_mut().zip(mdcd).zip(g.pxyz_c) {
        let centre: f64 = m.iter().zip(dims3).map(|(&v, d)| f64::from(v) * d).sum();
        for (cell, v) in row.iter_mut().zip(m) {
            *cell = f64::from(v);
        }
        row[3] = f64::from((f64::from(p) - centre / 2.0) as f32);
    }
    aff
}

/// Parse an MGH header (decompressed `.mgz` content).
pub(crate) fn parse(src: &mut dyn Source) -> Result<Parsed> {
    let path = src.path().to_path_buf();
    let block = src.read(0, HEADER_SIZE)?;
    if block.len() < HEADER_SIZE {
        return Err(short_header(&path, HEADER_SIZE, block.len()));
    }
    let f = Fields::new(&block, ByteOrder::Big);
    let dims: [i32; 4] = std::array::from_fn(|k| f.i32(4 + 4 * k));
    if dims.contains(&0) {
        return Err(VoxelError::header_field(
            &path,
            "dims",
            format!("{dims:?}"),
            format!("MGH dimensions {dims:?} must be non-zero"),
        ));
    }
    let code = f.i32(20);
    let scalar = mgh_dtype(code).ok_or_else(|| {
        VoxelError::header_field(
            &path,
            "type",
            code,
            format!(
                "MGH data type {code} not supported (0 uchar, 1 int, 3 float, 4 short, 10 ushort)"
            ),
        )
    })?;
    let version = f.i32(0);
    if version != 1 {
        return Err(VoxelError::header_field(
            &path,
            "version",
            version,
            format!("unknown MGH format version {version} (expected 1)"),
        ));
    }
    let dtype = DType::new(scalar, ByteOrder::Big);
    let mut shape_dims: Vec<i64> = dims.iter().map(|&d| i64::from(d)).collect();
    if dims[3] == 1 {
        shape_dims.pop();
    }
    let shape = checked_shape(&path, &shape_dims, dtype, DATA_OFFSET)?;
    let g = geometry(&f);
    let mut zooms: Vec<f64> = g.delta.iter().map(|&d| f64::from(d)).collect();
    if dims[3] > 1 {
        zooms.push(f64::from(read_tr(src, &shape, dtype)?));
    }
    Ok(Parsed {
        format: Format::Mgh,
        layout: ArrayLayout::new(shape, dtype).with_offset(DATA_OFFSET),
        affine: mgh_affine(&g, &dims),
        zooms,
        // vox2ras is scanner RAS; the fourth zoom is TR in milliseconds.
        world: super::WorldMeta::other(1, 1e-3),
        header_bytes: HEADER_SIZE as u64,
    })
}

/// TR from the footer right after the data: zero-padded when short or absent (nibabel), an error when the
/// file ends before the data do.
fn read_tr(src: &mut dyn Source, shape: &[usize], dtype: DType) -> Result<f32> {
    let footer_at = ArrayLayout::new(shape.to_vec(), dtype)
        .with_offset(DATA_OFFSET)
        .end();
    let footer = src.read(footer_at, FOOTER_SIZE)?;
    if footer.is_empty() && !src.reaches(footer_at)? {
        return Err(VoxelError::Truncated {
            path: src.path().display().to_string(),
            expected: footer_at,
            actual: src.known_len().unwrap_or(0),
        });
    }
    let mut padded = [0u8; FOOTER_SIZE];
    padded[..footer.len().min(FOOTER_SIZE)]
        .copy_from_slice(&footer[..footer.len().min(FOOTER_SIZE)]);
    Ok(f32::from_be_bytes([
        padded[0], padded[1], padded[2], padded[3],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::source::SliceSource;
    use crate::formats::test_util::mgh_file;
    use crate::formats::{NO_SCALING, Order};
    use std::path::Path;

    const MDC: [[f32; 3]; 3] = [[1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [3.0, 1.0, 2.0]];

    fn parse_bytes(bytes: &[u8], whole: bool) -> Result<Parsed> {
        let mut src = SliceSource::new(bytes, whole, Path::new("t.mgh"));
        parse(&mut src)
    }

    #[test]
    fn default_geometry_when_good_ras_is_zero() {
        let f = mgh_file([4, 5, 6, 1], 3, 0, [7.0; 3], MDC, [9.0; 3]);
        let p = parse_bytes(&f, true).unwrap();
        assert_eq!(p.format, Format::Mgh);
        assert_eq!(p.layout.shape, vec![4, 5, 6]);
        assert_eq!(p.layout.dtype.numpy_str(), ">f4");
        assert_eq!(
            (p.layout.offset, p.layout.order, p.header_bytes),
            (284, Order::F, 90)
        );
        assert_eq!((p.layout.slope, p.layout.inter), NO_SCALING);
        // Reference §4.6 vector.
        assert_eq!(p.affine[0], [-1.0, 0.0, 0.0, 2.0]);
        assert_eq!(p.affine[1], [0.0, 0.0, -1.0, 3.0]);
        assert_eq!(p.affine[2], [0.0, 1.0, 0.0, -2.5]);
        assert_eq!(p.zooms, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn stored_geometry_and_every_type() {
        for (code, want) in [(0, "|u1"), (1, ">i4"), (3, ">f4"), (4, ">i2"), (10, ">u2")] {
            let f = mgh_file(
                [3, 4, 5, 1],
                code,
                1,
                [1.0, 2.0, 0.5],
                MDC,
                [1.0, -2.0, 3.0],
            );
            let p = parse_bytes(&f, true).unwrap();
            assert_eq!(p.layout.dtype.numpy_str(), want);
            assert_eq!(p.zooms, vec![1.0, 2.0, 0.5]);
            // MdcD[i][j] = Mdc[j][i] * delta[j]; centre = MdcD · dims / 2.
            assert_eq!(p.affine[0][..3], [1.0, 4.0, 1.5]);
            assert_eq!(p.affine[1][..3], [2.0, 6.0, 0.5]);
            assert_eq!(p.affine[2][..3], [3.0, 2.0, 1.0]);
            // Translations pass through float32 (exact here).
            assert_eq!(p.affine[0][3], 1.0 - (3.0 + 16.0 + 7.5) / 2.0);
            assert_eq!(p.affine[1][3], -2.0 - (6.0 + 24.0 + 2.5) / 2.0);
            assert_eq!(p.affine[2][3], 3.0 - (9.0 + 8.0 + 5.0) / 2.0);
        }
    }

    #[test]
    fn translation_is_rounded_to_float32_like_nibabel() {
        let f = mgh_file(
            [3, 3, 3, 1],
            3,
            1,
            [0.3, 0.7, 1.1],
            MDC,
            [10.1, -20.2, 30.3],
        );
        let p = parse_bytes(&f, true).unwrap();
        for i in 0..3 {
            let mut centre = 0.0;
            for j in 0..3 {
                centre += f64::from(MDC[j][i] * [0.3f32, 0.7, 1.1][j]) * 3.0;
            }
            let t = f64::from([10.1f32, -20.2, 30.3][i]) - centre / 2.0;
            assert_eq!(p.affine[i][3], f64::from(t as f32));
            assert_ne!(p.affine[i][3], t);
        }
    }

    #[test]
    fn four_d_reads_tr_from_the_footer() {
        let mut f = mgh_file([2, 3, 4, 5], 4, 1, [1.0; 3], MDC, [0.0; 3]);
        f.extend(vec![0u8; 2 * 3 * 4 * 5 * 2]);
        let with_footer = [
            f.clone(),
            2000f32.to_be_bytes().to_vec(),
            vec![0; 16],
            b"tags".to_vec(),
        ]
        .concat();
        let p = parse_bytes(&with_footer, true).unwrap();
        assert_eq!(p.layout.shape, vec![2, 3, 4, 5]);
        assert_eq!(p.zooms, vec![1.0, 1.0, 1.0, 2000.0]);
        // No footer: TR 0; a short footer is zero-padded.
        assert_eq!(parse_bytes(&f, true).unwrap().zooms[3], 0.0);
        let short = [f.clone(), vec![0x40, 0x00]].concat();
        assert_eq!(parse_bytes(&short, true).unwrap().zooms[3], 2.0);
        // Data cut short: truncated.
        match parse_bytes(&f[..f.len() - 1], true) {
            Err(VoxelError::Truncated {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (284 + 240, 284 + 239));
            }
            other => panic!("{other:?}"),
        }
        // A prefix must reach the footer's end.
        assert!(matches!(
            parse_bytes(&f[..100], false),
            Err(VoxelError::Truncated { expected, .. }) if expected == 284 + 240 + 20
        ));
        // 3-D needs only the 90 header bytes.
        let f3 = mgh_file([2, 3, 4, 1], 4, 1, [1.0; 3], MDC, [0.0; 3]);
        assert_eq!(
            parse_bytes(&f3[..90], false).unwrap().layout.shape,
            vec![2, 3, 4]
        );
    }

    #[test]
    fn bad_headers() {
        let err = |f: &[u8]| parse_bytes(f, true).unwrap_err().to_string();
        assert!(err(&mgh_file([2, 0, 4, 1], 3, 1, [1.0; 3], MDC, [0.0; 3])).contains("non-zero"));
        assert!(
            err(&mgh_file([2, 3, 4, 1], 2, 1, [1.0; 3], MDC, [0.0; 3])).contains("data type 2")
        );
        let mut v2 = mgh_file([2, 3, 4, 1], 3, 1, [1.0; 3], MDC, [0.0; 3]);
        v2[0..4].copy_from_slice(&2i32.to_be_bytes());
        assert!(err(&v2).contains("version 2"));
        assert!(err(&mgh_file([2, -3, 4, 1], 3, 1, [1.0; 3], MDC, [0.0; 3])).contains("negative"));
        let huge = mgh_file(
            [i32::MAX, i32::MAX, i32::MAX, 2],
            3,
            1,
            [1.0; 3],
            MDC,
            [0.0; 3],
        );
        assert!(err(&huge).contains("too large"));
        assert!(matches!(
            parse_bytes(&v2[..50], true),
            Err(VoxelError::Truncated { expected: 90, .. })
        ));
    }
}
