//! The table's columns and the conversion of decoded voxel values into Arrow arrays.
//!
//! Layout (documented in the README and the module docs of [`crate::table`]):
//!
//! | columns | type | meaning |
//! |---|---|---|
//! | `i, j, k, t, u, v, w` (as many as the array has axes) | `Int64`, never null | the voxel's index on axis 0, 1, … |
//! | `value` | the Arrow type of the value dtype | real values |
//! | `value_re`, `value_im` | `Float32` (complex64) / `Float64` (complex128) | complex values |
//! | `value_r`, `value_g`, `value_b` (+ `value_a`) | `UInt8` | RGB24 / RGBA32 records |
//! | `file` (multi-file tables only) | `Utf8` | the file the row comes from |

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float16Array, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::dtype::{DType, Kind, Scalar};
use crate::error::{Result, VoxelError};
use crate::formats::Factor;
use crate::scaling;
use crate::values::Values;

/// Coordinate column names, one per axis.
pub const AXIS_NAMES: [&str; 7] = ["i", "j", "k", "t", "u", "v", "w"];

/// The per-file column of a multi-file table.
pub const FILE_COLUMN: &str = "file";

/// Which values the `value` column holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum ValueMode {
    /// `np.asarray(proxy)`: scaled, nibabel's output dtype (native byte order).
    #[default]
    Scaled,
    /// `proxy.get_unscaled()`: the stored values (native byte order).
    Unscaled,
    /// `np.asarray(proxy, dtype=X)`: scaled, then cast to X.
    As(Scalar),
}

/// The element type one file's values come out as under `mode`.
pub fn value_scalar(
    storage: DType,
    slope: Factor,
    inter: Factor,
    mode: ValueMode,
) -> Result<Scalar> {
    Ok(match mode {
        ValueMode::Scaled => scaling::scaled_dtype(storage, slope, inter, None)?.scalar,
        ValueMode::Unscaled => storage.scalar,
        ValueMode::As(s) => {
            scaling::scaled_dtype(storage, slope, inter, Some(DType::native(s)))?.scalar
        }
    })
}

/// One element type for a table whose files yield `scalars`: their common type when they agree, `float64` for
/// mixed real types, `complex128` when a complex type is among them. Mixed record types cannot share a column.
pub fn common_scalar(scalars: &[Scalar]) -> Result<Scalar> {
    let Some(&first) = scalars.first() else {
        return Err(VoxelError::Invalid(
            "a table needs at least one file".into(),
        ));
    };
    if scalars.iter().all(|&s| s == first) {
        return Ok(first);
    }
    if scalars.iter().any(|s| s.kind() == Kind::Record) {
        return Err(VoxelError::Invalid(format!(
            "files of this table hold different record types ({}); they cannot share one value column",
            names(scalars)
        )));
    }
    Ok(if scalars.iter().any(|s| s.is_complex()) {
        Scalar::C128
    } else {
        Scalar::F64
    })
}

fn names(scalars: &[Scalar]) -> String {
    let mut v: Vec<&str> = scalars.iter().map(|s| s.name()).collect();
    v.sort_unstable();
    v.dedup();
    v.join(", ")
}

/// The Arrow columns that hold values of `scalar`.
pub fn value_fields(scalar: Scalar) -> Vec<Field> {
    let f = |name: &str, ty: DataType| Field::new(name, ty, false);
    match scalar {
        Scalar::C64 => vec![
            f("value_re", DataType::Float32),
            f("value_im", DataType::Float32),
        ],
        Scalar::C128 => vec![
            f("value_re", DataType::Float64),
            f("value_im", DataType::Float64),
        ],
        Scalar::Rgb24 => ["value_r", "value_g", "value_b"]
            .map(|n| f(n, DataType::UInt8))
            .to_vec(),
        Scalar::Rgba32 => ["value_r", "value_g", "value_b", "value_a"]
            .map(|n| f(n, DataType::UInt8))
            .to_vec(),
        real => vec![f("value", real_type(real))],
    }
}

fn real_type(s: Scalar) -> DataType {
    match s {
        Scalar::U8 => DataType::UInt8,
        Scalar::I8 => DataType::Int8,
        Scalar::U16 => DataType::UInt16,
        Scalar::I16 => DataType::Int16,
        Scalar::U32 => DataType::UInt32,
        Scalar::I32 => DataType::Int32,
        Scalar::U64 => DataType::UInt64,
        Scalar::I64 => DataType::Int64,
        Scalar::F16 => DataType::Float16,
        Scalar::F32 => DataType::Float32,
        _ => DataType::Float64,
    }
}

/// The schema of the file columns: coordinates for `ndim` axes, then the value columns.
pub fn file_schema(ndim: usize, scalar: Scalar) -> Result<SchemaRef> {
    let names = AXIS_NAMES.get(..ndim).ok_or_else(|| {
        VoxelError::Invalid(format!(
            "a {ndim}-d array has more axes than the 7 coordinate columns i..w"
        ))
    })?;
    let mut fields: Vec<Field> = names
        .iter()
        .map(|n| Field::new(*n, DataType::Int64, false))
        .collect();
    fields.extend(value_fields(scalar));
    Ok(Arc::new(Schema::new(fields)))
}

