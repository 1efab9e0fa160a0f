//! Zero-copy views of uncompressed array data through a memory map (nibabel's memmap results of `get_unscaled()`):
//! mode `ReadOnly` gives a read-only view, `CopyOnWrite` a private writable one; the file is never written.

use std::fs::File;
use std::path::Path;

use half::f16;
use memmap2::{Mmap, MmapMut, MmapOptions};
use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};
use num_complex::{Complex32, Complex64};

use super::local::MmapMode;
use crate::dtype::{DType, Scalar};
use crate::error::{Result, VoxelError};
use crate::plan::Order;

/// Rust element types with a fixed dtype scalar.
pub trait Element: bytemuck::Pod {
    const SCALAR: Scalar;
}

macro_rules! element {
    ($($t:ty => $s:ident),*) => {$(impl Element for $t { const SCALAR: Scalar = Scalar::$s; })*};
}
element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64,
    f16 => F16, f32 => F32, f64 => F64, Complex32 => C64, Complex64 => C128);

#[derive(Debug)]
enum Map {
    ReadOnly(Mmap),
    CopyOnWrite(MmapMut),
}

/// An array's stored bytes, mapped.
#[derive(Debug)]
pub struct MappedArray {
    map: Map,
    shape: Vec<usize>,
    dtype: DType,
    order: Order,
}

impl MappedArray {
    /// Map `len` bytes at `offset` of `file`. The caller has checked that the file holds them.
    pub fn map(
        file: &File,
        path: &Path,
        offset: u64,
        shape: Vec<usize>,
        dtype: DType,
        order: Order,
        mode: MmapMode,
    ) -> Result<MappedArray> {
        let len: usize = shape.iter().product::<usize>() * dtype.size();
        let mut opts = MmapOptions::new();
        opts.offset(offset).len(len);
        let io = |e| VoxelError::io(path, e);
        // SAFETY: private mappings of a file we never write. A concurrent truncation of the file by another process
        // would make access fault — the inherent hazard of memory maps, documented on `MmapMode`.
        let map = match mode {
            MmapMode::ReadOnly => Map::ReadOnly(unsafe { opts.map(file) }.map_err(io)?),
            MmapMode::CopyOnWrite => Map::CopyOnWrite(unsafe { opts.map_copy(file) }.map_err(io)?),
            MmapMode::Off => return Err(VoxelError::Invalid("memory mapping is off".into())),
        };
        Ok(MappedArray {
            map,
            shape,
            dtype,
            order,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The stored dtype (byte order included).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn order(&self) -> Order {
        self.order
    }

    pub fn is_writable(&self) -> bool {
        matches!(self.map, Map::CopyOnWrite(_))
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::ReadOnly(m) => m,
            Map::CopyOnWrite(m) => m,
        }
    }

    fn check<T: Element>(&self) -> Result<()> {
        if T::SCALAR != self.dtype.scalar || self.dtype.needs_swap() {
            return Err(VoxelError::DType(format!(
                "cannot view {} data as native {}",
                self.dtype,
                T::SCALAR.name()
            )));
        }
        Ok(())
    }

    fn dim(&self) -> ndarray::StrideShape<IxDyn> {
        match self.order {
            Order::C => IxDyn(&self.shape).into(),
            Order::F => IxDyn(&self.shape).f().into(),
        }
    }

    /// The mapped data as a typed view; `T` must be the stored scalar, in native byte order and suitably aligned.
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>> {
        self.check::<T>()?;
        let data: &[T] = bytemuck::try_cast_slice(self.bytes()).map_err(|e| {
            VoxelError::Invalid(format!(
                "mapped data cannot be viewed as {}: {e}",
                T::SCALAR.name()
            ))
        })?;
        ArrayViewD::from_shape(self.dim(), data).map_err(|e| VoxelError::Invalid(e.to_string()))
    }

    /// A writable view of a copy-on-write map (changes stay private to this process).
    pub fn view_mut<T: Element>(&mut self) -> Result<ArrayViewMutD<'_, T>> {
        self.check::<T>()?;
        let dim = self.dim();
        let Map::CopyOnWrite(m) = &mut self.map else {
            return Err(VoxelError::Invalid(
                "a read-only map cannot be written (use copy-on-write)".into(),
            ));
        };
        let data: &mut [T] = bytemuck::try_cast_slice_mut(&mut m[..]).map_err(|e| {
            VoxelError::Invalid(format!(
                "mapped data cannot be viewed as {}: {e}",
                T::SCALAR.name()
            ))
        })?;
        ArrayViewMutD::from_shape(dim, data).map_err(|e| VoxelError::Invalid(e.to_string()))
    }
}
