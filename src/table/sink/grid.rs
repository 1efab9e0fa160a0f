//! The output grid of a NIfTI write: the template header (shape, affine, codes, zooms, units, TR, descrip) that a
//! written image takes over, read from any image the crate can open, and the NIfTI-1 header built from it.
//!
//! The model is nibabel's `nib.Nifti1Image(data, like.affine, like.header)` followed by `set_data_dtype` and
//! `nib.save`: a NIfTI-1 template's header fields are kept as they are (`from_header` copies them; the affine
//! passed equals the header's best affine, so the qform/sform are not touched); `set_data_shape` rewrites `dim`
//! and resets `pixdim` past the new number of axes to 1 (a 3-D map from a 4-D template loses the TR, as in
//! nibabel); the data type, `vox_offset` 352, `scl_slope`/`scl_inter` and the magic are the writer's. Extensions
//! of the template are not copied. Any other template (NIfTI-2, Analyze, MGH) gives its affine as the sform with
//! code 2 (aligned) and its zooms, qform code 0 (nibabel's `_affine2header`; nibabel also fills the unused qform
//! parameters, which are left 0 here).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::dtype::{ByteOrder, Scalar};
use crate::error::{Result, VoxelError};
use crate::formats::{Compression, Format, ImageHeader};
use crate::io::remote::{self, StoreOptions};

/// NIfTI-1 header length and the single-file data offset (header + 4 extension-flag bytes).
pub const HEADER_LEN: usize = 348;
pub const DATA_OFFSET: usize = 352;

// Offsets in the NIfTI-1 header.
const DIM: usize = 40;
const DATATYPE: usize = 70;
const BITPIX: usize = 72;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
const SCL_SLOPE: usize = 112;
const SCL_INTER: usize = 116;
const SFORM_CODE: usize = 254;
const SROW: usize = 280;
const MAGIC: usize = 344;

/// Numeric fields of a NIfTI-1 header as (offset, element size, count): what a byte-order change swaps.
const NUMERIC_FIELDS: [(usize, usize, usize); 23] = [
    (0, 4, 1),    // sizeof_hdr
    (32, 4, 1),   // extents
    (36, 2, 1),   // session_error
    (40, 2, 8),   // dim
    (56, 4, 3),   // intent_p1..3
    (68, 2, 1),   // intent_code
    (70, 2, 1),   // datatype
    (72, 2, 1),   // bitpix
    (74, 2, 1),   // slice_start
    (76, 4, 8),   // pixdim
    (108, 4, 1),  // vox_offset
    (112, 4, 1),  // scl_slope
    (116, 4, 1),  // scl_inter
    (120, 2, 1),  // slice_end
    (124, 4, 1),  // cal_max
    (128, 4, 1),  // cal_min
    (132, 4, 1),  // slice_duration
    (136, 4, 1),  // toffset
    (140, 4, 2),  // glmax, glmin
    (252, 2, 2),  // qform_code, sform_code
    (256, 4, 3),  // quatern_b..d
    (268, 4, 3),  // qoffset_x..z
    (280, 4, 12), // srow_x..z
];

/// The grid an output image is written on: the template's shape and its header block (little-endian NIfTI-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    /// Where the template came from (for messages).
    pub source: String,
    /// The template's full shape.
    pub shape: Vec<usize>,
    /// 348 bytes: the template's fields as a little-endian NIfTI-1 header.
    pub block: Vec<u8>,
}

impl Grid {
    /// Read the template at `location` (a path or URL of any readable image).
    pub fn from_location(location: &str, store: &StoreOptions) -> Result<Grid> {
        let place = crate::location::Location::parse(location)?;
        let header = crate::location::open_image(&place, None, store)?.header;
        let raw = if !is_nifti1(header.format) {
            None
        } else if place.is_remote() {
            let header_url = header.header_file.display();
            Some(remote_prefix(&header_url, store, header.compression)?)
        } else {
            Some(local_prefix(&header)?)
        };
        let block = match raw {
            Some(bytes) => nifti1_block(&bytes, location)?,
            None => generic_block(&header),
        };
        Ok(Grid {
            source: location.to_string(),
            shape: header.layout.shape.clone(),
            block,
        })
    }

