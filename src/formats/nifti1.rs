//! NIfTI-1 headers (348 bytes + 4 extension-flag bytes; reference §4.4) and the logic NIfTI-2 shares with it:
//! datatype codes, load-time checks, extensions, scaling and the sform > qform > fall-back affine.
//!
//! The checks run in nibabel's order (datatype, magic, single-file offset, then NIfTI-2's eol_check), then
//! extensions, shape, offset and scaling, then the affine — so the first error is the one nibabel reports.

use std::path::Path;

use super::affine::{
    Affine, IDENTITY, quaternion_rotation, rotation_zoom_affine, shape_zoom_affine,
};
use super::analyze::{
    Codes, affine_dims, datatype, fix_pixdim, float_offset, read_dims, read_pixdim_f32, shape_dims,
    short_header, zooms,
};
use super::fields::{Fields, guess_byte_order};
use super::source::Source;
use super::{ArrayLayout, Factor, Format, NO_SCALING, Order, Parsed, checked_shape};
use crate::dtype::ByteOrder;
use crate::error::{Result, VoxelError};

pub const HEADER_SIZE: usize = 348;
/// Minimum `vox_offset` of a single file (header + extension flag).
pub const SINGLE_VOX_OFFSET: u64 = 352;

/// NIfTI-1 or NIfTI-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    One,
    Two,
}

impl Version {
    fn header_size(self) -> u64 {
        match self {
            Version::One => 348,
            Version::Two => 540,
        }
    }

    fn single_vox_offset(self) -> u64 {
        self.header_size() + 4
    }

    fn magics(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Version::One => (b"n+1\0", b"ni1\0"),
            Version::Two => (b"n+2\0", b"ni2\0"),
        }
    }

    /// nibabel's `quaternion_threshold`: 3·eps of the field's float type.
    fn quaternion_threshold(self) -> f64 {
        match self {
            Version::One => 3.0 * f64::from(f32::EPSILON),
            Version::Two => 3.0 * f64::EPSILON,
        }
    }

    fn format(self, single: bool) -> Format {
        match (self, single) {
            (Version::One, true) => Format::Nifti1Image,
            (Version::One, false) => Format::Nifti1Pair,
            (Version::Two, true) => Format::Nifti2Image,
            (Version::Two, false) => Format::Nifti2Pair,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Version::One => "NIfTI-1",
            Version::Two => "NIfTI-2",
        }
    }
}

/// `vox_offset`: float32 in NIfTI-1 (truncated by `int()`), int64 in NIfTI-2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum VoxOffset {
    F32(f32),
    I64(i64),
}

impl VoxOffset {
    fn is_zero(self) -> bool {
        match self {
            VoxOffset::F32(v) => v == 0.0,
            VoxOffset::I64(v) => v == 0,
        }
    }

    fn below(self, min: u64) -> bool {
        match self {
            VoxOffset::F32(v) => f64::from(v) < min as f64,
            VoxOffset::I64(v) => i128::from(v) < i128::from(min),
        }
    }

    fn to_u64(self, path: &Path) -> Result<u64> {
        match self {
            VoxOffset::F32(v) => float_offset(v, path),
            VoxOffset::I64(v) => u64::try_from(v).map_err(|_| {
                VoxelError::header_field(
                    path,
                    "vox_offset",
                    v,
                    format!("vox_offset {v} is not a valid byte offset"),
                )
            }),
        }
    }

    /// Bytes between `after` and the data (nibabel's extension-loop `size`: float32 arithmetic in NIfTI-1).
    fn room_after(self, after: u64) -> f64 {
        match self {
            VoxOffset::F32(v) => f64::from(v - after as f32),
            VoxOffset::I64(v) => (i128::from(v) - i128::from(after)) as f64,
        }
    }
}

/// The fields NIfTI-1 and NIfTI-2 share, widened (NIfTI-1's float32 values are held exactly in f64).
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub version: Version,
    pub order: ByteOrder,
    pub datatype: i64,
    pub dim: [i64; 8],
    pub pixdim: [f64; 8],
    pub vox_offset: VoxOffset,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i64,
    pub sform_code: i64,
    pub xyzt_units: i64,
    pub quatern: [f64; 3],
    pub qoffset: [f64; 3],
    pub srow: [[f64; 4]; 3],
    /// FreeSurfer's vector length (NIfTI-1 only; `None` for NIfTI-2, which has no shape hacks).
    pub glmin: Option<i64>,
    pub magic: [u8; 4],
    /// NIfTI-2's four eol_check bytes.
    pub eol_check: Option<[u8; 4]>,
}

