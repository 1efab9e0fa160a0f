//! numpy-style dtypes: an element type plus a byte order, written and parsed the way numpy spells them
//! (`"<i2"`, `">f4"`, `"|u1"`, `"int16"`).

use std::fmt;

use crate::error::{Result, VoxelError};

/// NIfTI-1/2 datatype codes and the element types they store (`nifti1.h`; float128 and complex256, codes 1536
/// and 2048, are not read). Analyze 7.5 knows the first [`ANALYZE_CODES`] of them.
pub const NIFTI_CODES: [(i16, Scalar); 14] = [
    (2, Scalar::U8),
    (4, Scalar::I16),
    (8, Scalar::I32),
    (16, Scalar::F32),
    (32, Scalar::C64),
    (64, Scalar::F64),
    (128, Scalar::Rgb24),
    (256, Scalar::I8),
    (512, Scalar::U16),
    (768, Scalar::U32),
    (1024, Scalar::I64),
    (1280, Scalar::U64),
    (1792, Scalar::C128),
    (2304, Scalar::Rgba32),
];

/// How many of [`NIFTI_CODES`] Analyze 7.5 has (uint8 … RGB24).
pub const ANALYZE_CODES: usize = 7;

/// The element types an image can store.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Scalar {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
    /// complex64: two f32.
    C64,
    /// complex128: two f64.
    C128,
    /// NIfTI RGB24: a record of three u8 (`R`, `G`, `B`).
    Rgb24,
    /// NIfTI RGBA32: a record of four u8 (`R`, `G`, `B`, `A`).
    Rgba32,
}

/// numpy's kind letter of a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    UInt,
    Int,
    Float,
    Complex,
    /// Structured records (RGB/RGBA).
    Record,
}

