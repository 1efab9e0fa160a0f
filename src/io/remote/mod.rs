//! Images in object storage (S3, GCS, Azure) and on HTTP servers, read with ranged GETs through `object_store`.
//!
//! ```text
//! URL ─► store_for (builder from the environment + per-table options, cached) ─► RemoteObject (size, ETag)
//!   header: one GET of the first bytes the name suggests; then only what the header says is missing (its
//!           extensions in one more GET, a 4-D MGH's footer), within a cap per format (MAX_NIFTI_HEADER, …)
//!   data:   planned segments ─► GETs merged across gaps as far as the cost model says it pays (round trips ×
//!           waves + bytes ÷ bandwidth, learned per store; never more GETs than segments) ─► `remote.concurrency`
//!           in flight, each body streamed into place (If-Match: the ETag)
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
/// Default largest GET that reads through a gap (a longer one ties up a stream that parallel GETs would share).
pub const DEFAULT_MAX_REQUEST: u64 = 8 << 20;
/// Default GET requests in flight per read. Small scattered reads cost round trips ÷ this, so it is high (a voxel's
/// time series of 300 points is two waves); a GET in flight is one connection, which stores serve by the thousand.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Default round-trip time (seconds) of the cost model, until responses have been timed: a GET's first byte from
/// S3 within a region, or a nearby store or CDN, typically takes 20–30 ms.
pub const DEFAULT_RTT: f64 = 0.025;
/// Default bandwidth of a read (bytes per second), until responses have been timed: AWS's guidance for S3 is about
/// 85–90 MB/s per connection; a read with several GETs in flight often gets more, so this errs against reading
/// through large gaps.
pub const DEFAULT_BANDWIDTH: f64 = 85e6;
/// Client work per GET in the cost model (seconds): building and signing it, parsing its response — a few hundred
/// microseconds on a 2-core machine, where 300 GETs added about 0.14 s beyond their round trips.
pub const PER_REQUEST: f64 = 2e-4;

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
mod link;
mod object;
mod options;
mod store;

pub use header::{
    MAX_HEADER_INFLATE, MAX_NIFTI_HEADER, MAX_NPY_HEADER, RemoteImage, open_image, open_raw,
};
pub use link::{Estimate, Link};
pub use object::{RemoteObject, RemoteSource, pull_chunks};
pub use options::StoreOptions;
pub(crate) use store::remote_error;
pub use store::store_for_url;

#[cfg(test)]
mod tests;
