//! voxelscan's `ArrayProxy` for Python. The nibabel protocol (`__array__`, `__getitem__`, …) is written in Python
//! on top of `read`, which takes the subscript as voxelscan's slice text (the same parser as `voxelscan slice`).

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use voxelscan::dtype::Scalar;
use voxelscan::formats::{Compression, Factor};
use voxelscan::io::local::MmapMode;
use voxelscan::io::remote::{RemoteObject, StoreOptions};
use voxelscan::location::{Location, open_image};
use voxelscan::plan::Order;
use voxelscan::proxy::{ArraySpec, DataFile};
use voxelscan::slicer::SliceSpec;
use voxelscan::{ArrayProxy, DType, ProxyOptions, VoxelError};

use crate::buffer::Buffer;
use crate::errors::to_py;
use crate::guard;

/// Largest header (NIfTI: everything before `vox_offset`, extensions included) read for `header_bytes`.
const MAX_HEADER_BYTES: u64 = 64 << 20;

#[pyclass(module = "voxelscan._voxelscan", frozen)]
pub struct Proxy {
    inner: ArrayProxy,
}

/// Open an image (path or URL) as a proxy. `mmap`: `False`, `True`/`"c"`, `"r"`; `raw`: a raw-file spec
/// (`shape=…;dtype=…`); `store`: object-store options (`aws.region`, `remote.gap`, …).
#[pyfunction]
#[pyo3(signature = (location, mmap = "c", keep_file_open = false, raw = None, store = None))]
pub fn open(
    py: Python<'_>,
    location: &str,
    mmap: &str,
    keep_file_open: bool,
    raw: Option<&str>,
    store: Option<HashMap<String, String>>,
) -> PyResult<Proxy> {
    let mmap = match mmap {
        "" | "off" | "false" => MmapMode::Off,
        "c" | "true" => MmapMode::CopyOnWrite,
        "r" => MmapMode::ReadOnly,
        other => {
            return Err(PyValueError::new_err(format!(
                "{location}: mmap should be True, False, 'c' or 'r', not {other:?}"
            )));
        }
    };
    let opts = ProxyOptions {
        mmap,
        keep_file_open,
        ..ProxyOptions::default()
    };
    let store = store_options(location, store)?;
    py.detach(|| {
        guard("open", || {
            ArrayProxy::open_location(location, raw, opts, &store)
                .map(|inner| Proxy { inner })
                .map_err(to_py)
        })
    })
}

fn store_options(location: &str, store: Option<HashMap<String, String>>) -> PyResult<StoreOptions> {
    let mut opts = StoreOptions::default();
    for (k, v) in store.unwrap_or_default() {
        opts.insert(&k, &v)
            .map_err(|e| PyValueError::new_err(format!("{location}: {e}")))?;
    }
    Ok(opts)
}

/// The bytes of an image's header as stored (decompressed): for a single-file image everything before the data
/// (NIfTI extensions included), for a `.hdr`/`.img` pair the whole `.hdr`. nibabel parses these itself, so the
/// header and affine of `voxelscan.load(url)` are nibabel's.
#[pyfunction]
#[pyo3(signature = (location, store = None))]
pub fn header_bytes<'py>(
    py: Python<'py>,
    location: &str,
    store: Option<HashMap<String, String>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let store = store_options(location, store)?;
    let bytes = py.detach(|| {
        guard("header_bytes", || {
            read_header_bytes(location, &store).map_err(to_py)
        })
    })?;
    Ok(PyBytes::new(py, &bytes))
}

fn read_header_bytes(location: &str, store: &StoreOptions) -> voxelscan::Result<Vec<u8>> {
    let image = open_image(&Location::parse(location)?, None, store)?;
    let header = &image.header;
    let header_name = header.header_file.display();
    if header_name != header.data_file.display() {
        // A pair (.hdr/.img): the header is a file or object of its own.
        return match &header.header_file {
            Location::Path(p) => std::fs::read(p).map_err(|e| VoxelError::io(p, e)),
            _ => {
                let object = RemoteObject::head(&header_name, store)?;
                let size = object.size();
                check_header_size(size, &header_name)?;
                let (_, bytes) = RemoteObject::open(&header_name, store, size)?;
                Ok(bytes.to_vec())
            }
        };
    }
    let (compression, offset) = (header.compression, header.layout.offset);
    leading_bytes(image.data, compression, offset, location)
}