/// The checks nibabel runs at load that raise (level ≥ 40), in its order after the datatype check.
fn check_magic_offset_eol(c: &Common, path: &Path) -> Result<()> {
    let (single_magic, pair_magic) = c.version.magics();
    if c.magic != single_magic && c.magic != pair_magic {
        let shown = String::from_utf8_lossy(&c.magic)
            .trim_end_matches('\0')
            .to_string();
        return Err(VoxelError::header_field(
            path,
            "magic",
            format!("{shown:?}"),
            format!(
                "magic string {shown:?} is not valid for {}",
                c.version.label()
            ),
        ));
    }
    let min = c.version.single_vox_offset();
    if c.magic == single_magic && !c.vox_offset.is_zero() && c.vox_offset.below(min) {
        let shown = match c.vox_offset {
            VoxOffset::F32(v) => v.to_string(),
            VoxOffset::I64(v) => v.to_string(),
        };
        return Err(VoxelError::header_field(
            path,
            "vox_offset",
            &shown,
            format!(
                "vox_offset {shown} too low for a single-file {} (minimum {min})",
                c.version.label()
            ),
        ));
    }
    if let Some(eol) = c.eol_check
        && eol != [13, 10, 26, 10]
        && eol != [0, 0, 0, 0]
    {
        return Err(VoxelError::header_field(
            path,
            "eol_check",
            format!("{eol:?}"),
            format!(
                "eol_check bytes {eol:?} are not 0D 0A 1A 0A: data may be corrupted by EOL conversion"
            ),
        ));
    }
    Ok(())
}

/// Walk the extensions after the header (nibabel's `Nifti1Extensions.from_fileobj`): up to `vox_offset` for a
/// single file (while at least 16 bytes remain; to the end of the file if `vox_offset` is below the header),
/// to the end of the file for a pair header. Returns the header bytes consumed. Extensions only matter
/// through `vox_offset`; a truncated one is an error.
fn read_extensions(src: &mut dyn Source, c: &Common, single: bool) -> Result<u64> {
    let hsize = c.version.header_size();
    let flag = src.read(hsize, 4)?;
    if flag.len() < 4 || flag.first() == Some(&0) {
        return Ok(hsize + flag.len() as u64);
    }
    let mut pos = hsize + 4;
    let mut size = if single {
        c.vox_offset.room_after(pos)
    } else {
        -1.0
    };
    // Not `!(0.0..16.0).contains(&size)`: a NaN size (NaN vox_offset) must not enter the loop, as in nibabel.
    #[allow(clippy::manual_range_contains)]
    while size >= 16.0 || size < 0.0 {
        let head = src.read(pos, 8)?;
        if head.is_empty() && size < 0.0 {
            break;
        }
        if head.len() != 8 {
            return Err(VoxelError::header(
                src.path(),
                format!("failed to read NIfTI extension header at byte {pos}: file ends"),
            ));
        }
        let esize = Fields::new(&head, c.order).i32(0);
        if esize < 8 {
            return Err(VoxelError::header_field(
                src.path(),
                "esize",
                esize,
                format!("NIfTI extension at byte {pos} has invalid size {esize} (< 8)"),
            ));
        }
        let end = pos + esize as u64;
        if !src.reaches(end)? {
            return Err(VoxelError::header(
                src.path(),
                format!(
                    "failed to read NIfTI extension content: extension at byte {pos} of size {esize} is truncated"
                ),
            ));
        }
        size -= f64::from(esize);
        pos = end;
    }
    Ok(pos)
}

/// nibabel's `get_slope_inter` for NIfTI: slope 0 or non-finite → no scaling (intercept ignored); a valid
/// slope with a non-finite intercept is an error.
pub(crate) fn slope_inter(slope: f64, inter: f64, path: &Path) -> Result<(Factor, Factor)> {
    if slope == 0.0 || !slope.is_finite() {
        return Ok(NO_SCALING);
    }
    if !inter.is_finite() {
        return Err(VoxelError::header_field(
            path,
            "scl_inter",
            inter,
            format!("valid slope {slope} but invalid intercept {inter}"),
        ));
    }
    Ok((Factor::F64(slope), Factor::F64(inter)))
}

