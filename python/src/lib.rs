//! `voxelscan._voxelscan`: the Rust half of the Python package. The Python half (`python/voxelscan/`) builds the
//! nibabel images and the proxy protocol on top of these few entry points:
//!
//! * [`proxy::Proxy`]: voxelscan's array proxy (local paths, `.gz` through the seek-point index, object-store URLs),
//!   reads returned as [`buffer::Buffer`]s that numpy wraps without copying;
//! * [`sql`]: voxel tables, the `voxels()` table function and the `STORED AS NIFTI` factory as DataFusion FFI
//!   capsules, and SQL run here with results as an Arrow C stream.
//!
//! Nothing may unwind into the interpreter: every entry point runs inside [`guard`], which turns a panic into a
//! Python `RuntimeError` (pyo3 would raise its own `PanicException`, a `BaseException` that `except Exception`
//! does not catch).

mod buffer;
mod errors;
mod proxy;
mod sql;

use pyo3::prelude::*;

pub(crate) use errors::guard;

#[pymodule]
fn _voxelscan(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<proxy::Proxy>()?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<sql::Table>()?;
    m.add_class::<sql::TableFunction>()?;
    m.add_class::<sql::TableFactory>()?;
    m.add_class::<sql::ArrowStream>()?;
    m.add_function(wrap_pyfunction!(proxy::open, m)?)?;
    m.add_function(wrap_pyfunction!(proxy::header_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(sql::table, m)?)?;
    m.add_function(wrap_pyfunction!(sql::run_sql, m)?)?;
    // The DataFusion major version the FFI structs were built for: Python checks `datafusion.__version__` against
    // it before handing a capsule over (the FFI layer does not check, and a mismatch crashes).
    m.add("DATAFUSION_MAJOR", sql::DATAFUSION_MAJOR)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Which profile the extension was built with (benchmarks say whether their figures are a release build's).
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(())
}