    /// The spatial part of the grid: the template's first three axes (fewer for a 1-D or 2-D template).
    pub fn spatial(&self) -> &[usize] {
        &self.shape[..self.shape.len().min(3)]
    }

    /// The 352 bytes (header + empty extension flag) of an image of `shape` and storage `scalar` with these
    /// scaling factors, on this grid.
    pub fn header(
        &self,
        shape: &[usize],
        scalar: Scalar,
        slope: f32,
        inter: f32,
    ) -> Result<Vec<u8>> {
        if shape.is_empty() || shape.len() > 7 {
            return Err(VoxelError::Invalid(format!(
                "cannot write a NIfTI-1 image with {} axes",
                shape.len()
            )));
        }
        let code = datatype_code(scalar).ok_or_else(|| {
            VoxelError::DType(format!("{} has no NIfTI-1 data type", scalar.name()))
        })?;
        let mut h = self.block.clone();
        h.resize(DATA_OFFSET, 0);
        put(&mut h, DIM, &(shape.len() as i16).to_le_bytes());
        for k in 0..7 {
            let d = shape.get(k).copied().unwrap_or(1);
            let d = i16::try_from(d).map_err(|_| {
                VoxelError::Invalid(format!(
                    "dimension {d} of {shape:?} does not fit NIfTI-1's int16 dims"
                ))
            })?;
            put(&mut h, DIM + 2 + 2 * k, &d.to_le_bytes());
        }
        // nibabel's set_data_shape: zooms past the new number of axes become 1.
        for k in shape.len() + 1..8 {
            put(&mut h, PIXDIM + 4 * k, &1f32.to_le_bytes());
        }
        put(&mut h, DATATYPE, &code.to_le_bytes());
        put(&mut h, BITPIX, &((scalar.size() * 8) as i16).to_le_bytes());
        put(&mut h, VOX_OFFSET, &(DATA_OFFSET as f32).to_le_bytes());
        put(&mut h, SCL_SLOPE, &slope.to_le_bytes());
        put(&mut h, SCL_INTER, &inter.to_le_bytes());
        put(&mut h, MAGIC, b"n+1\0");
        Ok(h)
    }
}

fn is_nifti1(format: Format) -> bool {
    matches!(format, Format::Nifti1Image | Format::Nifti1Pair)
}