/// FreeSurfer's shape hacks (NIfTI-1 only): `(-1, 1, 1, ...)` takes the length from `glmin`; the ico7 surface
/// `(27307, 1, 6, ...)` is `(163842, 1, 1, ...)`.
fn freesurfer_shape(dims: Vec<i64>, glmin: i64, path: &Path) -> Result<Vec<i64>> {
    match dims.get(..3) {
        Some([-1, 1, 1]) => {
            if glmin == 0 {
                return Err(VoxelError::header_field(
                    path,
                    "glmin",
                    0,
                    "-1 in dim[1] but 0 in glmin; inconsistent FreeSurfer-style header",
                ));
            }
            Ok([glmin, 1, 1]
                .into_iter()
                .chain(dims.into_iter().skip(3))
                .collect())
        }
        Some([27307, 1, 6]) => Ok([163842, 1, 1]
            .into_iter()
            .chain(dims.into_iter().skip(3))
            .collect()),
        _ => Ok(dims),
    }
}

/// The load-time fixes that change geometry: pixdim[1..=3] (zero → 1, negative → abs), qfac not ±1 → 1.
fn fixed_pixdim(pixdim: [f64; 8]) -> [f64; 8] {
    let mut p = fix_pixdim(pixdim);
    if p[0] != 1.0 && p[0] != -1.0 {
        p[0] = 1.0;
    }
    p
}

/// An xform code outside nibabel's table (0..=5) is reset to 0 at load.
fn valid_code(code: i64) -> i64 {
    if (0..=5).contains(&code) { code } else { 0 }
}

/// `get_best_affine`: sform if its code is set, else qform if its code is set, else the Analyze fall-back.
fn best_affine(c: &Common, pixdim: &[f64; 8], path: &Path) -> Result<Affine> {
    if valid_code(c.sform_code) != 0 {
        let mut aff = IDENTITY;
        aff[..3].copy_from_slice(&c.srow);
        return Ok(aff);
    }
    if valid_code(c.qform_code) != 0 {
        let [b, cq, d] = c.quatern;
        let r = quaternion_rotation(b, cq, d, c.version.quaternion_threshold()).map_err(|w2| {
            VoxelError::header_field(
                path,
                "quatern_bcd",
                format!("({b}, {cq}, {d})"),
                format!("qform quaternion (b, c, d) = ({b}, {cq}, {d}) is not a rotation: w² = {w2:e} < 0"),
            )
        })?;
        let zooms = [pixdim[1], pixdim[2], pixdim[3] * pixdim[0]];
        return Ok(rotation_zoom_affine(&r, zooms, c.qoffset));
    }
    Ok(shape_zoom_affine(affine_dims(&c.dim), &pixdim[1..], true))
}

/// Everything after field extraction, shared by NIfTI-1 and NIfTI-2.
pub(crate) fn parse_common(src: &mut dyn Source, c: Common, single: bool) -> Result<Parsed> {
    let path = src.path().to_path_buf();
    let dtype = datatype(c.datatype, Codes::Nifti, c.order, &path)?;
    check_magic_offset_eol(&c, &path)?;
    let header_bytes = read_extensions(src, &c, single)?;
    let mut dims = shape_dims(&c.dim, &path)?;
    if let Some(glmin) = c.glmin {
        dims = freesurfer_shape(dims, glmin, &path)?;
    }
    let offset = c.vox_offset.to_u64(&path)?;
    let shape = checked_shape(&path, &dims, dtype, offset)?;
    let (slope, inter) = slope_inter(c.scl_slope, c.scl_inter, &path)?;
    let pixdim = fixed_pixdim(c.pixdim);
    let affine = best_affine(&c, &pixdim, &path)?;
    Ok(Parsed {
        format: c.version.format(single),
        layout: ArrayLayout {
            shape,
            dtype,
            offset,
            order: Order::F,
            slope,
            inter,
        },
        affine,
        zooms: zooms(&c.dim, &pixdim),
        world: super::WorldMeta::nifti(
            valid_code(c.sform_code),
            valid_code(c.qform_code),
            c.xyzt_units,
        ),
        header_bytes,
    })
}

