//! One error type for the whole crate: every failure says what was wrong and, where known, in which file.

use std::path::Path;

/// Shorthand used throughout the crate.
pub type Result<T, E = VoxelError> = std::result::Result<T, E>;

/// Everything that can go wrong reading an image or serving a query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoxelError {
    /// The operating system refused a read/open.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A header is malformed (wrong magic, absurd dims, unknown datatype, ...): the field and value at fault when
    /// one is, and what is wrong.
    #[error("{path}: {fault}")]
    Header {
        path: String,
        fault: crate::formats::HeaderFault,
    },
    /// The file holds fewer bytes than the header promises.
    #[error("{path}: file is truncated: expected {expected} bytes, found {actual}")]
    Truncated {
        path: String,
        expected: u64,
        actual: u64,
    },
    /// A read whose buffers would not fit in memory (checked before allocating, see `memory`).
    #[error("{path}: {what} would need {needed} bytes, {why}")]
    TooLarge {
        path: String,
        what: String,
        needed: u64,
        why: String,
    },
    /// A slice spec that cannot be parsed or does not fit the array (numpy's IndexError/ValueError).
    #[error("invalid slice: {0}")]
    Slice(String),
    /// A dtype string or code that is not understood or not supported.
    #[error("dtype: {0}")]
    DType(String),
    /// Scaling would overflow every supported float type.
    #[error("overflow: {0}")]
    Overflow(String),
    /// A feature of the file that this crate does not read (float128, ...).
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: String, what: String },
    /// Object storage or an HTTP server refused or failed a request (after retries).
    #[error("{url}: {msg}")]
    Remote { url: String, msg: String },
    /// A bad option, spec or argument from the caller.
    #[error("{0}")]
    Invalid(String),
    /// A pure-module error with the file it happened in attached afterwards.
    #[error("{path}: {source}")]
    InFile {
        path: String,
        #[source]
        source: Box<VoxelError>,
    },
}

impl VoxelError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        VoxelError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// A header problem of the file as a whole (empty, corrupt, no magic, ...).
    pub fn header(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        VoxelError::Header {
            path: path.as_ref().display().to_string(),
            fault: crate::formats::HeaderFault::file(msg),
        }
    }

    /// A header field holding a value the format does not allow: `problem` says what is wrong (and is what the
    /// message shows after the file name).
    pub fn header_field(
        path: impl AsRef<Path>,
        field: &'static str,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        VoxelError::Header {
            path: path.as_ref().display().to_string(),
            fault: crate::formats::HeaderFault::field(field, value, problem),
        }
    }

    /// Attach a file name to an error that does not carry one yet.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            VoxelError::Slice(_)
            | VoxelError::DType(_)
            | VoxelError::Overflow(_)
            | VoxelError::Invalid(_) => VoxelError::InFile {
                path: path.as_ref().display().to_string(),
                source: Box::new(self),
            },
            other => other,
        }
    }
}