fn check_header_size(n: u64, location: &str) -> voxelscan::Result<()> {
    if n > MAX_HEADER_BYTES {
        return Err(VoxelError::header(
            location,
            format!("header of {n} bytes is larger than {MAX_HEADER_BYTES}"),
        ));
    }
    Ok(())
}

/// The first `n` bytes of a (possibly gzipped or remote) file, read as a `uint8` proxy through the same byte
/// source the data reads use.
fn leading_bytes(
    file: DataFile,
    compression: Compression,
    n: u64,
    location: &str,
) -> voxelscan::Result<Vec<u8>> {
    check_header_size(n, location)?;
    let len = usize::try_from(n)
        .map_err(|_| VoxelError::Invalid(format!("{location}: header too large")))?;
    let spec = ArraySpec::new(vec![len], DType::native(Scalar::U8));
    let bytes = ArrayProxy::with_compression(file, compression, &spec, ProxyOptions::default())?
        .get_unscaled()?;
    Ok(bytes.values.bytes().to_vec())
}

/// A factor as nibabel holds it: the value and the numpy type it came with.
fn factor(f: Factor) -> (f64, &'static str) {
    match f {
        Factor::F16(v) => (f64::from(v), "float16"),
        Factor::F32(v) => (f64::from(v), "float32"),
        Factor::F64(v) => (v, "float64"),
    }
}

#[pymethods]
impl Proxy {
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.inner.shape().to_vec()
    }
    /// Storage dtype as numpy spells it, byte order included (`>i2`).
    #[getter]
    fn dtype(&self) -> String {
        dtype_str(self.inner.dtype())
    }
    #[getter]
    fn offset(&self) -> u64 {
        self.inner.offset()
    }
    #[getter]
    fn slope(&self) -> (f64, &'static str) {
        factor(self.inner.slope())
    }
    #[getter]
    fn inter(&self) -> (f64, &'static str) {
        factor(self.inner.inter())
    }
    #[getter]
    fn order(&self) -> &'static str {
        match self.inner.order() {
            Order::C => "C",
            Order::F => "F",
        }
    }
    #[getter]
    fn location(&self) -> String {
        self.inner.location()
    }
    #[getter]
    fn compressed(&self) -> bool {
        self.inner.compression() == Compression::Gzip
    }
    /// The dtype a scaled read returns.
    fn scaled_dtype(&self) -> PyResult<String> {
        self.inner.scaled_dtype().map(dtype_str).map_err(to_py)
    }

    /// Read `spec` (numpy subscript text; `""` for all). `dtype`: cast as `np.asarray(proxy, dtype=…)` does;
    /// `scaled=False`: stored values (`get_unscaled`).
    #[pyo3(signature = (spec, dtype = None, scaled = true))]
    fn read(
        &self,
        py: Python<'_>,
        spec: &str,
        dtype: Option<&str>,
        scaled: bool,
    ) -> PyResult<Buffer> {
        let spec = SliceSpec::parse(spec).map_err(to_py)?;
        let dtype = dtype.map(DType::parse).transpose().map_err(to_py)?;
        let inner = &self.inner;
        py.detach(|| {
            guard("read", || {
                let array = match (scaled, dtype) {
                    (false, _) => inner.get_unscaled_slice(&spec),
                    (true, None) => inner.slice(&spec),
                    (true, Some(dt)) => inner.slice_as(&spec, dt),
                };
                array.map(Buffer::new).map_err(to_py)
            })
        })
    }

    /// The same data seen with another shape (one `-1` may be inferred).
    fn reshape(&self, shape: Vec<i64>) -> PyResult<Proxy> {
        guard("reshape", || {
            self.inner
                .reshape(&shape)
                .map(|inner| Proxy { inner })
                .map_err(to_py)
        })
    }

    /// A proxy of its own over the same file (its own handle and lock).
    fn copy(&self) -> Proxy {
        Proxy {
            inner: self.inner.copy(),
        }
    }
}

fn dtype_str(dtype: DType) -> String {
    match dtype.scalar {
        Scalar::Rgb24 => "rgb24".into(),
        Scalar::Rgba32 => "rgba32".into(),
        _ => dtype.numpy_str(),
    }
}
