//! # voxelscan
//!
//! SQL over the voxels of neuroimaging files, read lazily and exactly as nibabel reads them.
//!
//! Data flows one way:
//!
//! ```text
//! file ─► formats (header) ─► proxy ─► slicer (canonical slice) ─► plan (byte segments + post-slicing)
//!      ─► io (byte source: mmap / pread / gzip) ─► values (decode) ─► scaling ─► VoxelArray | Arrow batches (table)
//! ```
//!
//! The core type is `proxy::ArrayProxy`, a Rust rendering of nibabel's `ArrayProxy`.

pub mod array;
#[cfg(feature = "ballista")]
pub mod cluster;
pub mod dtype;
pub mod error;
pub mod formats;
pub mod io;
pub mod layout;
pub mod location;
pub mod memory;
pub mod plan;
pub mod proxy;
pub mod render;
pub mod scaling;
pub mod slicer;
/// Test and benchmark helpers, not API: compiled for the crate's own tests and with the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod synth;
#[cfg(feature = "sql")]
pub mod table;
pub mod values;

pub use array::{ArrayData, VoxelArray};
pub use dtype::{ByteOrder, DType, Scalar};
pub use error::{Result, VoxelError};
pub use layout::{ArrayLayout, Factor, Order};
pub use proxy::{ArrayProxy, ArraySpec, ProxyOptions};
