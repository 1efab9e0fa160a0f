//! Headerless raw files described by a spec string, nibabel's tuple spec
//! `ArrayProxy(path, (shape, dtype, offset, slope, inter), order=...)` in text form:
//!
//! ```text
//! shape=2,3,4;dtype=<i2;offset=16;slope=2.0;inter=1.0;order=C
//! ```
//!
//! `shape` and `dtype` are required; `offset` defaults to 0, `slope` to 1, `inter` to 0, `order` to F (nibabel's
//! `ArrayProxy` default, which the differential test generator relies on when it omits `order`). A factor
//! is a number (float64, like a Python float) or `f8:`/`f4:`/`f2:` + number for a float64/float32/float16
//! factor; `nan`, `inf`, `-inf` are accepted. Factors are applied literally: slope 0 is not "no scaling".
//! Unknown or repeated keys, missing `shape`/`dtype`, negative numbers, out-of-range factors and sizes that
//! overflow are errors. The data file is gzip when its name ends in `.gz` (any case), as nibabel's opener decides.

use std::collections::HashSet;
use std::path::Path;

use super::affine::IDENTITY;
use super::{ArrayLayout, Compression, Factor, Format, ImageHeader, Order, checked_shape};
use crate::dtype::DType;
use crate::error::{Result, VoxelError};
use crate::location::Location;

const KEYS: [&str; 6] = ["shape", "dtype", "offset", "slope", "inter", "order"];
/// numpy's limit on the number of dimensions.
const MAX_NDIM: usize = 64;

/// Parse a raw spec for the file at `path` and check the file: it must exist and, uncompressed, hold
/// `offset + data bytes` (`VoxelError::Truncated` otherwise).
pub fn parse_raw_spec(text: &str, path: &Path) -> Result<ImageHeader> {
    let header = parse_spec(text, path)?;
    super::check_data_file(&header)?;
    Ok(header)
}

/// Parse a raw spec without touching the file.
pub fn parse_spec(text: &str, path: &Path) -> Result<ImageHeader> {
    let bad =
        |msg: String| VoxelError::Invalid(format!("{}: raw spec '{text}': {msg}", path.display()));
    let mut seen = HashSet::new();
    let (mut shape, mut dtype, mut offset) = (None, None, 0u64);
    let (mut slope, mut inter, mut order) = (Factor::F64(1.0), Factor::F64(0.0), Order::F);
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| bad(format!("'{item}' is not key=value")))?;
        if !KEYS.contains(&key) {
            return Err(bad(format!(
                "unknown key '{key}' (known: {})",
                KEYS.join(", ")
            )));
        }
        if !seen.insert(key) {
            return Err(bad(format!("key '{key}' given twice")));
        }
        match key {
            "shape" => shape = Some(parse_shape(value).map_err(bad)?),
            "dtype" => dtype = Some(DType::parse(value).map_err(|e| bad(e.to_string()))?),
            "offset" => offset = parse_count(value).map_err(|e| bad(format!("offset: {e}")))?,
            "slope" => slope = parse_factor(value).map_err(|e| bad(format!("slope: {e}")))?,
            "inter" => inter = parse_factor(value).map_err(|e| bad(format!("inter: {e}")))?,
            _ => order = parse_order(value).map_err(bad)?,
        }
    }
    let dims = shape.ok_or_else(|| bad("missing shape=...".into()))?;
    let dtype = dtype.ok_or_else(|| bad("missing dtype=...".into()))?;
    let shape = checked_shape(path, &dims, dtype, offset)?;
    let ndim = shape.len();
    Ok(ImageHeader {
        format: Format::Raw,
        layout: ArrayLayout {
            shape,
            dtype,
            offset,
            order,
            slope,
            inter,
        },
        affine: IDENTITY,
        zooms: vec![1.0; ndim],
        world: super::WorldMeta::default(),
        header_file: Location::Path(path.to_path_buf()),
        data_file: Location::Path(path.to_path_buf()),
        compression: if super::detect::has_suffix(path, ".gz") {
            Compression::Gzip
        } else {
            Compression::None
        },
        header_bytes: 0,
    })
}

/// A non-negative decimal integer.
fn parse_count(v: &str) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{v}' is not a non-negative integer"));
    }
    v.parse::<u64>().map_err(|_| format!("'{v}' is too large"))
}

