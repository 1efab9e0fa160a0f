//! SQL over voxels: a DataFusion table provider whose filters on coordinates become slices of the array, so a query
//! reads only the bytes it needs, straight from the image files.
//!
//! ```text
//! CREATE EXTERNAL TABLE / voxels() / register_voxels ─► VoxelTable (files, headers, schema)
//!   supports_filters_pushdown: predicate ─► per-axis IndexSet (Exact) | Inexact | Unsupported
//!   scan: IndexSets ∩ files ─► Selection per file ─► slabs (PartitionedFile, real byte span) ─► partitions
//!         ─► DataSourceExec(FileScanConfig + VoxelSource) ─► VoxelOpener ─► pieces ─► ArrayProxy::read_raw ─► batches
//! ```
//!
//! # Columns
//! One `Int64` coordinate per axis named `i, j, k, t, u, v, w`, then the values: `value` (the Arrow type of the
//! scaled dtype, native byte order; `scaling 'false'` gives the stored type, `value_type 'float32'` casts as
//! `np.asarray(proxy, dtype=float32)` does), or `value_re`/`value_im` for complex data, or
//! `value_r`/`value_g`/`value_b` (+`value_a`) `UInt8` for RGB(A). A table over a directory, a glob or several
//! locations has a `file` column (`Utf8`, the path as matched); its files must have the same
//! number of axes; when their value types differ the column is `float64` (`complex128` if any is complex).
//! Options `world`/`affine` add the millimetre columns `x, y, z` and the per-file `world_space`, `tr`; `grid` adds
//! `grid_i, grid_j, grid_k` ([`world`]); BIDS-named files add their entity columns ([`bids`]).
//!
//! # Pushdown
//! Filters on one coordinate made of comparisons with literals, `BETWEEN`, `IN`, `NOT`, `AND`, `OR` and exact casts
//! are `Exact`; filters on `file` alone are `Exact` (evaluated per file before any I/O); other filters on
//! coordinates are `Inexact`; filters on values are `Unsupported`. Statistics (rows, coordinate min/max) are exact.

pub mod aggregate;
#[cfg(feature = "ballista")]
pub mod aggregate_engine;
pub mod aggregate_rule;
pub mod bids;
pub mod config;
pub mod files;
pub mod functions;
pub mod index_set;
pub mod join_aggregate;
pub mod join_dense;
pub mod join_filter;
pub mod layout;
pub mod moments;
pub mod predicate;
pub mod provider;
pub mod read;
pub mod register;
pub mod scan;
pub mod scan_aggregate;
pub mod schema;
pub mod sink;
pub mod stores;
pub mod world;

pub use config::VoxelscanOptions;
pub use files::{FormatKind, TableOptions, VoxelFile};
pub use index_set::IndexSet;
pub use provider::VoxelTable;
pub use register::{
    VoxelTableFactory, VoxelsFunction, register_proxy, register_voxel_formats, register_voxels,
    session_context, with_voxels,
};
pub use scan::VoxelSource;
pub use schema::ValueMode;
