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
    /// An error while opening or planning a SQL table, with the table's name attached.
    #[error("table {table}: {source}")]
    InTable {
        table: String,
        #[source]
        source: Box<VoxelError>,
    },
    /// A broken invariant of this crate (a bug), not a problem with the input.
    #[error("internal error: {0}")]
    Internal(String),
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
            | VoxelError::Invalid(_)
            | VoxelError::Internal(_) => VoxelError::InFile {
                path: path.as_ref().display().to_string(),
                source: Box::new(self),
            },
            other => other,
        }
    }

    /// Attach the SQL table an error happened in.
    pub fn in_table(self, table: &str) -> Self {
        VoxelError::InTable {
            table: table.to_string(),
            source: Box::new(self),
        }
    }

    /// What kind of failure this is, looking through the file and table an error was attached to.
    #[cfg(feature = "sql")]
    fn kind(&self) -> ErrorKind {
        match self {
            VoxelError::InFile { source, .. } | VoxelError::InTable { source, .. } => source.kind(),
            VoxelError::Internal(_) => ErrorKind::Bug,
            VoxelError::Invalid(_) | VoxelError::Slice(_) => ErrorKind::Request,
            _ => ErrorKind::Data,
        }
    }
}

/// Who is at fault, which decides the error's class where another error type must carry it.
#[cfg(feature = "sql")]
enum ErrorKind {
    /// The caller asked for something invalid: an option, a spec, an argument.
    Request,
    /// A file, the storage or the data cannot serve what was asked (bad header, I/O, too large, ...).
    Data,
    /// A broken invariant of this crate.
    Bug,
}

/// The one bridge into DataFusion: the caller's mistakes are planning errors, what the files or the storage did is an
/// execution error, a broken invariant is internal. The message is the error's own, naming the file or URL.
#[cfg(feature = "sql")]
impl From<VoxelError> for datafusion::error::DataFusionError {
    fn from(e: VoxelError) -> Self {
        use datafusion::error::DataFusionError;
        match e.kind() {
            ErrorKind::Request => DataFusionError::Plan(e.to_string()),
            ErrorKind::Data => DataFusionError::Execution(e.to_string()),
            ErrorKind::Bug => DataFusionError::Internal(format!("voxelscan: {e}")),
        }
    }
}

#[cfg(all(test, feature = "sql"))]
mod tests {
    use datafusion::error::DataFusionError;

    use super::VoxelError;

    #[test]
    fn bad_options_are_planning_errors_naming_the_table() {
        let e = VoxelError::Invalid("unknown option 'x'".into()).in_table("t");
        match DataFusionError::from(e) {
            DataFusionError::Plan(msg) => assert_eq!(msg, "table t: unknown option 'x'"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_problems_are_execution_errors_naming_the_file() {
        let e = VoxelError::Truncated {
            path: "a.nii".into(),
            expected: 400,
            actual: 352,
        };
        match DataFusionError::from(e.in_table("t")) {
            DataFusionError::Execution(msg) => assert_eq!(
                msg,
                "table t: a.nii: file is truncated: expected 400 bytes, found 352"
            ),
            other => panic!("{other:?}"),
        }
        let io = VoxelError::io("b.nii", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(
            matches!(DataFusionError::from(io), DataFusionError::Execution(m) if m.starts_with("b.nii: "))
        );
    }

    #[test]
    fn broken_invariants_are_internal_errors() {
        let e =
            VoxelError::Internal("gather stepped outside the read buffer".into()).in_file("c.nii");
        match DataFusionError::from(e) {
            DataFusionError::Internal(msg) => assert_eq!(
                msg,
                "voxelscan: c.nii: internal error: gather stepped outside the read buffer"
            ),
            other => panic!("{other:?}"),
        }
    }
}