/// `2,3,4`, `(2, 3, 4)`, `5,` or empty (a 0-d array).
fn parse_shape(v: &str) -> Result<Vec<i64>, String> {
    let inner = v
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(v)
        .trim();
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    let inner = inner.strip_suffix(',').unwrap_or(inner);
    let dims = inner
        .split(',')
        .map(|d| {
            let d = d.trim();
            parse_count(d)
                .and_then(|n| i64::try_from(n).map_err(|_| format!("'{d}' is too large")))
                .map_err(|e| format!("shape entry {e}"))
        })
        .collect::<Result<Vec<i64>, String>>()?;
    if dims.len() > MAX_NDIM {
        return Err(format!(
            "{} dimensions (numpy allows at most {MAX_NDIM})",
            dims.len()
        ));
    }
    Ok(dims)
}

fn parse_order(v: &str) -> Result<Order, String> {
    match v {
        "C" | "c" => Ok(Order::C),
        "F" | "f" => Ok(Order::F),
        _ => Err(format!("order '{v}' is not C or F")),
    }
}

/// `2.5` (float64), `f8:2.5`, `f4:2.5`, `f2:2.5`.
fn parse_factor(v: &str) -> Result<Factor, String> {
    let (kind, num) = match v.split_once(':') {
        Some((k, n)) => (k.trim(), n.trim()),
        None => ("f8", v),
    };
    let x: f64 = num
        .parse()
        .map_err(|_| format!("'{num}' is not a number"))?;
    match kind {
        "f8" | "float64" => Ok(Factor::F64(x)),
        "f4" | "float32" => {
            let y = x as f32;
            if y.is_infinite() && x.is_finite() {
                return Err(format!("{num} is out of float32 range"));
            }
            Ok(Factor::F32(y))
        }
        "f2" | "float16" => round_to_f16(x)
            .map(Factor::F16)
            .ok_or_else(|| format!("{num} is out of float16 range")),
        _ => Err(format!("factor type '{kind}' is not f2, f4 or f8")),
    }
}