fn put(h: &mut [u8], off: usize, bytes: &[u8]) {
    h[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The NIfTI-1 datatype code of a scalar (None: not writable as NIfTI-1 here).
pub fn datatype_code(s: Scalar) -> Option<i16> {
    // Complex and RGB elements are not one number: the writer has no value column for them.
    if s.is_complex() || matches!(s, Scalar::Rgb24 | Scalar::Rgba32) {
        return None;
    }
    s.nifti_code()
}

/// The first 348 header bytes of a local NIfTI-1 file (single file or pair header, plain or gzip).
fn local_prefix(header: &ImageHeader) -> Result<Vec<u8>> {
    let path = header
        .header_file
        .as_path()
        .ok_or_else(|| VoxelError::Invalid(format!("{}: not a local file", header.header_file)))?;
    let bytes = match header.compression {
        Compression::Gzip => crate::io::gzip::read_prefix(path, HEADER_LEN)?,
        Compression::None => {
            let mut f = std::fs::File::open(path).map_err(|e| VoxelError::io(path, e))?;
            let mut b = vec![0u8; HEADER_LEN];
            f.read_exact(&mut b).map_err(|e| VoxelError::io(path, e))?;
            b
        }
    };
    Ok(bytes)
}

/// The first 348 header bytes of a NIfTI-1 header object (one more small GET; gzip objects decompressed here).
fn remote_prefix(
    header_url: &str,
    store: &StoreOptions,
    compression: Compression,
) -> Result<Vec<u8>> {
    let want = match compression {
        Compression::Gzip => 64 * 1024,
        Compression::None => HEADER_LEN as u64,
    };
    let (_, bytes) = remote::RemoteObject::open(header_url, store, want)?;
    match compression {
        Compression::None => Ok(bytes.to_vec()),
        Compression::Gzip => {
            let mut out = vec![0u8; HEADER_LEN];
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_exact(&mut out)
                .map_err(|e| {
                    VoxelError::header(header_url, format!("cannot decompress the header: {e}"))
                })?;
            Ok(out)
        }
    }
}

/// A NIfTI-1 header in either byte order as a little-endian block.
fn nifti1_block(bytes: &[u8], location: &str) -> Result<Vec<u8>> {
    let mut block = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| VoxelError::header(location, "NIfTI-1 header shorter than 348 bytes"))?
        .to_vec();
    let dim0 = i16::from_le_bytes([block[DIM], block[DIM + 1]]);
    let order = if (1..=7).contains(&dim0) {
        ByteOrder::Little
    } else {
        ByteOrder::Big
    };
    if order == ByteOrder::Big {
        for (off, size, count) in NUMERIC_FIELDS {
            for n in 0..count {
                let at = off + n * size;
                block[at..at + size].reverse();
            }
        }
    }
    Ok(block)
}

/// A header block for a template that is not NIfTI-1: its affine as the sform (code 2, aligned), its zooms.
fn generic_block(h: &ImageHeader) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    put(&mut b, 0, &348i32.to_le_bytes());
    put(&mut b, 38, b"r");
    put(&mut b, PIXDIM, &1f32.to_le_bytes());
    for (k, z) in h.zooms.iter().take(7).enumerate() {
        put(&mut b, PIXDIM + 4 * (k + 1), &(*z as f32).to_le_bytes());
    }
    put(&mut b, SFORM_CODE, &2i16.to_le_bytes());
    for (r, row) in h.affine.iter().take(3).enumerate() {
        for (c, v) in row.iter().enumerate() {
            put(&mut b, SROW + 16 * r + 4 * c, &(*v as f32).to_le_bytes());
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use std::path::Path;

    fn template(dir: &Path, big: bool) -> String {
        let order = if big {
            ByteOrder::Big
        } else {
            ByteOrder::Little
        };
        let path = dir.join(if big { "big.nii" } else { "little.nii" });
        let dtype = DType::new(Scalar::I16, order);
        let data = vec![0u8; 4 * 5 * 6 * 3 * 2];
        crate::synth::write_nifti1(&path, &[4, 5, 6, 3], dtype, 1.0, 0.0, &data, false).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn keeps_the_template_fields_in_either_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let little =
            Grid::from_location(&template(dir.path(), false), &StoreOptions::default()).unwrap();
        let big =
            Grid::from_location(&template(dir.path(), true), &StoreOptions::default()).unwrap();
        assert_eq!(little.block, big.block);
        assert_eq!(little.shape, vec![4, 5, 6, 3]);
        assert_eq!(little.spatial(), &[4, 5, 6]);
        let h = little.header(&[4, 5, 6], Scalar::F32, 1.0, 0.0).unwrap();
        assert_eq!(h.len(), DATA_OFFSET);
        assert_eq!(i16::from_le_bytes([h[40], h[41]]), 3);
        assert_eq!(i16::from_le_bytes([h[70], h[71]]), 16);
        assert_eq!(i16::from_le_bytes([h[254], h[255]]), 1);
        // pixdim[4] (the TR) is reset for a 3-D output, as nibabel's set_data_shape does.
        assert_eq!(f32::from_le_bytes(h[92..96].try_into().unwrap()), 1.0);
        assert_eq!(&h[344..348], b"n+1\0");
    }

    #[test]
    fn a_missing_template_is_an_error_naming_it() {
        let err = Grid::from_location("/nonexistent/like.nii", &StoreOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/like.nii"), "{err}");
    }

    #[test]
    fn large_dims_are_refused() {
        let g = Grid {
            source: "x".into(),
            shape: vec![2, 2, 2],
            block: vec![0; HEADER_LEN],
        };
        assert!(g.header(&[40000, 2, 2], Scalar::U8, 1.0, 0.0).is_err());
        assert!(g.header(&[2, 2, 2], Scalar::C64, 1.0, 0.0).is_err());
    }
}
