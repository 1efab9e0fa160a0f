//! A read's values handed to numpy without a copy: `np.asarray(buffer)` goes through `__array_interface__`, and
//! the array keeps the `Buffer` alive as its base.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use voxelscan::dtype::Scalar;
use voxelscan::plan::Order;
use voxelscan::{DType, VoxelArray};

/// Values owned by Rust, shown to numpy as an n-dimensional array.
#[pyclass(module = "voxelscan._voxelscan", frozen)]
pub struct Buffer {
    /// Owner of the memory numpy reads and writes; not touched again after construction (numpy mutates it
    /// through `address`).
    _values: voxelscan::values::Values,
    /// Address of the first byte, taken from a mutable borrow when the buffer was made.
    address: usize,
    shape: Vec<usize>,
    layout: Order,
    dtype: DType,
}

impl Buffer {
    /// Take over an array's values. They are held in native byte order; where the array's dtype says otherwise
    /// (an unscaled big-endian image is `>i2`, as in nibabel) the bytes are swapped here, in place.
    pub fn new(array: VoxelArray) -> Buffer {
        let VoxelArray {
            dtype,
            shape,
            layout,
            mut values,
        } = array;
        if dtype.needs_swap() {
            values.swap_bytes();
        }
        let address = values.bytes_mut().as_mut_ptr() as usize;
        Buffer {
            _values: values,
            address,
            shape,
            layout,
            dtype,
        }
    }
}

#[pymethods]
impl Buffer {
    /// numpy's array interface (version 3): shape, type, data address and, for F-order results, byte strides.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", typestr(self.dtype))?;
        if let Some(fields) = record_fields(self.dtype.scalar) {
            let descr = PyList::empty(py);
            for name in fields {
                descr.append((name.to_string(), "|u1"))?;
            }
            d.set_item("descr", descr)?;
        }
        // Writable, as nibabel's arrays are: numpy is the only user of the memory from here on.
        d.set_item("data", (self.address, false))?;
        match self.layout {
            Order::C => d.set_item("strides", py.None())?,
            Order::F => d.set_item(
                "strides",
                PyTuple::new(py, f_strides(&self.shape, self.dtype))?,
            )?,
        }
        Ok(d)
    }
}

/// numpy's type string: `<i2`, `>f8`, `|u1`; RGB records are opaque `|V3` / `|V4` with `descr` naming the fields.
fn typestr(dtype: DType) -> String {
    match dtype.scalar {
        Scalar::Rgb24 => "|V3".into(),
        Scalar::Rgba32 => "|V4".into(),
        _ => dtype.numpy_str(),
    }
}

fn record_fields(scalar: Scalar) -> Option<&'static [&'static str]> {
    match scalar {
        Scalar::Rgb24 => Some(&["R", "G", "B"]),
        Scalar::Rgba32 => Some(&["R", "G", "B", "A"]),
        _ => None,
    }
}

/// Column-major byte strides: the first axis varies fastest.
fn f_strides(shape: &[usize], dtype: DType) -> Vec<isize> {
    let mut stride = dtype.size() as isize;
    shape
        .iter()
        .map(|&n| {
            let s = stride;
            stride *= n.max(1) as isize;
            s
        })
        .collect()
}