impl Scalar {
    pub const ALL: [Scalar; 15] = [
        Scalar::U8,
        Scalar::I8,
        Scalar::U16,
        Scalar::I16,
        Scalar::U32,
        Scalar::I32,
        Scalar::U64,
        Scalar::I64,
        Scalar::F16,
        Scalar::F32,
        Scalar::F64,
        Scalar::C64,
        Scalar::C128,
        Scalar::Rgb24,
        Scalar::Rgba32,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Scalar::U8 | Scalar::I8 => 1,
            Scalar::U16 | Scalar::I16 | Scalar::F16 => 2,
            Scalar::Rgb24 => 3,
            Scalar::U32 | Scalar::I32 | Scalar::F32 | Scalar::Rgba32 => 4,
            Scalar::U64 | Scalar::I64 | Scalar::F64 | Scalar::C64 => 8,
            Scalar::C128 => 16,
        }
    }

    /// Bytes per byte-swappable unit (a complex number swaps each half; records never swap).
    pub fn swap_unit(self) -> usize {
        match self {
            Scalar::C64 => 4,
            Scalar::C128 => 8,
            Scalar::Rgb24 | Scalar::Rgba32 => 1,
            s => s.size(),
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Scalar::U8 | Scalar::U16 | Scalar::U32 | Scalar::U64 => Kind::UInt,
            Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64 => Kind::Int,
            Scalar::F16 | Scalar::F32 | Scalar::F64 => Kind::Float,
            Scalar::C64 | Scalar::C128 => Kind::Complex,
            Scalar::Rgb24 | Scalar::Rgba32 => Kind::Record,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self.kind(), Kind::UInt | Kind::Int)
    }

    pub fn is_float(self) -> bool {
        self.kind() == Kind::Float
    }

    pub fn is_complex(self) -> bool {
        self.kind() == Kind::Complex
    }

    /// The NIfTI datatype code (`nifti1.h`); None for float16, which NIfTI has no code for.
    pub fn nifti_code(self) -> Option<i16> {
        NIFTI_CODES
            .iter()
            .find(|(_, s)| *s == self)
            .map(|&(code, _)| code)
    }

    /// The element type of a NIfTI datatype code, if it is one this crate reads.
    pub fn from_nifti_code(code: i64) -> Option<Scalar> {
        NIFTI_CODES
            .iter()
            .find(|&&(c, _)| i64::from(c) == code)
            .map(|&(_, s)| s)
    }

    /// The element type of an Analyze 7.5 datatype code (the first seven NIfTI codes).
    pub fn from_analyze_code(code: i64) -> Option<Scalar> {
        NIFTI_CODES[..ANALYZE_CODES]
            .iter()
            .find(|&&(c, _)| i64::from(c) == code)
            .map(|&(_, s)| s)
    }

    /// numpy's type character without byte order (`i2`, `f4`, `V3`).
    pub fn code(self) -> &'static str {
        match self {
            Scalar::U8 => "u1",
            Scalar::I8 => "i1",
            Scalar::U16 => "u2",
            Scalar::I16 => "i2",
            Scalar::U32 => "u4",
            Scalar::I32 => "i4",
            Scalar::U64 => "u8",
            Scalar::I64 => "i8",
            Scalar::F16 => "f2",
            Scalar::F32 => "f4",
            Scalar::F64 => "f8",
            Scalar::C64 => "c8",
            Scalar::C128 => "c16",
            Scalar::Rgb24 => "V3",
            Scalar::Rgba32 => "V4",
        }
    }

    /// numpy's name (`int16`, `float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Scalar::U8 => "uint8",
            Scalar::I8 => "int8",
            Scalar::U16 => "uint16",
            Scalar::I16 => "int16",
            Scalar::U32 => "uint32",
            Scalar::I32 => "int32",
            Scalar::U64 => "uint64",
            Scalar::I64 => "int64",
            Scalar::F16 => "float16",
            Scalar::F32 => "float32",
            Scalar::F64 => "float64",
            Scalar::C64 => "complex64",
            Scalar::C128 => "complex128",
            Scalar::Rgb24 => "rgb24",
            Scalar::Rgba32 => "rgba32",
        }
    }

    /// Smallest and largest value of an integer type, as f64 would hold them exactly enough for
    /// nibabel's overflow test (u64/i64 extremes round the way numpy rounds them).
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Scalar::U8 => (0, u8::MAX as i128),
            Scalar::I8 => (i8::MIN as i128, i8::MAX as i128),
            Scalar::U16 => (0, u16::MAX as i128),
            Scalar::I16 => (i16::MIN as i128, i16::MAX as i128),
            Scalar::U32 => (0, u32::MAX as i128),
            Scalar::I32 => (i32::MIN as i128, i32::MAX as i128),
            Scalar::U64 => (0, u64::MAX as i128),
            Scalar::I64 => (i64::MIN as i128, i64::MAX as i128),
            _ => return None,
        })
    }
}

/// Byte order of stored elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "big") {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };

    pub fn swapped(self) -> ByteOrder {
        match self {
            ByteOrder::Little => ByteOrder::Big,
            ByteOrder::Big => ByteOrder::Little,
        }
    }
}

/// An element type with its byte order. One-byte types and records have no meaningful byte order;
/// they are kept little-endian internally and print as `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DType {
    pub scalar: Scalar,
    pub order: ByteOrder,
}

impl DType {
    pub fn new(scalar: Scalar, order: ByteOrder) -> DType {
        let order = if scalar.swap_unit() == 1 {
            ByteOrder::Little
        } else {
            order
        };
        DType { scalar, order }
    }

    /// The scalar in this machine's byte order.
    pub fn native(scalar: Scalar) -> DType {
        DType::new(scalar, ByteOrder::NATIVE)
    }

    pub fn size(&self) -> usize {
        self.scalar.size()
    }

    /// True when elements must be byte-swapped to be used on this machine.
    pub fn needs_swap(&self) -> bool {
        self.scalar.swap_unit() > 1 && self.order != ByteOrder::NATIVE
    }

    pub fn to_native(self) -> DType {
        DType::native(self.scalar)
    }

