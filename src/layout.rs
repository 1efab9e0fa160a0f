//! How an array is laid out in its file: shape, stored dtype, byte offset, axis order and the scale factors a read
//! applies. Every header parser produces one [`ArrayLayout`], the proxy holds one, a table file wraps one and the
//! cluster's wire format carries one as it is; sizes are computed here only, with checked arithmetic.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dtype::DType;
use crate::error::{Result, VoxelError};

/// Memory layout of an n-d array: `F`, the first axis changes fastest (NIfTI, Analyze, MGH), or `C`, the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Order {
    F,
    C,
}

impl FromStr for Order {
    type Err = VoxelError;

    fn from_str(s: &str) -> Result<Order> {
        match s {
            "F" | "f" => Ok(Order::F),
            "C" | "c" => Ok(Order::C),
            _ => Err(VoxelError::Invalid(format!(
                "order should be one of 'C', 'F', not {s:?}"
            ))),
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::F => "F",
            Order::C => "C",
        })
    }
}

/// A scale factor with the float type it carries (nibabel: a Python float is `F64`, SPM99's 0-d float32 slope
/// is `F32`; `F16` holds a value exactly representable in float16). Serialised as `{"f32": 2.5}`, bit for bit
/// (NaN and infinities as strings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "FactorRepr", from = "FactorRepr")]
pub enum Factor {
    F16(f32),
    F32(f32),
    F64(f64),
}

impl Factor {
    pub fn value(&self) -> f64 {
        match *self {
            Factor::F16(v) | Factor::F32(v) => f64::from(v),
            Factor::F64(v) => v,
        }
    }
}

/// The factors meaning "no scaling": slope 1, intercept 0, as Python floats.
pub const NO_SCALING: (Factor, Factor) = (Factor::F64(1.0), Factor::F64(0.0));

/// A factor as written: its float type and its value widened to `f64` (exact: an `f32` narrows back to itself).
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FactorRepr {
    F16(Float),
    F32(Float),
    F64(Float),
}

impl From<Factor> for FactorRepr {
    fn from(f: Factor) -> FactorRepr {
        match f {
            Factor::F16(v) => FactorRepr::F16(Float(f64::from(v))),
            Factor::F32(v) => FactorRepr::F32(Float(f64::from(v))),
            Factor::F64(v) => FactorRepr::F64(Float(v)),
        }
    }
}

impl From<FactorRepr> for Factor {
    fn from(f: FactorRepr) -> Factor {
        match f {
            FactorRepr::F16(v) => Factor::F16(v.0 as f32),
            FactorRepr::F32(v) => Factor::F32(v.0 as f32),
            FactorRepr::F64(v) => Factor::F64(v.0),
        }
    }
}

/// An `f64` that survives JSON exactly: finite values as numbers, the others as `"NaN"`, `"inf"`, `"-inf"`.
#[derive(Debug, Clone, Copy)]
pub struct Float(pub f64);

