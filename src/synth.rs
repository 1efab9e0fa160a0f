//! Synthetic images for benchmarks, examples and tests: a minimal NIfTI-1 writer and reproducible pseudo-random data.
//! (Reading never goes through here.)

use std::io::Write;
use std::path::Path;

use crate::dtype::{ByteOrder, DType, Scalar};
use crate::error::{Result, VoxelError};

/// NIfTI-1 datatype code of a scalar.
/// 0 for float16, which has no NIfTI code (callers use npy or raw for it).
pub fn nifti_code(s: Scalar) -> i16 {
    s.nifti_code().unwrap_or(0)
}

/// The 352 bytes (header + empty extension flag) of a single-file NIfTI-1 image with unit zooms and an identity
/// sform, in `dtype`'s byte order.
pub fn nifti1_header(shape: &[usize], dtype: DType, slope: f32, inter: f32) -> Result<Vec<u8>> {
    if shape.is_empty() || shape.len() > 7 || nifti_code(dtype.scalar) == 0 {
        return Err(VoxelError::Invalid(format!(
            "cannot write a NIfTI-1 image of shape {shape:?} and dtype {dtype}"
        )));
    }
    let big = dtype.order == ByteOrder::Big;
    let mut h = vec![0u8; 352];
    let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
    let i16b = |v: i16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i32b = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let f32b = |v: f32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    put(0, &i32b(348));
    put(40, &i16b(shape.len() as i16));
    for (k, &d) in shape.iter().enumerate() {
        let d = i16::try_from(d)
            .map_err(|_| VoxelError::Invalid(format!("dimension {d} too large for NIfTI-1")))?;
        put(42 + 2 * k, &i16b(d));
    }
    for k in shape.len()..7 {
        put(42 + 2 * k, &i16b(1));
    }
    put(70, &i16b(nifti_code(dtype.scalar)));
    put(72, &i16b((dtype.size() * 8) as i16));
    for k in 0..8 {
        put(76 + 4 * k, &f32b(1.0));
    }
    put(108, &f32b(352.0));
    put(112, &f32b(slope));
    put(116, &f32b(inter));
    put(123, &[10]); // mm + sec
    put(254, &i16b(1)); // sform_code: scanner
    put(280, &f32b(1.0));
    put(296 + 4, &f32b(1.0));
    put(312 + 8, &f32b(1.0));
    put(344, b"n+1\0");
    Ok(h)
}

/// Write a plain (uncompressed, unscaled) NIfTI-1 image of native-order `int16` voxels: the tests' and benches'
/// most common fixture.
pub fn write_i16_nifti1(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    write_nifti1(
        path,
        shape,
        DType::native(Scalar::I16),
        0.0,
        0.0,
        data,
        false,
    )
}

/// Write a single-file NIfTI-1 image (`.nii`, or gzip-compressed when `gzip`) whose data section is `data`
/// (already in `dtype`'s byte order, F order).
pub fn write_nifti1(
    path: &Path,
    shape: &[usize],
    dtype: DType,
    slope: f32,
    inter: f32,
    data: &[u8],
    gzip: bool,
) -> Result<()> {
    let expected = shape.iter().product::<usize>() * dtype.size();
    if data.len() != expected {
        return Err(VoxelError::Invalid(format!(
            "{} data bytes for shape {shape:?} of {dtype} (expected {expected})",
            data.len()
        )));
    }
    let header = nifti1_header(shape, dtype, slope, inter)?;
    let file = std::fs::File::create(path).map_err(|e| VoxelError::io(path, e))?;
    let io = |e| VoxelError::io(path, e);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::new(6),
        );
        enc.write_all(&header).map_err(io)?;
        enc.write_all(data).map_err(io)?;
        enc.finish().map_err(io)?.flush().map_err(io)?;
    } else {
        let mut w = std::io::BufWriter::new(file);
        w.write_all(&header).map_err(io)?;
        w.write_all(data).map_err(io)?;
        w.flush().map_err(io)?;
    }
    Ok(())
}

/// `target/bench-data` of this repository, created if missing: where the benchmarks keep their generated images
/// (shared between benches, so each is generated once).
pub fn bench_data_dir() -> Result<std::path::PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-data");
    std::fs::create_dir_all(&d).map_err(|e| VoxelError::io(&d, e))?;
    Ok(d)
}

/// The benchmarks' image at `path`, written unless it is already there: random int16 values in `0..4096` (seed 42)
/// of `shape`, with `slope`/`inter`, gzip-compressed when `gzip`. Every bench that uses the same shape and path
/// shares the file.
pub fn bench_image(path: &Path, shape: &[usize], slope: f32, inter: f32, gzip: bool) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    eprintln!("generating {}", path.display());
    let n: usize = shape.iter().product();
    let data = random_i16_le(n, 42, 0, 4096);
    let dtype = DType::new(crate::dtype::Scalar::I16, crate::dtype::ByteOrder::Little);
    write_nifti1(path, shape, dtype, slope, inter, &data, gzip)
}

/// Reproducible pseudo-random int16 samples in `[lo, hi)` (xorshift64*), little-endian bytes.
pub fn random_i16_le(n: usize, seed: u64, lo: i16, hi: i16) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let span = (hi as i32 - lo as i32).max(1) as u64;
    let mut out = Vec::with_capacity(n * 2);
    for _ in 0..n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        let v = (lo as i64 + (r % span) as i64) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