/// Parse a NIfTI-1 header; `single` selects `Nifti1Image` (data in the same file, extensions up to
/// `vox_offset`) over `Nifti1Pair`.
pub(crate) fn parse(src: &mut dyn Source, single: bool) -> Result<Parsed> {
    let block = src.read(0, HEADER_SIZE)?;
    if block.len() < HEADER_SIZE {
        return Err(short_header(src.path(), HEADER_SIZE, block.len()));
    }
    let order = guess_byte_order(&block, 40, 2, HEADER_SIZE as i32);
    let f = Fields::new(&block, order);
    let f3 = |at: usize| -> [f64; 3] { std::array::from_fn(|k| f64::from(f.f32(at + 4 * k))) };
    let row = |at: usize| -> [f64; 4] { std::array::from_fn(|k| f64::from(f.f32(at + 4 * k))) };
    let c = Common {
        version: Version::One,
        order: f.order(),
        datatype: i64::from(f.i16(70)),
        dim: read_dims(&f, 40),
        pixdim: read_pixdim_f32(&f, 76),
        vox_offset: VoxOffset::F32(f.f32(108)),
        scl_slope: f64::from(f.f32(112)),
        scl_inter: f64::from(f.f32(116)),
        qform_code: i64::from(f.i16(252)),
        sform_code: i64::from(f.i16(254)),
        xyzt_units: i64::from(f.raw(123, 1).first().copied().unwrap_or(0)),
        quatern: f3(256),
        qoffset: f3(268),
        srow: [row(280), row(296), row(312)],
        glmin: Some(i64::from(f.i32(144))),
        magic: f.raw(344, 4).try_into().unwrap_or_default(),
        eol_check: None,
    };
    parse_common(src, c, single)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{DType, Scalar};
    use crate::formats::source::SliceSource;
    use crate::formats::test_util::{HeaderBuilder, extension_bytes};

    fn parse_bytes(bytes: &[u8], single: bool) -> Result<Parsed> {
        let name = if single { "t.nii" } else { "t.hdr" };
        let mut src = SliceSource::new(bytes, true, Path::new(name));
        parse(&mut src, single)
    }

    fn single(b: HeaderBuilder) -> Vec<u8> {
        b.single_file(&[], &[])
    }

    #[test]
    fn single_file_both_byte_orders() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let h = HeaderBuilder::nifti1(order, &[2, 3, 4], 4, true)
                .zooms(&[2.0, 3.0, 4.0])
                .build();
            let bytes = [h, vec![0, 0, 0, 0]].concat();
            let p = parse_bytes(&bytes, true).unwrap();
            assert_eq!(p.format, Format::Nifti1Image);
            assert_eq!(p.layout.shape, vec![2, 3, 4]);
            assert_eq!(p.layout.dtype, DType::new(Scalar::I16, order));
            assert_eq!(
                p.layout.dtype.numpy_str(),
                if order == ByteOrder::Big {
                    ">i2"
                } else {
                    "<i2"
                }
            );
            assert_eq!(p.layout.offset, 352);
            assert_eq!((p.layout.slope, p.layout.inter), NO_SCALING);
            assert_eq!(p.layout.order, Order::F);
            assert_eq!(p.zooms, vec![2.0, 3.0, 4.0]);
            assert_eq!(p.header_bytes, 352);
            // No sform/qform: the Analyze fall-back.
            assert_eq!(p.affine[0], [-2.0, 0.0, 0.0, 1.0]);
            assert_eq!(p.affine[1], [0.0, 3.0, 0.0, -3.0]);
            assert_eq!(p.affine[2], [0.0, 0.0, 4.0, -6.0]);
        }
    }

    #[test]
    fn every_datatype_code() {
        let table = [
            (2, "|u1"),
            (4, "<i2"),
            (8, "<i4"),
            (16, "<f4"),
            (32, "<c8"),
            (64, "<f8"),
            (128, "|V3"),
            (256, "|i1"),
            (512, "<u2"),
            (768, "<u4"),
            (1024, "<i8"),
            (1280, "<u8"),
            (1792, "<c16"),
            (2304, "|V4"),
        ];
        for (code, want) in table {
            let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[2], code, true));
            assert_eq!(
                parse_bytes(&h, true).unwrap().layout.dtype.numpy_str(),
                want,
                "code {code}"
            );
            let h = single(HeaderBuilder::nifti1(ByteOrder::Big, &[2], code, true));
            let big = want.replace('<', ">");
            assert_eq!(
                parse_bytes(&h, true).unwrap().layout.dtype.numpy_str(),
                big,
                "code {code}"
            );
        }
        for code in [1536, 2048] {
            let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[2], code, true));
            match parse_bytes(&h, true) {
                Err(VoxelError::Unsupported { path, what }) => {
                    assert_eq!(path, "t.nii");
                    assert!(what.contains(&code.to_string()), "{what}");
                }
                other => panic!("{other:?}"),
            }
        }
        for code in [0, 1, 255] {
            let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[2], code, true));
            let e = parse_bytes(&h, true).unwrap_err().to_string();
            assert!(
                e.contains("t.nii") && e.contains(&format!("data code {code} not supported")),
                "{e}"
            );
        }
        for code in [3, 100, -4, 4096] {
            let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[2], code, true));
            let e = parse_bytes(&h, true).unwrap_err().to_string();
            assert!(e.contains("not recognized"), "{e}");
        }
    }

    #[test]
    fn vox_offset_rules() {
        // Truncated toward zero.
        let h = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, true)
            .vox_offset(400.9)
            .single_file(&[], &[0; 2]);
        assert_eq!(parse_bytes(&h, true).unwrap().layout.offset, 400);
        // Too low for a single file (n+1 magic), even on a .hdr name: decided by magic like nibabel.
        for low in [100.0, 351.5, -5.0] {
            let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, true).vox_offset(low));
            let e = parse_bytes(&h, true).unwrap_err().to_string();
            assert!(e.contains("too low"), "{e}");
            assert!(
                parse_bytes(&h, false)
                    .unwrap_err()
                    .to_string()
                    .contains("too low")
            );
        }
        // 0 reads from byte 0 (nibabel's behaviour, reference Q12).
        let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, true).vox_offset(0.0));
        assert_eq!(parse_bytes(&h, true).unwrap().layout.offset, 0);
        // The pair magic allows any non-negative offset.
        let h = HeaderBuilder::nifti1(ByteOrder::Big, &[2], 2, false)
            .vox_offset(7.0)
            .build();
        let p = parse_bytes(&h, false).unwrap();
        assert_eq!(
            (p.format, p.layout.offset, p.header_bytes),
            (Format::Nifti1Pair, 7, 348)
        );
        for bad in [-3.0, f64::NAN] {
            let h = HeaderBuilder::nifti1(ByteOrder::Big, &[2], 2, false)
                .vox_offset(bad)
                .build();
            assert!(
                parse_bytes(&h, false)
                    .unwrap_err()
                    .to_string()
                    .contains("vox_offset"),
                "{bad}"
            );
        }
    }

    #[test]
    fn magic_is_checked() {
        let h = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, true)
            .bytes_at(344, b"n+2\0")
            .build();
        let e = parse_bytes(&h, true).unwrap_err().to_string();
        assert!(e.contains("magic") && e.contains("n+2"), "{e}");
        // A bad datatype is reported before a bad magic, as nibabel does.
        let h = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 3, true)
            .bytes_at(344, b"xxxx")
            .build();
        assert!(
            parse_bytes(&h, true)
                .unwrap_err()
                .to_string()
                .contains("data code 3")
        );
    }

    #[test]
    fn extensions_move_nothing_but_must_be_whole() {
        let payload = b"some extension text";
        let ext = extension_bytes(ByteOrder::Big, &[(6, payload)]);
        assert_eq!(ext.len(), 32);
        let b = HeaderBuilder::nifti1(ByteOrder::Big, &[2, 2], 2, true).vox_offset(352.0 + 32.0);
        let file = b.clone().single_file(&[(6, payload)], &[1, 2, 3, 4]);
        let p = parse_bytes(&file, true).unwrap();
        assert_eq!((p.layout.offset, p.header_bytes), (384, 384));
        // Cut inside the extension payload: an error naming the file.
        let cut = &file[..370];
        let e = parse_bytes(cut, true).unwrap_err().to_string();
        assert!(e.contains("t.nii") && e.contains("extension"), "{e}");
        // Cut inside the extension head.
        let e = parse_bytes(&file[..356], true).unwrap_err().to_string();
        assert!(e.contains("extension header"), "{e}");
        // From a prefix the parser asks for the extension's end.
        let mut src = SliceSource::new(&file[..370], false, Path::new("t.nii"));
        assert!(matches!(
            parse(&mut src, true),
            Err(VoxelError::Truncated { expected: 384, .. })
        ));
        // esize below 8 is invalid.
        let mut bad = file.clone();
        bad[352..356].copy_from_slice(&4i32.to_be_bytes());
        assert!(
            parse_bytes(&bad, true)
                .unwrap_err()
                .to_string()
                .contains("invalid size 4")
        );
        // Flag byte 0: extensions ignored whatever follows.
        let mut off = file.clone();
        off[348] = 0;
        assert_eq!(parse_bytes(&off, true).unwrap().header_bytes, 352);
        // Fewer than 16 bytes of room: not read.
        let b = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, true)
            .vox_offset(360.0)
            .build();
        let file = [b, vec![1, 0, 0, 0], vec![0xff; 8], vec![0; 2]].concat();
        assert_eq!(parse_bytes(&file, true).unwrap().header_bytes, 352);
    }

    #[test]
    fn pair_extensions_run_to_the_end_of_the_header_file() {
        let ext = extension_bytes(ByteOrder::Little, &[(4, b"abc"), (14, &[7; 40])]);
        let h = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, false).build();
        let file = [h.clone(), vec![1, 0, 0, 0], ext.clone()].concat();
        let p = parse_bytes(&file, false).unwrap();
        assert_eq!(p.header_bytes, 352 + ext.len() as u64);
        // A 348-byte .hdr (no flag bytes) is fine.
        assert_eq!(parse_bytes(&h, false).unwrap().header_bytes, 348);
        // Trailing partial extension head.
        let file = [h, vec![1, 0, 0, 0], ext, vec![0; 3]].concat();
        assert!(
            parse_bytes(&file, false)
                .unwrap_err()
                .to_string()
                .contains("extension header")
        );
    }

    #[test]
    fn scaling_rules() {
        let s = |slope: f64, inter: f64| {
            let h = single(
                HeaderBuilder::nifti1(ByteOrder::Little, &[2], 4, true).scaling(slope, inter),
            );
            parse_bytes(&h, true).map(|p| (p.layout.slope, p.layout.inter))
        };
        assert_eq!(s(2.0, 10.0).unwrap(), (Factor::F64(2.0), Factor::F64(10.0)));
        assert_eq!(
            s(0.1, 0.0).unwrap(),
            (Factor::F64(f64::from(0.1f32)), Factor::F64(0.0))
        );
        assert_eq!(s(0.0, 5.0).unwrap(), NO_SCALING);
        assert_eq!(s(f64::NAN, 5.0).unwrap(), NO_SCALING);
        assert_eq!(s(f64::INFINITY, 0.0).unwrap(), NO_SCALING);
        assert_eq!(s(1.0, 0.0).unwrap(), NO_SCALING);
        assert_eq!(s(1.0, 3.0).unwrap(), (Factor::F64(1.0), Factor::F64(3.0)));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = s(2.0, bad).unwrap_err().to_string();
            assert!(e.contains("invalid intercept"), "{e}");
        }
    }

    #[test]
    fn freesurfer_shape_hacks() {
        let h = single(
            HeaderBuilder::nifti1(ByteOrder::Little, &[-1, 1, 1, 3], 16, true).i32_at(144, 200000),
        );
        let p = parse_bytes(&h, true).unwrap();
        assert_eq!(p.layout.shape, vec![200000, 1, 1, 3]);
        // The fall-back affine still sees the raw dims (-1 → centre -1).
        assert_eq!(p.affine[0][3], -1.0);
        let h = single(HeaderBuilder::nifti1(
            ByteOrder::Little,
            &[-1, 1, 1],
            16,
            true,
        ));
        assert!(
            parse_bytes(&h, true)
                .unwrap_err()
                .to_string()
                .contains("glmin")
        );
        let h = single(HeaderBuilder::nifti1(
            ByteOrder::Big,
            &[27307, 1, 6],
            16,
            true,
        ));
        assert_eq!(
            parse_bytes(&h, true).unwrap().layout.shape,
            vec![163842, 1, 1]
        );
        let h = single(HeaderBuilder::nifti1(
            ByteOrder::Big,
            &[27307, 1, 6, 2],
            16,
            true,
        ));
        assert_eq!(
            parse_bytes(&h, true).unwrap().layout.shape,
            vec![163842, 1, 1, 2]
        );
        let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[4, -2], 16, true));
        assert!(
            parse_bytes(&h, true)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }

    #[test]
    fn sform_over_qform_over_fallback() {
        let rows = [
            [1.5, 0.1, 0.0, -10.0],
            [0.0, 2.0, 0.2, 20.0],
            [0.3, 0.0, 2.5, 30.25],
        ];
        let base =
            HeaderBuilder::nifti1(ByteOrder::Big, &[4, 5, 6], 4, true).zooms(&[2.0, 3.0, 4.0]);
        // qform: 90° about z (b=c=0, d=sin 45°), qfac -1 flips the third zoom.
        let s45 = std::f64::consts::FRAC_1_SQRT_2;
        let q = base
            .clone()
            .qform(1, [0.0, 0.0, s45], [1.0, 2.0, 3.0])
            .qfac(-1.0);
        let p = parse_bytes(&single(q.clone()), true).unwrap();
        let d = f64::from(s45 as f32);
        let w = (1.0 - d * d).sqrt();
        let r01 = -2.0 * w * d; // quat2mat entry xY - wZ with x = y = 0
        assert!((p.affine[0][1] - r01 * 3.0).abs() < 1e-12, "{:?}", p.affine);
        assert!((p.affine[1][0] + r01 * 2.0).abs() < 1e-12);
        assert_eq!(p.affine[2][2], -4.0);
        assert_eq!(
            [p.affine[0][3], p.affine[1][3], p.affine[2][3]],
            [1.0, 2.0, 3.0]
        );
        // sform wins when its code is set.
        let p = parse_bytes(&single(q.clone().sform(2, rows)), true).unwrap();
        for (r, row) in rows.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(p.affine[r][c], f64::from(v as f32));
            }
        }
        assert_eq!(p.affine[3], [0.0, 0.0, 0.0, 1.0]);
        // Invalid codes are reset to 0 at load: an sform code of 9 is ignored.
        let p = parse_bytes(&single(q.clone().sform(9, rows)), true).unwrap();
        assert_eq!(p.affine[2][2], -4.0);
        // Neither: fall-back.
        let p = parse_bytes(&single(base.clone().sform(0, rows)), true).unwrap();
        assert_eq!(p.affine[0], [-2.0, 0.0, 0.0, 3.0]);
        // qfac other than ±1 is fixed to 1; negative pixdims are made positive before the qform.
        let p = parse_bytes(
            &single(
                base.clone()
                    .qform(1, [0.0; 3], [0.0; 3])
                    .qfac(0.0)
                    .zooms(&[-2.0]),
            ),
            true,
        )
        .unwrap();
        assert_eq!(
            [p.affine[0][0], p.affine[1][1], p.affine[2][2]],
            [2.0, 3.0, 4.0]
        );
        // A quaternion that is clearly not unit: nibabel raises while computing the affine.
        let e = parse_bytes(&single(base.qform(1, [0.9, 0.9, 0.0], [0.0; 3])), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("qform") && e.contains("t.nii"), "{e}");
    }

    #[test]
    fn fallback_affine_ignores_pixdims_past_ndim() {
        // nibabel: shape_zoom_affine(dim[1:ndim+1], pixdim[1:ndim+1]) padded with ones.
        let h = single(
            HeaderBuilder::nifti1(ByteOrder::Big, &[4, 6], 2, true).zooms(&[2.0, 3.0, 2.5, 7.0]),
        );
        let p = parse_bytes(&h, true).unwrap();
        assert_eq!(p.affine[0], [-2.0, 0.0, 0.0, 3.0]);
        assert_eq!(p.affine[1], [0.0, 3.0, 0.0, -7.5]);
        assert_eq!(p.affine[2], [0.0, 0.0, 1.0, 0.0]);
        assert_eq!(p.zooms, vec![2.0, 3.0]);
    }

    #[test]
    fn truncated_header_and_dim0() {
        let h = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, true).build();
        assert!(matches!(
            parse_bytes(&h[..200], true),
            Err(VoxelError::Truncated {
                expected: 348,
                actual: 200,
                ..
            })
        ));
        let h = single(HeaderBuilder::nifti1(ByteOrder::Little, &[], 2, true));
        let p = parse_bytes(&h, true).unwrap();
        assert_eq!(
            (p.layout.shape.clone(), p.zooms.clone()),
            (vec![0], vec![1.0])
        );
        // dim[0] invalid in both byte orders (a pair header, so the swapped vox_offset is not checked).
        let h = HeaderBuilder::nifti1(ByteOrder::Little, &[2], 2, false)
            .i16_at(40, -300)
            .build();
        assert!(
            parse_bytes(&h, false)
                .unwrap_err()
                .to_string()
                .contains("dim[0]")
        );
    }
}
