//! In-memory results: an n-dimensional array with a runtime dtype, convertible to `ndarray` arrays and `.npy` files.

use std::io::Write;
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use num_complex::{Complex32, Complex64};

use crate::dtype::DType;
use crate::error::{Result, VoxelError};
use crate::plan::Order;
use crate::values::Values;

/// What reading a proxy returns: values, their shape and memory layout, and the dtype they stand for (byte order
/// included: an unscaled big-endian image gives `>i2`, exactly as nibabel does; the values themselves are held in
/// native order).
#[derive(Debug, Clone, PartialEq)]
pub struct VoxelArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Layout of `values` over `shape`: C (row-major) or F (column-major).
    pub layout: Order,
    pub values: Values,
}

/// A `VoxelArray` as a typed `ndarray` array.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    U8(ArrayD<u8>),
    I8(ArrayD<i8>),
    U16(ArrayD<u16>),
    I16(ArrayD<i16>),
    U32(ArrayD<u32>),
    I32(ArrayD<i32>),
    U64(ArrayD<u64>),
    I64(ArrayD<i64>),
    F16(ArrayD<f16>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    C64(ArrayD<Complex32>),
    C128(ArrayD<Complex64>),
    Rgb24(ArrayD<[u8; 3]>),
    Rgba32(ArrayD<[u8; 4]>),
}

fn shaped<T>(shape: &[usize], layout: Order, v: Vec<T>) -> Result<ArrayD<T>> {
    let dim = IxDyn(shape);
    let r = match layout {
        Order::C => ArrayD::from_shape_vec(dim, v),
        Order::F => ArrayD::from_shape_vec(dim.f(), v),
    };
    r.map_err(|e| VoxelError::Invalid(format!("array of shape {shape:?}: {e}")))
}

impl VoxelArray {
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        layout: Order,
        values: Values,
    ) -> Result<VoxelArray> {
        let n: usize = shape.iter().product();
        if n != values.len() || values.scalar() != dtype.scalar {
            return Err(VoxelError::Invalid(format!(
                "{} {} values do not make a {} array of shape {:?}",
                values.len(),
                values.scalar().name(),
                dtype,
                shape
            )));
        }
        Ok(VoxelArray {
            dtype,
            shape,
            layout,
            values,
        })
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The typed `ndarray` array (logical shape and values; memory layout as read).
    pub fn into_ndarray(self) -> Result<ArrayData> {
        let (s, l) = (self.shape, self.layout);
        Ok(match self.values {
            Values::U8(v) => ArrayData::U8(shaped(&s, l, v)?),
            Values::I8(v) => ArrayData::I8(shaped(&s, l, v)?),
            Values::U16(v) => ArrayData::U16(shaped(&s, l, v)?),
            Values::I16(v) => ArrayData::I16(shaped(&s, l, v)?),
            Values::U32(v) => ArrayData::U32(shaped(&s, l, v)?),
            Values::I32(v) => ArrayData::I32(shaped(&s, l, v)?),
            Values::U64(v) => ArrayData::U64(shaped(&s, l, v)?),
            Values::I64(v) => ArrayData::I64(shaped(&s, l, v)?),
            Values::F16(v) => ArrayData::F16(shaped(&s, l, v)?),
            Values::F32(v) => ArrayData::F32(shaped(&s, l, v)?),
            Values::F64(v) => ArrayData::F64(shaped(&s, l, v)?),
            Values::C64(v) => ArrayData::C64(shaped(&s, l, v)?),
            Values::C128(v) => ArrayData::C128(shaped(&s, l, v)?),
            Values::Rgb24(v) => ArrayData::Rgb24(shaped(&s, l, v)?),
            Values::Rgba32(v) => ArrayData::Rgba32(shaped(&s, l, v)?),
        })
    }

    /// Values converted to f64 in logical C order (complex → real part; records are refused). Handy for tests and
    /// quick statistics.
    pub fn to_f64_c_order(&self) -> Result<ArrayD<f64>> {
        let v = match self.values.clone().cast(crate::dtype::Scalar::F64)? {
            Values::F64(v) => v,
            _ => return Err(VoxelError::Invalid("cast to f64 failed".into())),
        };
        let a = shaped(&self.shape, self.layout, v)?;
        Ok(a.as_standard_layout().into_owned())
    }

    /// The same array with its values in C (row-major) layout.
    pub fn to_c_layout(&self) -> VoxelArray {
        if self.layout == Order::C || self.shape.iter().filter(|&&d| d > 1).count() <= 1 {
            return VoxelArray {
                layout: Order::C,
                ..self.clone()
            };
        }
        let idx = f_positions_in_c_order(&self.shape);
        VoxelArray {
            dtype: self.dtype,
            shape: self.shape.clone(),
            layout: Order::C,
            values: self.values.permuted(&idx),
        }
    }

    /// Write as `.npy` (numpy reads back the same shape, dtype with byte order, and values), streamed from the
    /// values themselves: no second copy of the result (an F-layout result is written with `fortran_order`).
    pub fn write_npy(&self, w: &mut impl Write) -> std::io::Result<()> {
        let fortran = self.layout == Order::F;
        w.write_all(&crate::formats::npy::header_bytes(
            self.dtype,
            &self.shape,
            fortran,
        ))?;
        self.values.write_bytes(self.dtype.order, w)
    }

    pub fn save_npy(&self, path: &Path) -> Result<()> {
        let f = std::fs::File::create(path).map_err(|e| VoxelError::io(path, e))?;
        let mut w = std::io::BufWriter::new(f);
        self.write_npy(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| VoxelError::io(path, e))
    }
}

/// For each element in C order, its position in F order.
fn f_positions_in_c_order(shape: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut f_strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        f_strides[k] = f_strides[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(idx.iter().zip(&f_strides).map(|(i, s)| i * s).sum());
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Scalar;

    #[test]
    fn f_to_c_layout() {
        // F-ordered 2x3: memory [a00 a10 a01 a11 a02 a12]
        let a = VoxelArray::new(
            DType::native(Scalar::I16),
            vec![2, 3],
            Order::F,
            Values::I16(vec![0, 10, 1, 11, 2, 12]),
        )
        .unwrap();
        let c = a.to_c_layout();
        assert_eq!(c.values, Values::I16(vec![0, 1, 2, 10, 11, 12]));
        match a.into_ndarray().unwrap() {
            ArrayData::I16(x) => assert_eq!(x[[1, 2]], 12),
            other => panic!("{other:?}"),
        }
    }
}
