//! Which parser a header file needs, and the file names around it.
//!
//! Content decides the family (magic first): `\x93NUMPY` → npy; `sizeof_hdr` 348 (either byte order) with the
//! NIfTI-1 magic `n+1`/`ni1` at byte 344 → NIfTI-1, without it → Analyze (loaded as SPM2, as `nib.load` does);
//! `sizeof_hdr` 540 → NIfTI-2; a big-endian version 1 (or an `.mgh`/`.mgz` name) → MGH; a NIfTI-1 magic with a
//! damaged `sizeof_hdr` → NIfTI-1. The name decides the rest (name second): `.nii` is a single file and
//! `.hdr`/`.img` a pair, as in nibabel (which picks the class by extension); other names use the magic (`n+1`
//! single, `ni1` pair). Pair names follow nibabel's `types_filenames`: `x.hdr` ↔ `x.img`, `X.HDR` ↔ `X.IMG`,
//! a trailing `.gz` (any case) carried over.

use std::path::{Path, PathBuf};

use super::source::Source;
use super::{Compression, Format};
use crate::error::{Result, VoxelError};

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
const NIFTI1_SINGLE: &[u8] = b"n+1\0";
const NIFTI1_PAIR: &[u8] = b"ni1\0";
const NIFTI2_SINGLE: &[u8] = b"n+2\0";
const NIFTI2_PAIR: &[u8] = b"ni2\0";
/// Suffixes nibabel strips before looking at the extension (`_compressed_suffixes`).
const COMPRESSED_SUFFIXES: [&str; 3] = [".gz", ".bz2", ".zst"];

/// What a file name says, ignoring a trailing compression suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Nii,
    Hdr,
    Img,
    Mgh,
    Mgz,
    Npy,
    Other,
}

