//! Headers of objects on an HTTP server (nginx, started by the test), with the requests counted in nginx's own
//! access log: NIfTI extensions come in one more ranged GET (never re-fetched from byte 0 per extension), a 4-D
//! MGH's footer is one 20-byte GET (not its data), a header asking for more than its format's cap is an error
//! naming the URL, and a small gzip bomb is decompressed no further than its header claims.
#![cfg(feature = "remote")]

mod common;

use std::io::Write;

use common::servers::Nginx;
use voxelscan::VoxelError;
use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::io::remote::{StoreOptions, open_image};
use voxelscan::synth::nifti1_header;

fn gz(members: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(m).expect("compress");
        out.extend(e.finish().expect("compress"));
    }
    out
}

fn i16_le() -> DType {
    DType::new(Scalar::I16, ByteOrder::Little)
}

/// A single-file NIfTI-1 (int16, `shape`) with `count` extensions of `payload` bytes each, its data all ones.
fn nifti_with_extensions(shape: &[usize], count: usize, payload: usize) -> (Vec<u8>, u64) {
    let mut file = nifti1_header(shape, i16_le(), 1.0, 0.0).expect("header");
    let esize = (8 + payload).div_ceil(16) * 16;
    let vox_offset = 352 + count * esize;
    file[108..112].copy_from_slice(&(vox_offset as f32).to_le_bytes());
    file[348] = u8::from(count > 0);
    for k in 0..count {
        file.extend_from_slice(&(esize as i32).to_le_bytes());
        file.extend_from_slice(&6i32.to_le_bytes());
        file.extend(std::iter::repeat_n(b'a' + k as u8, payload));
        file.resize(352 + (k + 1) * esize, 0);
    }
    let n: usize = shape.iter().product();
    file.extend(std::iter::repeat_n(1u8, 2 * n));
    (file, vox_offset as u64)
}

/// `bytes=A-B` → (A, B).
fn range_of(r: &common::servers::Request) -> (u64, u64) {
    let text = r.range.as_deref().expect("a ranged GET");
    let (a, b) = text
        .trim_start_matches("bytes=")
        .split_once('-')
        .expect("a range");
    (a.parse().expect("start"), b.parse().expect("end"))
}

#[test]
fn nifti_extensions_are_one_more_ranged_get() {
    let n = Nginx::shared();
    let (file, vox_offset) = nifti_with_extensions(&[8, 8, 4], 6, 5000);
    n.put("hdr/ext.nii", &file);
    let before = n.log_of("hdr/ext.nii").len();
    let image = open_image(&n.url_of("hdr/ext.nii"), &StoreOptions::default()).expect("open");
    assert_eq!(image.header.layout.offset, vox_offset);
    let log = n.log_of("hdr/ext.nii")[before..].to_vec();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(range_of(&log[0]), (0, 351));
    assert_eq!(
        range_of(&log[1]),
        (352, vox_offset - 1),
        "exactly the missing extensions"
    );
    let fetched: u64 = log.iter().map(|r| r.bytes).sum();
    assert_eq!(fetched, vox_offset);
}

#[test]
fn an_mgh_footer_is_one_small_get_not_the_data() {
    let n = Nginx::shared();
    let dims = [32i32, 32, 16, 8];
    let mut file = Vec::new();
    file.extend_from_slice(&1i32.to_be_bytes());
    for d in dims {
        file.extend_from_slice(&d.to_be_bytes());
    }
    file.extend_from_slice(&3i32.to_be_bytes()); // float32
    file.extend_from_slice(&0i32.to_be_bytes());
    file.extend_from_slice(&1i16.to_be_bytes()); // goodRASFlag
    for v in [
        1f32, 1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0,
    ] {
        file.extend_from_slice(&v.to_be_bytes());
    }
    file.resize(284, 0);
    let data_len = dims.iter().product::<i32>() as usize * 4;
    file.resize(284 + data_len, 0);
    file.extend_from_slice(&2500f32.to_be_bytes());
    file.extend_from_slice(&[0u8; 16]);
    n.put("hdr/f.mgh", &file);
    let before = n.log_of("hdr/f.mgh").len();
    let image = open_image(&n.url_of("hdr/f.mgh"), &StoreOptions::default()).expect("open");
    assert_eq!(image.header.zooms[3], 2500.0);
    let log = n.log_of("hdr/f.mgh")[before..].to_vec();
    assert_eq!(log.len(), 2, "{log:?}");
    let footer = (284 + data_len) as u64;
    assert_eq!(range_of(&log[1]), (footer, footer + 19));
    let fetched: u64 = log.iter().map(|r| r.bytes).sum();
    assert_eq!(fetched, 284 + 20);
}

#[test]
fn a_header_asking_past_its_cap_is_an_error_naming_the_url() {
    let n = Nginx::shared();
    // An extension claiming 100 MiB (over the 64 MiB NIfTI cap) in a small gzip object.
    let mut file = nifti1_header(&[4, 4, 4], i16_le(), 1.0, 0.0).expect("header");
    file[108..112].copy_from_slice(&1e9f32.to_le_bytes());
    file[348] = 1;
    file.extend_from_slice(&(100i32 << 20).to_le_bytes());
    file.extend_from_slice(&6i32.to_le_bytes());
    file.resize(4 << 20, 0);
    let object = gz(&[&file]);
    n.put("hdr/cap.nii.gz", &object);
    let before = n.log_of("hdr/cap.nii.gz").len();
    let url = n.url_of("hdr/cap.nii.gz");
    let err = open_image(&url, &StoreOptions::default()).expect_err("over the cap");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("limit"), "{msg}");
    let log = n.log_of("hdr/cap.nii.gz")[before..].to_vec();
    let fetched: u64 = log.iter().map(|r| r.bytes).sum();
    assert!(fetched <= object.len() as u64, "{log:?}");
}

#[test]
fn a_gzip_bomb_is_decompressed_no_further_than_its_header_claims() {
    let n = Nginx::shared();
    // 3 MiB of zeros compress to about 3 KiB: the whole object comes in the first 4 KiB GET.
    let zeros = vec![0u8; 3 << 20];
    let small = nifti1_header(&[2, 3, 4], i16_le(), 1.0, 0.0).expect("header");
    let object = gz(&[&small, &zeros]);
    assert!(object.len() < 4096, "{}", object.len());
    n.put("hdr/bomb.nii.gz", &object);
    let image = open_image(&n.url_of("hdr/bomb.nii.gz"), &StoreOptions::default()).expect("open");
    assert_eq!(image.header.layout.shape, vec![2, 3, 4]);
    // A header claiming 2 GiB over the same bytes: truncated, said with the URL and both lengths.
    let huge = nifti1_header(&[1024, 1024, 1024], i16_le(), 1.0, 0.0).expect("header");
    let object = gz(&[&huge, &zeros]);
    n.put("hdr/bomb2.nii.gz", &object);
    let url = n.url_of("hdr/bomb2.nii.gz");
    match open_image(&url, &StoreOptions::default()) {
        Err(VoxelError::Truncated {
            path,
            expected,
            actual,
        }) => {
            assert_eq!(path, url);
            assert_eq!((expected, actual), (352 + (2 << 30), 352 + (3 << 20)));
        }
        other => panic!("{other:?}"),
    }
}
