//! `VoxelError` → Python exceptions, and the panic guard.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::PyErr;
use pyo3::exceptions::{
    PyFileNotFoundError, PyIOError, PyIndexError, PyMemoryError, PyOSError, PyPermissionError,
    PyRuntimeError, PyValueError,
};
use voxelscan::VoxelError;

/// The Python exception for a voxelscan error; the message always carries the file or URL and what was wrong
/// (the error's own `Display`).
pub fn to_py(e: VoxelError) -> PyErr {
    let msg = e.to_string();
    match root(&e) {
        VoxelError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        VoxelError::Slice(_)
            if msg.contains("out of bounds") || msg.contains("too many indices") =>
        {
            PyIndexError::new_err(msg)
        }
        VoxelError::TooLarge { .. } => PyMemoryError::new_err(msg),
        VoxelError::Remote { .. } if msg.contains("not found") || msg.contains("404") => {
            PyFileNotFoundError::new_err(msg)
        }
        VoxelError::Remote { .. } => PyIOError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// The innermost error of `InFile` wrappers: it decides the exception class.
fn root(e: &VoxelError) -> &VoxelError {
    match e {
        VoxelError::InFile { source, .. } => root(source),
        other => other,
    }
}

/// Run `f`, turning a panic into a `RuntimeError` instead of letting it reach the interpreter.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, PyErr>) -> Result<T, PyErr> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(PyRuntimeError::new_err(format!(
                "voxelscan: internal error in {what}: {detail}"
            )))
        }
    }
}