/// Case-insensitive suffix test on the file name.
pub fn has_suffix(path: &Path, suffix: &str) -> bool {
    let name = path.to_string_lossy();
    name.len() >= suffix.len()
        && name
            .get(name.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// Split `x.hdr.gz` into (`x`, `.hdr`, `.gz`) like nibabel's `splitext_addext` (case-insensitive suffixes,
/// original case kept).
fn split_name(path: &Path) -> (String, String, String) {
    let mut name = path.to_string_lossy().into_owned();
    let mut trailing = String::new();
    for sfx in COMPRESSED_SUFFIXES {
        if has_suffix(Path::new(&name), sfx) {
            trailing = name.split_off(name.len() - sfx.len());
            break;
        }
    }
    // Only a dot within the final component starts an extension.
    let file_start = name.rfind(std::path::is_separator).map_or(0, |i| i + 1);
    match name.rfind('.') {
        Some(dot) if dot > file_start => {
            let ext = name.split_off(dot);
            (name, ext, trailing)
        }
        _ => (name, String::new(), trailing),
    }
}

pub fn name_kind(path: &Path) -> NameKind {
    let (_, ext, _) = split_name(path);
    match ext.to_ascii_lowercase().as_str() {
        ".nii" => NameKind::Nii,
        ".hdr" => NameKind::Hdr,
        ".img" => NameKind::Img,
        ".mgh" => NameKind::Mgh,
        ".mgz" => NameKind::Mgz,
        ".npy" => NameKind::Npy,
        _ => NameKind::Other,
    }
}

/// The sibling with extension `ext` (`.hdr`/`.img`), in the case of the found extension when it is all upper
/// or all lower case, with the trailing compression suffix kept. None unless the name is `.hdr`/`.img`.
fn sibling(path: &Path, ext: &str) -> Option<PathBuf> {
    let (root, found, trailing) = split_name(path);
    if !matches!(name_kind(path), NameKind::Hdr | NameKind::Img) {
        return None;
    }
    let ext = if found == found.to_ascii_uppercase() {
        ext.to_ascii_uppercase()
    } else {
        ext.to_ascii_lowercase()
    };
    Some(PathBuf::from(format!("{root}{ext}{trailing}")))
}

/// The file holding the header: the `.hdr` beside a given `.img`, else the path itself.
pub fn header_path_for(path: &Path) -> PathBuf {
    match name_kind(path) {
        NameKind::Img => sibling(path, ".hdr").unwrap_or_else(|| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// The data file of a pair: the `.img` beside a `.hdr` (or the `.img` itself).
pub fn pair_data_path(path: &Path) -> Option<PathBuf> {
    sibling(path, ".img")
}

/// Compression of a data file as nibabel's opener decides it: by a `.gz` (or `.mgz`) name, any case.
pub fn compression_by_name(path: &Path) -> Compression {
    if has_suffix(path, ".gz") || has_suffix(path, ".mgz") {
        Compression::Gzip
    } else {
        Compression::None
    }
}

fn i32_both(b: &[u8]) -> Option<(i32, i32)> {
    let a: [u8; 4] = b.get(0..4)?.try_into().ok()?;
    Some((i32::from_le_bytes(a), i32::from_be_bytes(a)))
}

fn nifti1_magic(block: &[u8]) -> Option<&[u8]> {
    block
        .get(344..348)
        .filter(|m| *m == NIFTI1_SINGLE || *m == NIFTI1_PAIR)
}

/// Single file or pair: the name decides (`.nii` single, `.hdr`/`.img` pair); otherwise the magic does.
fn single_or_pair(
    path: &Path,
    magic: Option<&[u8]>,
    single_magic: &[u8],
    single: Format,
    pair: Format,
) -> Format {
    match name_kind(path) {
        NameKind::Hdr | NameKind::Img => pair,
        NameKind::Nii => single,
        _ if magic == Some(single_magic) || magic.is_none() => single,
        _ => pair,
    }
}

/// The image class for a header file's content (decompressed) and name.
pub(crate) fn detect(src: &mut dyn Source, path: &Path) -> Result<Format> {
    let head = src.read(0, NPY_MAGIC.len())?;
    if head.starts_with(NPY_MAGIC) {
        return Ok(Format::Npy);
    }
    let Some((le, be)) = i32_both(&head) else {
        return Err(VoxelError::header(
            path,
            format!("file too short to be an image ({} bytes)", head.len()),
        ));
    };
    let nifti1 = |block: &[u8]| {
        single_or_pair(
            path,
            nifti1_magic(block),
            NIFTI1_SINGLE,
            Format::Nifti1Image,
            Format::Nifti1Pair,
        )
    };
    if le == 348 || be == 348 {
        let block = src.read(0, 348)?;
        return Ok(if nifti1_magic(&block).is_some() {
            nifti1(&block)
        } else {
            Format::Spm2Analyze
        });
    }
    if le == 540 || be == 540 {
        let block = src.read(0, 8)?;
        let magic = block
            .get(4..8)
            .filter(|m| *m == NIFTI2_SINGLE || *m == NIFTI2_PAIR);
        return Ok(single_or_pair(
            path,
            magic,
            NIFTI2_SINGLE,
            Format::Nifti2Image,
            Format::Nifti2Pair,
        ));
    }
    if be == 1 || matches!(name_kind(path), NameKind::Mgh | NameKind::Mgz) {
        return Ok(Format::Mgh);
    }
    let block = src.read(0, 348)?;
    if nifti1_magic(&block).is_some() {
        return Ok(nifti1(&block));
    }
    Err(VoxelError::header(
        path,
        "cannot work out the file type: not NIfTI-1/2, Analyze, MGH or npy (no magic, sizeof_hdr neither 348 nor 540)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::source::SliceSource;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn names_split_like_nibabel() {
        assert_eq!(
            split_name(p("/a/b.hdr.gz")),
            ("/a/b".into(), ".hdr".into(), ".gz".into())
        );
        assert_eq!(
            split_name(p("/a/b.HDR.GZ")),
            ("/a/b".into(), ".HDR".into(), ".GZ".into())
        );
        assert_eq!(
            split_name(p("/a.d/b")),
            ("/a.d/b".into(), "".into(), "".into())
        );
        assert_eq!(
            split_name(p("b.nii")),
            ("b".into(), ".nii".into(), "".into())
        );
        assert_eq!(name_kind(p("x.NII.Gz")), NameKind::Nii);
        assert_eq!(name_kind(p("x.mgz")), NameKind::Mgz);
        assert_eq!(name_kind(p("x.npy")), NameKind::Npy);
        assert_eq!(name_kind(p("x.raw")), NameKind::Other);
        assert_eq!(name_kind(p(".hdr")), NameKind::Other);
    }

    #[test]
    fn pair_names_keep_case_and_suffix() {
        assert_eq!(
            pair_data_path(p("/d/x.hdr")),
            Some(PathBuf::from("/d/x.img"))
        );
        assert_eq!(
            pair_data_path(p("/d/X.HDR")),
            Some(PathBuf::from("/d/X.IMG"))
        );
        assert_eq!(
            pair_data_path(p("/d/x.Hdr")),
            Some(PathBuf::from("/d/x.img"))
        );
        assert_eq!(
            pair_data_path(p("/d/x.hdr.gz")),
            Some(PathBuf::from("/d/x.img.gz"))
        );
        assert_eq!(
            pair_data_path(p("/d/x.HDR.GZ")),
            Some(PathBuf::from("/d/x.IMG.GZ"))
        );
        assert_eq!(
            pair_data_path(p("/d/x.img")),
            Some(PathBuf::from("/d/x.img"))
        );
        assert_eq!(pair_data_path(p("/d/x.nii")), None);
        assert_eq!(
            header_path_for(p("/d/x.img.gz")),
            PathBuf::from("/d/x.hdr.gz")
        );
        assert_eq!(header_path_for(p("/d/x.IMG")), PathBuf::from("/d/x.HDR"));
        assert_eq!(header_path_for(p("/d/x.nii")), PathBuf::from("/d/x.nii"));
        assert_eq!(compression_by_name(p("x.img.GZ")), Compression::Gzip);
        assert_eq!(compression_by_name(p("x.mgz")), Compression::Gzip);
        assert_eq!(compression_by_name(p("x.img")), Compression::None);
    }

    fn detect_bytes(bytes: &[u8], name: &str) -> Result<Format> {
        let mut src = SliceSource::new(bytes, true, p(name));
        detect(&mut src, p(name))
    }

    fn block(sizeof: i32, big: bool, magic_at: usize, magic: &[u8], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        let s = if big {
            sizeof.to_be_bytes()
        } else {
            sizeof.to_le_bytes()
        };
        b[0..4].copy_from_slice(&s);
        b[magic_at..magic_at + magic.len()].copy_from_slice(magic);
        b
    }

    #[test]
    fn content_first_then_name() {
        let n1 = block(348, false, 344, b"n+1\0", 352);
        assert_eq!(detect_bytes(&n1, "a.nii").unwrap(), Format::Nifti1Image);
        assert_eq!(detect_bytes(&n1, "a.hdr").unwrap(), Format::Nifti1Pair);
        assert_eq!(detect_bytes(&n1, "a.mgh").unwrap(), Format::Nifti1Image);
        let n1p = block(348, true, 344, b"ni1\0", 348);
        assert_eq!(detect_bytes(&n1p, "a.dat").unwrap(), Format::Nifti1Pair);
        assert_eq!(detect_bytes(&n1p, "a.nii").unwrap(), Format::Nifti1Image);
        let ana = block(348, true, 344, b"\0\0\0\0", 348);
        assert_eq!(detect_bytes(&ana, "a.hdr").unwrap(), Format::Spm2Analyze);
        let n2 = block(540, false, 4, b"n+2\0", 540);
        assert_eq!(detect_bytes(&n2, "a.nii").unwrap(), Format::Nifti2Image);
        assert_eq!(detect_bytes(&n2, "a.img").unwrap(), Format::Nifti2Pair);
        assert_eq!(detect_bytes(&n2, "a.bin").unwrap(), Format::Nifti2Image);
        let n2p = block(540, true, 4, b"ni2\0", 540);
        assert_eq!(detect_bytes(&n2p, "a.bin").unwrap(), Format::Nifti2Pair);
        let mgh = block(1, true, 4, b"", 300);
        assert_eq!(detect_bytes(&mgh, "a.bin").unwrap(), Format::Mgh);
        assert_eq!(detect_bytes(&[0u8; 300], "a.mgz").unwrap(), Format::Mgh);
        assert_eq!(
            detect_bytes(b"\x93NUMPY\x01\x00", "a.nii").unwrap(),
            Format::Npy
        );
        // A NIfTI-1 magic rescues a damaged sizeof_hdr.
        let bad_sizeof = block(7, false, 344, b"n+1\0", 352);
        assert_eq!(
            detect_bytes(&bad_sizeof, "a.nii").unwrap(),
            Format::Nifti1Image
        );
    }

    #[test]
    fn unknown_and_short_content_are_errors() {
        let e = detect_bytes(&[7u8; 400], "a.nii").unwrap_err().to_string();
        assert!(e.contains("a.nii") && e.contains("cannot work out"), "{e}");
        let e = detect_bytes(&[1, 2], "a.nii").unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
        // From a prefix, detection asks for more bytes rather than guessing.
        let mut src = SliceSource::new(&[0x5c, 1, 0, 0], false, p("a.nii"));
        assert!(matches!(
            detect(&mut src, p("a.nii")),
            Err(VoxelError::Truncated { expected: 6, .. })
        ));
        let n1 = block(348, false, 344, b"n+1\0", 352);
        let mut src = SliceSource::new(&n1[..100], false, p("a.nii"));
        assert!(matches!(
            detect(&mut src, p("a.nii")),
            Err(VoxelError::Truncated { expected: 348, .. })
        ));
    }
}
