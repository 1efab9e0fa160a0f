//! NIfTI-2 headers (540 bytes + 4 extension-flag bytes; reference §4.5): NIfTI-1's rules with int64 dims and
//! offset, float64 fields, the `eol_check` bytes, no FreeSurfer shape hacks and a float64 quaternion threshold.

use super::Parsed;
use super::analyze::short_header;
use super::fields::{Fields, guess_byte_order};
use super::nifti1::{Common, Version, VoxOffset, parse_common};
use super::source::Source;
use crate::error::Result;

pub const HEADER_SIZE: usize = 540;
/// Minimum `vox_offset` of a single file (header + extension flag).
pub const SINGLE_VOX_OFFSET: u64 = 544;

/// Parse a NIfTI-2 header; `single` selects `Nifti2Image` over `Nifti2Pair`.
pub(crate) fn parse(src: &mut dyn Source, single: bool) -> Result<Parsed> {
    let block = src.read(0, HEADER_SIZE)?;
    if block.len() < HEADER_SIZE {
        return Err(short_header(src.path(), HEADER_SIZE, block.len()));
    }
    let order = guess_byte_order(&block, 16, 8, HEADER_SIZE as i32);
    let f = Fields::new(&block, order);
    let f3 = |at: usize| -> [f64; 3] { std::array::from_fn(|k| f.f64(at + 8 * k)) };
    let row = |at: usize| -> [f64; 4] { std::array::from_fn(|k| f.f64(at + 8 * k)) };
    let c = Common {
        version: Version::Two,
        order,
        datatype: i64::from(f.i16(12)),
        dim: std::array::from_fn(|k| f.i64(16 + 8 * k)),
        pixdim: std::array::from_fn(|k| f.f64(104 + 8 * k)),
        vox_offset: VoxOffset::I64(f.i64(168)),
        scl_slope: f.f64(176),
        scl_inter: f.f64(184),
        qform_code: i64::from(f.i32(344)),
        sform_code: i64::from(f.i32(348)),
        xyzt_units: i64::from(f.i32(500)),
        quatern: f3(352),
        qoffset: f3(376),
        srow: [row(400), row(432), row(464)],
        glmin: None,
        magic: f.raw(4, 4).try_into().unwrap_or_default(),
        eol_check: f.raw(8, 4).try_into().ok(),
    };
    parse_common(src, c, single)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{ByteOrder, DType, Scalar};
    use crate::error::VoxelError;
    use crate::formats::source::SliceSource;
    use crate::formats::test_util::{HeaderBuilder, extension_bytes};
    use crate::formats::{Factor, Format, NO_SCALING, Order};
    use std::path::Path;

    fn parse_bytes(bytes: &[u8], single: bool) -> Result<Parsed> {
        let name = if single { "t.nii" } else { "t.hdr" };
        let mut src = SliceSource::new(bytes, true, Path::new(name));
        parse(&mut src, single)
    }

    #[test]
    fn single_and_pair_both_byte_orders() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let b = HeaderBuilder::nifti2(order, &[5, 6, 7, 2], 1024, true)
                .zooms(&[1.5, 2.5, 3.5, 0.8]);
            let p = parse_bytes(&b.single_file(&[], &[]), true).unwrap();
            assert_eq!(p.format, Format::Nifti2Image);
            assert_eq!(p.layout.shape, vec![5, 6, 7, 2]);
            assert_eq!(p.layout.dtype, DType::new(Scalar::I64, order));
            assert_eq!((p.layout.offset, p.header_bytes), (544, 544));
            assert_eq!(p.zooms, vec![1.5, 2.5, 3.5, 0.8]);
            assert_eq!(
                (p.layout.slope, p.layout.inter, p.layout.order),
                (NO_SCALING.0, NO_SCALING.1, Order::F)
            );
            assert_eq!(p.affine[0], [-1.5, 0.0, 0.0, 3.0]);
            let h = HeaderBuilder::nifti2(order, &[3], 16, false)
                .vox_offset(0.0)
                .build();
            let p = parse_bytes(&h, false).unwrap();
            assert_eq!(
                (p.format, p.layout.offset, p.header_bytes),
                (Format::Nifti2Pair, 0, 540)
            );
        }
    }

    #[test]
    fn large_dims_and_float64_fields() {
        // int64 dims beyond NIfTI-1's int16; float64 scale factors kept exactly.
        let b = HeaderBuilder::nifti2(ByteOrder::Little, &[100_000, 70_000], 2, true)
            .scaling(0.1, -1e-7);
        let p = parse_bytes(&b.single_file(&[], &[]), true).unwrap();
        assert_eq!(p.layout.shape, vec![100_000, 70_000]);
        assert_eq!(
            (p.layout.slope, p.layout.inter),
            (Factor::F64(0.1), Factor::F64(-1e-7))
        );
        let b = HeaderBuilder::nifti2(ByteOrder::Little, &[i64::MAX / 2, 4], 2, true);
        assert!(
            parse_bytes(&b.single_file(&[], &[]), true)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        let b = HeaderBuilder::nifti2(ByteOrder::Little, &[3, -1, 1], 2, true);
        assert!(
            parse_bytes(&b.single_file(&[], &[]), true)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }

    #[test]
    fn eol_check_magic_and_offset() {
        let b = HeaderBuilder::nifti2(ByteOrder::Big, &[3], 2, true);
        // All-zero eol_check is fixed silently; anything else is an error.
        let zero = b.clone().bytes_at(8, &[0, 0, 0, 0]).single_file(&[], &[]);
        assert!(parse_bytes(&zero, true).is_ok());
        let dos = b
            .clone()
            .bytes_at(8, &[13, 10, 26, 13])
            .single_file(&[], &[]);
        let e = parse_bytes(&dos, true).unwrap_err().to_string();
        assert!(e.contains("eol_check") && e.contains("t.nii"), "{e}");
        let magic = b.clone().bytes_at(4, b"n+1\0").single_file(&[], &[]);
        assert!(
            parse_bytes(&magic, true)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        for low in [352.0, 543.0, -1.0] {
            let h = b.clone().vox_offset(low).build();
            assert!(
                parse_bytes(&h, true)
                    .unwrap_err()
                    .to_string()
                    .contains("too low")
            );
        }
        let h = HeaderBuilder::nifti2(ByteOrder::Big, &[3], 2, false)
            .vox_offset(-8.0)
            .build();
        assert!(
            parse_bytes(&h, false)
                .unwrap_err()
                .to_string()
                .contains("vox_offset")
        );
    }

    #[test]
    fn extensions_and_truncation() {
        let b = HeaderBuilder::nifti2(ByteOrder::Little, &[2], 2, true).vox_offset(544.0 + 48.0);
        let file = b.clone().single_file(&[(4, &[1; 20]), (6, b"x")], &[9, 9]);
        assert_eq!(
            extension_bytes(ByteOrder::Little, &[(4, &[1; 20]), (6, b"x")]).len(),
            48
        );
        let p = parse_bytes(&file, true).unwrap();
        assert_eq!((p.layout.offset, p.header_bytes), (592, 592));
        assert!(
            parse_bytes(&file[..570], true)
                .unwrap_err()
                .to_string()
                .contains("extension")
        );
        let mut src = SliceSource::new(&file[..560], false, Path::new("t.nii"));
        assert!(matches!(
            parse(&mut src, true),
            Err(VoxelError::Truncated { expected: 576, .. })
        ));
        assert!(matches!(
            parse_bytes(&file[..539], true),
            Err(VoxelError::Truncated {
                expected: 540,
                actual: 539,
                ..
            })
        ));
    }

    #[test]
    fn qform_uses_the_float64_threshold() {
        // b just above 1 by more than 3·eps(f64) is an error for NIfTI-2 (NIfTI-1's float32 threshold would
        // accept it as w = 0).
        let b = 1.0 + 8.0 * f64::EPSILON;
        let h = HeaderBuilder::nifti2(ByteOrder::Little, &[2, 2, 2], 2, true).qform(
            1,
            [b, 0.0, 0.0],
            [0.0; 3],
        );
        assert!(
            parse_bytes(&h.single_file(&[], &[]), true)
                .unwrap_err()
                .to_string()
                .contains("qform")
        );
        let h = HeaderBuilder::nifti2(ByteOrder::Little, &[2, 2, 2], 2, true)
            .zooms(&[2.0, 2.0, 2.0])
            .qform(2, [1.0, 0.0, 0.0], [5.0, 6.0, 7.0]);
        let p = parse_bytes(&h.single_file(&[], &[]), true).unwrap();
        assert_eq!(p.affine[0], [2.0, 0.0, 0.0, 5.0]);
        assert_eq!(p.affine[1], [0.0, -2.0, 0.0, 6.0]);
        assert_eq!(p.affine[2], [0.0, 0.0, -2.0, 7.0]);
    }
}