    pub fn with_order(self, order: ByteOrder) -> DType {
        DType::new(self.scalar, order)
    }

    /// The byte-order character numpy prints: `<`, `>` or `|`.
    pub fn order_char(&self) -> char {
        if self.scalar.swap_unit() == 1 {
            '|'
        } else if self.order == ByteOrder::Little {
            '<'
        } else {
            '>'
        }
    }

    /// numpy's `dtype.str`: `"<i2"`, `">f4"`, `"|u1"`, `"|V3"`.
    pub fn numpy_str(&self) -> String {
        format!("{}{}", self.order_char(), self.scalar.code())
    }

    /// Parse numpy spellings: `"<i2"`, `">f4"`, `"|u1"`, `"=i4"`, `"i2"`, `"int16"`, `"float32"`, `"f8"`,
    /// `"complex64"`, `"rgb24"`. Without an explicit order the dtype is native.
    pub fn parse(text: &str) -> Result<DType> {
        let t = text.trim();
        let (order, body) = match t.chars().next() {
            Some('<') => (Some(ByteOrder::Little), &t[1..]),
            Some('>') => (Some(ByteOrder::Big), &t[1..]),
            Some('|') | Some('=') => (None, &t[1..]),
            _ => (None, t),
        };
        let scalar = parse_scalar(body)
            .ok_or_else(|| VoxelError::DType(format!("unknown dtype '{text}'")))?;
        Ok(DType::new(scalar, order.unwrap_or(ByteOrder::NATIVE)))
    }
}

fn parse_scalar(body: &str) -> Option<Scalar> {
    let lower = body.to_ascii_lowercase();
    Scalar::ALL
        .into_iter()
        .find(|s| s.code().eq_ignore_ascii_case(&lower) || s.name() == lower)
        .or(match lower.as_str() {
            "b" | "i1" => Some(Scalar::I8),
            "u1" | "b1" | "ubyte" => Some(Scalar::U8),
            "byte" => Some(Scalar::I8),
            "short" | "h" => Some(Scalar::I16),
            "ushort" | "h2" => Some(Scalar::U16),
            "intc" | "l" | "i" => Some(Scalar::I32),
            "int" | "q" | "int_" => Some(Scalar::I64),
            "half" | "e" => Some(Scalar::F16),
            "single" | "f" => Some(Scalar::F32),
            "double" | "float" | "d" | "float_" => Some(Scalar::F64),
            "complex" | "cdouble" | "d16" => Some(Scalar::C128),
            "csingle" | "f8c" => Some(Scalar::C64),
            "rgb" => Some(Scalar::Rgb24),
            "rgba" => Some(Scalar::Rgba32),
            _ => None,
        })
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.numpy_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_strings() {
        assert_eq!(
            DType::parse("<i2").unwrap(),
            DType::new(Scalar::I16, ByteOrder::Little)
        );
        assert_eq!(DType::parse(">f4").unwrap().numpy_str(), ">f4");
        assert_eq!(DType::parse("|u1").unwrap().numpy_str(), "|u1");
        assert_eq!(DType::parse(">u1").unwrap().numpy_str(), "|u1");
        assert_eq!(DType::parse("int16").unwrap(), DType::native(Scalar::I16));
        assert_eq!(DType::parse("float32").unwrap().scalar, Scalar::F32);
        assert_eq!(DType::parse("<c16").unwrap().numpy_str(), "<c16");
        assert_eq!(DType::parse("f8").unwrap().scalar, Scalar::F64);
        assert!(DType::parse("<x9").is_err());
        assert!(DType::parse("").is_err());
    }

    #[test]
    fn swap_rules() {
        assert!(!DType::new(Scalar::U8, ByteOrder::Big).needs_swap());
        assert_eq!(
            DType::new(Scalar::C64, ByteOrder::Big).scalar.swap_unit(),
            4
        );
        let other = ByteOrder::NATIVE.swapped();
        assert!(DType::new(Scalar::I16, other).needs_swap());
    }
}