/// Round a float64 to the nearest float16 value (ties to even, as numpy's `np.float16(x)`), returned as the
/// f32 holding it exactly; None when a finite value overflows float16.
pub(crate) fn round_to_f16(x: f64) -> Option<f32> {
    if !x.is_finite() || x == 0.0 {
        return Some(x as f32);
    }
    let biased = ((x.to_bits() >> 52) & 0x7ff) as i32;
    // float16: 10 fraction bits, smallest normal exponent -14 (subnormal spacing 2^-24).
    let exp = (biased - 1023).max(-14);
    let quantum = 2f64.powi(exp - 10);
    let r = (x / quantum).round_ties_even() * quantum;
    (r.abs() <= 65504.0).then_some(r as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{ByteOrder, Scalar};

    fn spec(text: &str) -> Result<ImageHeader> {
        parse_spec(text, Path::new("/d/a.raw"))
    }

    #[test]
    fn full_spec_and_defaults() {
        let h = spec("shape=2,3,4;dtype=<i2;offset=16;slope=2.0;inter=1.0;order=C").unwrap();
        assert_eq!(h.format, Format::Raw);
        assert_eq!(h.format.name(), "raw");
        assert_eq!(h.layout.shape, vec![2, 3, 4]);
        assert_eq!(h.layout.dtype, DType::new(Scalar::I16, ByteOrder::Little));
        assert_eq!((h.layout.offset, h.layout.order), (16, Order::C));
        assert_eq!(
            (h.layout.slope, h.layout.inter),
            (Factor::F64(2.0), Factor::F64(1.0))
        );
        assert_eq!(
            (h.header_file.as_path(), h.data_file.as_path()),
            (Some(Path::new("/d/a.raw")), Some(Path::new("/d/a.raw")))
        );
        assert_eq!(h.compression, Compression::None);
        assert_eq!((h.zooms.clone(), h.affine), (vec![1.0; 3], IDENTITY));
        let h = spec(" dtype = >f4 ; shape = (5,) ; ").unwrap();
        assert_eq!(
            (h.layout.shape.clone(), h.layout.offset, h.layout.order),
            (vec![5], 0, Order::F),
            "F by default, like nibabel"
        );
        assert_eq!(
            (h.layout.slope, h.layout.inter),
            (Factor::F64(1.0), Factor::F64(0.0))
        );
        assert_eq!(h.layout.dtype.numpy_str(), ">f4");
        assert_eq!(
            spec("shape=;dtype=u1").unwrap().layout.shape,
            Vec::<usize>::new()
        );
        assert_eq!(
            spec("shape=0,3;dtype=u1;order=c").unwrap().layout.order,
            Order::C
        );
        let gz = parse_spec("shape=2;dtype=u1", Path::new("a.RAW.GZ")).unwrap();
        assert_eq!(gz.compression, Compression::Gzip);
    }

    #[test]
    fn factors_carry_their_float_type() {
        let f = |t: &str| spec(&format!("shape=2;dtype=<i2;slope={t}")).map(|h| h.layout.slope);
        assert_eq!(f("f4:2.5").unwrap(), Factor::F32(2.5));
        assert_eq!(f("f4:0.1").unwrap(), Factor::F32(0.1));
        assert_eq!(f("f8:0.1").unwrap(), Factor::F64(0.1));
        assert_eq!(
            f("0").unwrap(),
            Factor::F64(0.0),
            "slope 0 is applied literally"
        );
        assert_eq!(f("1e300").unwrap(), Factor::F64(1e300));
        assert!(f("nan").unwrap().value().is_nan());
        assert_eq!(f("-inf").unwrap(), Factor::F64(f64::NEG_INFINITY));
        assert_eq!(f("f4:inf").unwrap(), Factor::F32(f32::INFINITY));
        assert_eq!(f("f2:0.1").unwrap(), Factor::F16(0.099975586));
        assert_eq!(f("f2:65504").unwrap(), Factor::F16(65504.0));
        assert!(
            f("f4:1e39")
                .unwrap_err()
                .to_string()
                .contains("float32 range")
        );
        assert!(
            f("f2:65520")
                .unwrap_err()
                .to_string()
                .contains("float16 range")
        );
        assert!(f("f3:1").unwrap_err().to_string().contains("factor type"));
        assert!(f("two").unwrap_err().to_string().contains("not a number"));
    }

    #[test]
    fn float16_rounding_matches_numpy() {
        // Values checked against np.float16(x).
        assert_eq!(round_to_f16(1.0), Some(1.0));
        assert_eq!(round_to_f16(3.3), Some(3.300_781_3));
        assert_eq!(round_to_f16(2049.0), Some(2048.0), "tie to even");
        assert_eq!(round_to_f16(2051.0), Some(2052.0), "tie to even");
        assert_eq!(round_to_f16(65519.99), Some(65504.0));
        assert_eq!(round_to_f16(65520.0), None);
        assert_eq!(round_to_f16(1e-8), Some(0.0));
        assert_eq!(round_to_f16(6e-8), Some(5.9604645e-8), "subnormal 2^-24");
        assert_eq!(round_to_f16(-1e-3), Some(-0.0010004044));
        assert!(round_to_f16(f64::NAN).unwrap().is_nan());
        assert_eq!(round_to_f16(f64::INFINITY), Some(f32::INFINITY));
    }

    #[test]
    fn bad_specs_name_the_problem_and_the_file() {
        let cases = [
            ("shape=2,3;dtype=<i2;bogus=1", "bogus"),
            ("dtype=<i2", "shape"),
            ("shape=2", "dtype"),
            ("shape=2;shape=3;dtype=u1", "twice"),
            ("shape=2,-3;dtype=u1", "-3"),
            ("shape=2,x;dtype=u1", "'x'"),
            ("shape=2;dtype=<x9", "<x9"),
            ("shape=2;dtype=u1;offset=-1", "offset"),
            ("shape=2;dtype=u1;offset=1.5", "offset"),
            ("shape=2;dtype=u1;order=K", "order"),
            ("shape=2;dtype=u1;slope", "key=value"),
            ("shape=99999999999999999999;dtype=u1", "too large"),
        ];
        for (text, needle) in cases {
            let e = spec(text).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("a.raw"), "{text}: {e}");
        }
        let e = spec("shape=4294967296,4294967296,4294967296;dtype=<f8")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
        let e = spec(&format!("shape={};dtype=u1", vec!["1"; 65].join(",")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }

    #[test]
    fn the_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.raw");
        std::fs::write(&p, vec![0u8; 10]).unwrap();
        match parse_raw_spec("shape=2,3,4;dtype=<i2", &p) {
            Err(VoxelError::Truncated {
                path,
                expected,
                actual,
            }) => {
                assert!(path.ends_with("r.raw"));
                assert_eq!((expected, actual), (48, 10));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_raw_spec("shape=5;dtype=u1;offset=5", &p).is_ok());
        assert!(matches!(
            parse_raw_spec("shape=5;dtype=u1;offset=6", &p),
            Err(VoxelError::Truncated { .. })
        ));
        let missing = dir.path().join("nope.raw");
        let e = parse_raw_spec("shape=1;dtype=u1", &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.raw"), "{e}");
    }
}
