//! Images in object storage (S3, GCS, Azure) and on HTTP servers, read with ranged GETs through `object_store`.
//!
//! ```text
//! URL ─► store_for (builder from the environment + per-table options, cached) ─► RemoteObject (size, ETag)
//!   header: one GET of the first bytes the name suggests; then only what the header says is missing (its
//!           extensions in one more GET, a 4-D MGH's footer), within a cap per format (MAX_NIFTI_HEADER, …)
//!   data:   planned segments ─► one GET per run coalesced across gaps ≤ `remote.gap` (never more GETs than
//!           segments) ─► `remote.concurrency` in flight, each body streamed into place (If-Match: the ETag)
//!   gzip:   one streaming GET, decompressed forward, dropped after the last byte needed
//! ```
//!
//! Transient failures (connection refused, 5xx, timeouts, a body cut mid-stream) are retried with backoff by
//! `object_store`; what still fails is an error naming the URL. A response shorter than asked is an error, never
//! a short result.

use std::future::Future;
use std::sync::OnceLock;

use super::ReadStats;
use crate::error::{Result, VoxelError};

/// Bytes of the first GET of an image whose name does not tell its format: the largest fixed-size header
/// (NIfTI-2's 540 bytes and its extension flag).
pub const HEADER_PREFIX: u64 = 544;
/// Default largest gap between two needed byte ranges read through rather than requested separately.
pub const DEFAULT_GAP: u64 = 1 << 20;
/// Default bound on bytes read through gaps, as a fraction of the bytes a read needs.
pub const DEFAULT_OVERREAD: f64 = 0.25;
/// Default GET requests in flight per read.
pub const DEFAULT_CONCURRENCY: usize = 32;

// ---------------------------------------------------------------------------------------------------------------
// The I/O runtime: remote reads are async; the proxy and the scan's slab readers are not.

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("voxelscan-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| VoxelError::Invalid(format!("cannot start the I/O runtime: {e}")))
}

/// Run `f` to completion on the I/O runtime from synchronous code. Inside another runtime's thread (a DataFusion
/// worker, a blocking task) a runtime cannot be entered, so the wait happens on a scoped helper thread.
pub fn block_on<F>(f: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f))
            .join()
            .map_err(|_| VoxelError::Invalid("the I/O thread panicked".into()))
    })
}

/// Requests made outside data reads (headers, HEADs, listings), for the process totals behind `--stats`; data
/// reads are counted by the proxy that asked for them.
fn count(requests: u64, bytes: u64) {
    super::record(ReadStats {
        bytes_read: bytes,
        requests,
        ..Default::default()
    });
}

mod header;
mod object;
mod options;
mod store;

pub use header::{
    MAX_HEADER_INFLATE, MAX_NIFTI_HEADER, MAX_NPY_HEADER, RemoteImage, open_image, open_raw,
};
pub use object::{RemoteObject, RemoteSource, pull_chunks};
pub use options::StoreOptions;
pub(crate) use store::remote_error;
pub use store::store_for_url;

#[cfg(test)]
mod tests;