/// The type of the `file` column: plain text, not a dictionary, because Ballista 55's shuffle hands dictionary
/// columns back as plain text and a GROUP BY over them then fails on a cluster.
pub fn file_column_type() -> DataType {
    DataType::Utf8
}

/// The Arrow arrays of decoded values (one array, or two for complex, three or four for RGB(A)); no copy for reals.
pub fn value_arrays(values: Values) -> Vec<ArrayRef> {
    fn one(a: impl datafusion::arrow::array::Array + 'static) -> Vec<ArrayRef> {
        vec![Arc::new(a)]
    }
    match values {
        Values::U8(v) => one(UInt8Array::from(v)),
        Values::I8(v) => one(Int8Array::from(v)),
        Values::U16(v) => one(UInt16Array::from(v)),
        Values::I16(v) => one(Int16Array::from(v)),
        Values::U32(v) => one(UInt32Array::from(v)),
        Values::I32(v) => one(Int32Array::from(v)),
        Values::U64(v) => one(UInt64Array::from(v)),
        Values::I64(v) => one(Int64Array::from(v)),
        Values::F16(v) => one(Float16Array::from(v)),
        Values::F32(v) => one(Float32Array::from(v)),
        Values::F64(v) => one(Float64Array::from(v)),
        Values::C64(v) => vec![
            Arc::new(Float32Array::from_iter_values(v.iter().map(|c| c.re))),
            Arc::new(Float32Array::from_iter_values(v.iter().map(|c| c.im))),
        ],
        Values::C128(v) => vec![
            Arc::new(Float64Array::from_iter_values(v.iter().map(|c| c.re))),
            Arc::new(Float64Array::from_iter_values(v.iter().map(|c| c.im))),
        ],
        Values::Rgb24(v) => (0..3).map(|c| channel(&v, c)).collect(),
        Values::Rgba32(v) => (0..4).map(|c| channel(&v, c)).collect(),
    }
}

fn channel<const N: usize>(v: &[[u8; N]], c: usize) -> ArrayRef {
    Arc::new(UInt8Array::from_iter_values(
        v.iter().map(|px| px.get(c).copied().unwrap_or(0)),
    ))
}

/// Stored elements of one file (decoded to native order) as the table's value type.
pub fn decode_values(
    values: Values,
    storage: DType,
    slope: Factor,
    inter: Factor,
    mode: ValueMode,
    table_scalar: Scalar,
) -> Result<Values> {
    let values = match mode {
        ValueMode::Unscaled => values,
        ValueMode::Scaled => scaling::scale_values(values, storage, slope, inter, None)?.0,
        ValueMode::As(s) => {
            scaling::scale_values(values, storage, slope, inter, Some(DType::native(s)))?.0
        }
    };
    values.cast(table_scalar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ByteOrder;

    #[test]
    fn columns_follow_the_value_type() {
        let s = file_schema(4, Scalar::I16).unwrap();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["i", "j", "k", "t", "value"]);
        assert_eq!(s.field(4).data_type(), &DataType::Int16);
        let c = file_schema(2, Scalar::C64).unwrap();
        assert_eq!(c.fields().len(), 4);
        assert_eq!(c.field(3).name(), "value_im");
        assert_eq!(file_schema(3, Scalar::Rgb24).unwrap().fields().len(), 6);
        assert!(file_schema(8, Scalar::U8).is_err());
    }

    #[test]
    fn big_endian_scaled_values_come_out_native() {
        let be = DType::new(Scalar::I16, ByteOrder::Big);
        let raw = [0u8, 2, 0xff, 0xfe];
        let unscaled = decode_values(
            Values::from_bytes(&raw, be).unwrap(),
            be,
            Factor::F64(1.0),
            Factor::F64(0.0),
            ValueMode::Scaled,
            Scalar::I16,
        );
        assert_eq!(unscaled.unwrap(), Values::I16(vec![2, -2]));
        let f = value_scalar(be, Factor::F32(2.0), Factor::F32(1.0), ValueMode::Scaled).unwrap();
        assert_eq!(f, Scalar::F32);
        let v = decode_values(
            Values::from_bytes(&raw, be).unwrap(),
            be,
            Factor::F32(2.0),
            Factor::F32(1.0),
            ValueMode::Scaled,
            f,
        )
        .unwrap();
        assert_eq!(v, Values::F32(vec![5.0, -3.0]));
        let raw_vals = decode_values(
            Values::from_bytes(&raw, be).unwrap(),
            be,
            Factor::F32(2.0),
            Factor::F32(1.0),
            ValueMode::Unscaled,
            Scalar::I16,
        );
        assert_eq!(raw_vals.unwrap(), Values::I16(vec![2, -2]));
    }

    #[test]
    fn mixed_files_share_a_wider_type() {
        assert_eq!(
            common_scalar(&[Scalar::I16, Scalar::I16]).unwrap(),
            Scalar::I16
        );
        assert_eq!(
            common_scalar(&[Scalar::I16, Scalar::F32]).unwrap(),
            Scalar::F64
        );
        assert_eq!(
            common_scalar(&[Scalar::C64, Scalar::F32]).unwrap(),
            Scalar::C128
        );
        assert!(common_scalar(&[Scalar::Rgb24, Scalar::U8]).is_err());
        assert!(common_scalar(&[]).is_err());
    }
}