impl PartialEq for Float {
    /// Bitwise, so that a round-trip test can tell `-0.0` from `0.0` and NaN equals itself.
    fn eq(&self, other: &Float) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Serialize for Float {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for Float {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Float, D::Error> {
        d.deserialize_any(FloatVisitor)
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = Float;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Float, E> {
        Ok(Float(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Float, E> {
        Ok(Float(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Float, E> {
        Ok(Float(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Float, E> {
        match v {
            "NaN" => Ok(Float(f64::NAN)),
            "inf" => Ok(Float(f64::INFINITY)),
            "-inf" => Ok(Float(f64::NEG_INFINITY)),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

/// Where an array's elements are in its (decompressed) data file and how a read turns them into values: nibabel's
/// tuple spec `(shape, dtype, offset, slope, inter)` plus the axis order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayLayout {
    pub shape: Vec<usize>,
    /// Storage dtype with its byte order (e.g. `>i2` for a big-endian NIfTI, `>f4` for MGH).
    pub dtype: DType,
    /// Byte offset of the first element in the data file.
    pub offset: u64,
    /// F for NIfTI/Analyze/MGH; npy: from `fortran_order`; raw: from the spec.
    pub order: Order,
    /// The factors a read applies: `F64(1.0)` / `F64(0.0)` when the header means "no scaling".
    pub slope: Factor,
    pub inter: Factor,
}

impl ArrayLayout {
    /// `shape` elements of `dtype` from byte 0, F order, no scaling (nibabel's `(shape, dtype)` spec).
    pub fn new(shape: Vec<usize>, dtype: DType) -> ArrayLayout {
        ArrayLayout {
            shape,
            dtype,
            offset: 0,
            order: Order::F,
            slope: NO_SCALING.0,
            inter: NO_SCALING.1,
        }
    }

    pub fn with_offset(mut self, offset: u64) -> ArrayLayout {
        self.offset = offset;
        self
    }

    pub fn with_scaling(mut self, slope: Factor, inter: Factor) -> ArrayLayout {
        self.slope = slope;
        self.inter = inter;
        self
    }

    pub fn with_order(mut self, order: Order) -> ArrayLayout {
        self.order = order;
        self
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Bytes of one element.
    pub fn itemsize(&self) -> u64 {
        self.dtype.size() as u64
    }

    /// Elements in the array, or None when the count overflows 64 bits.
    pub fn checked_voxels(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    }

    /// Bytes the array occupies, or None when that overflows 64 bits.
    pub fn checked_byte_len(&self) -> Option<u64> {
        self.checked_voxels()?.checked_mul(self.itemsize())
    }

    /// Bytes the data file must hold: `offset` plus the array, or None when that overflows 64 bits.
    pub fn checked_end(&self) -> Option<u64> {
        self.checked_byte_len()?.checked_add(self.offset)
    }

    /// Bytes the array occupies; an error when the size, with the offset, does not fit in 64 bits or in this
    /// machine's memory addresses.
    pub fn byte_len(&self) -> Result<u64> {
        self.checked_byte_len()
            .filter(|&n| self.offset.checked_add(n).is_some() && usize::try_from(n).is_ok())
            .ok_or_else(|| {
                VoxelError::Invalid(format!(
                    "array of shape {:?} and dtype {} is too large",
                    self.shape, self.dtype
                ))
            })
    }

    /// Bytes the data file must hold: `offset + byte_len()` (saturating; a layout from a header is checked when
    /// parsed, so this saturates only for a hand-made one).
    pub fn end(&self) -> u64 {
        self.checked_end().unwrap_or(u64::MAX)
    }

    /// Factors 1 and 0: a read hands the stored values back as they are.
    pub fn is_unscaled(&self) -> bool {
        self.slope.value() == 1.0 && self.inter.value() == 0.0
    }
}

/// Arrays that must agree on their number of axes (the files of one table): the first that does not, with its
/// index, or None when all agree.
pub fn first_other_ndim<'a>(
    layouts: impl IntoIterator<Item = &'a ArrayLayout>,
) -> Option<(usize, usize, usize)> {
    let mut iter = layouts.into_iter().enumerate();
    let (_, first) = iter.next()?;
    iter.find(|(_, l)| l.ndim() != first.ndim())
        .map(|(k, l)| (k, l.ndim(), first.ndim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Scalar;

    #[test]
    fn sizes_are_checked() {
        let l = ArrayLayout::new(vec![2, 3, 4], DType::native(Scalar::I16)).with_offset(352);
        assert_eq!((l.ndim(), l.itemsize()), (3, 2));
        assert_eq!(l.checked_voxels(), Some(24));
        assert_eq!(l.byte_len().unwrap(), 48);
        assert_eq!(l.end(), 400);
        let huge = ArrayLayout::new(vec![1 << 32, 1 << 32], DType::native(Scalar::F64));
        assert_eq!(huge.checked_voxels(), None);
        assert!(huge.checked_byte_len().is_none() && huge.byte_len().is_err());
        assert_eq!(huge.end(), u64::MAX);
        let empty = ArrayLayout::new(vec![0, 5], DType::native(Scalar::U8));
        assert_eq!(empty.byte_len().unwrap(), 0);
        assert!(l.is_unscaled());
        assert!(
            !l.with_scaling(Factor::F32(2.0), Factor::F64(0.0))
                .is_unscaled()
        );
    }

    #[test]
    fn ndims_are_compared() {
        let a = ArrayLayout::new(vec![2, 3], DType::native(Scalar::U8));
        let b = ArrayLayout::new(vec![4, 5], DType::native(Scalar::U8));
        let c = ArrayLayout::new(vec![4, 5, 6], DType::native(Scalar::U8));
        assert_eq!(first_other_ndim([&a, &b]), None);
        assert_eq!(first_other_ndim([&a, &b, &c]), Some((2, 3, 2)));
        assert_eq!(first_other_ndim([]), None);
    }

    #[test]
    fn layouts_round_trip_through_json_bit_for_bit() {
        for (slope, inter) in [
            (Factor::F32(0.1), Factor::F64(-0.0)),
            (Factor::F16(1.5), Factor::F64(f64::NAN)),
            (Factor::F64(f64::INFINITY), Factor::F64(f64::NEG_INFINITY)),
            (Factor::F64(1e-300), Factor::F32(f32::MIN_POSITIVE)),
        ] {
            let l = ArrayLayout::new(vec![3, 1, 7], DType::parse(">i2").unwrap())
                .with_offset(416)
                .with_order(Order::C)
                .with_scaling(slope, inter);
            let text = serde_json::to_string(&l).unwrap();
            let back: ArrayLayout = serde_json::from_str(&text).unwrap();
            let bits = |f: Factor| (std::mem::discriminant(&f), f.value().to_bits());
            assert_eq!(bits(back.slope), bits(slope), "{text}");
            assert_eq!(bits(back.inter), bits(inter), "{text}");
            assert_eq!(
                (back.shape, back.dtype, back.offset, back.order),
                (l.shape.clone(), l.dtype, 416, Order::C)
            );
        }
        let text = serde_json::to_string(&Factor::F32(2.5)).unwrap();
        assert_eq!(text, r#"{"f32":2.5}"#);
    }
}
