//! Gzip objects in a store (S3, GCS, Azure, HTTP) read through a seek-point index, fetching only the compressed
//! bytes between the index points a read needs.
//!
//! ```text
//! first read (no index):  one streaming GET from byte 0 to about where the read ends (estimated; more GETs, each
//!                         twice as long, only if it reads on), decompressed forward, recording seek points
//!                         → index file in the cache directory, keyed by URL + size + ETag
//! with an index:          planned runs, each from a seek point to the point after its last byte; the runs of one
//!                         thread share one GET per stretch of adjacent ranges, streamed into the decompressor
//! repeated reads:         served from the process-wide data cache ([`super::SpanCache`]) without any request
//! ```
//!
//! The engine is the local files' one ([`GzEngine`]): runs, threads, the data cache and index files work alike; only
//! where the compressed bytes come from differs ([`RunSource`] for [`RemoteObject`]). An object's index lives only in
//! the cache directory (`VOXELSCAN_INDEX_CACHE`, else `$XDG_CACHE_HOME/voxelscan`), never next to the object. An
//! object without an ETag cannot be told from a rewritten one: its index is kept in memory for the source's life
//! only, and its data is not cached.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::stream::BoxStream;

use super::sidecar::{IndexAccess, IndexPlace, cache_file_name, user_cache_dir};
use super::{DataCache, GzEngine, GzipOptions, RunSource};
use crate::error::{Result, VoxelError};
use crate::io::gzip::index::{FileIdentity, GzIndex, ReadAt};
use crate::io::ranges::{Coalesce, merge_ranges};
use crate::io::remote::{RemoteObject, pull_chunks};
use crate::io::{ByteSource, ReadStats};
use crate::plan::Segment;

/// Bytes pulled from a response per wait on the I/O runtime (each wait may cost a thread hop).
const PULL_BYTES: usize = 1 << 20;
/// A read at most this far ahead of the open response reads through instead of starting another GET.
const SKIP_AHEAD: u64 = 256 * 1024;
/// Bytes handed out that are kept, so that a run restarting just before where the last one stopped (its cursor read
/// ahead by up to a 128 KiB input buffer) is served without another GET.
const REWIND: u64 = 512 * 1024;
/// First and largest size of a GET past the planned ranges (it doubles each time).
const FIRST_OVERRUN: u64 = 256 * 1024;
const MAX_OVERRUN: u64 = 64 << 20;

/// A gzip-compressed object read through a seek-point index. `Send + Sync`; reads run in parallel.
#[derive(Debug)]
pub struct RemoteIndexedGzip {
    object: RemoteObject,
    identity: FileIdentity,
    engine: GzEngine,
}

impl RemoteIndexedGzip {
    /// Read `object` with [`GzipOptions::from_env`] and as many threads as there are cores.
    pub fn open(object: RemoteObject) -> Result<RemoteIndexedGzip> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        RemoteIndexedGzip::with_options(
            object,
            GzipOptions {
                threads,
                ..GzipOptions::from_env()
            },
        )
    }

    /// Read `object`, loading a cached index when one matches its URL, size and ETag.
    pub fn with_options(
        object: RemoteObject,
        mut options: GzipOptions,
    ) -> Result<RemoteIndexedGzip> {
        let url = object.url().to_string();
        let identity = object_identity(&url, object.size(), object.etag());
        let index_paths = match object.etag() {
            Some(_) if options.use_index => index_location(&url, &options)
                .map(IndexPlace::cache)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        if object.etag().is_none() {
            options.data_cache = DataCache::Off;
        }
        // An object's permissions are not known here: its index is private to this user.
        let access = IndexAccess::private();
        let engine = GzEngine::new(url.clone(), url, index_paths, access, options, identity)?;
        Ok(RemoteIndexedGzip {
            object,
            identity,
            engine,
        })
    }

    /// The current index (possibly partial or empty).
    pub fn index(&self) -> Arc<GzIndex> {
        self.engine.index()
    }

    /// Where the index was last loaded from or written to.
    pub fn index_path(&self) -> Option<PathBuf> {
        self.engine.index_path()
    }

    /// Complete the index with a streaming GET from its last point to the end, and write it.
    pub fn build_index(
        &self,
        progress: impl FnMut(u64),
    ) -> Result<(Arc<GzIndex>, Option<PathBuf>)> {
        self.engine
            .build_index(&self.object, self.identity, progress)
    }
}

impl ByteSource for RemoteIndexedGzip {
    fn location(&self) -> &str {
        self.engine.location()
    }

    /// `None`: the decompressed size is not known without reading.
    fn size(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        self.engine.read(&self.object, self.identity, segments, out)
    }
}

/// The identity an index of an object is checked against: its size, 64 bits of hash of its ETag in place of a
/// modification time, and a CRC of its URL in place of a hash of its first bytes (a rewritten object has a new
/// ETag; the URL is also in the index file's name).
pub fn object_identity(url: &str, size: u64, etag: Option<&str>) -> FileIdentity {
    let tag = etag.unwrap_or_default().as_bytes();
    let hash = (u64::from(zlib_rs::crc32::crc32(0, tag)) << 32)
        | u64::from(zlib_rs::adler32::adler32(1, tag));
    FileIdentity {
        size,
        mtime_ns: hash as i64,
        head_crc: zlib_rs::crc32::crc32(0, url.as_bytes()),
    }
}

/// The index file of the object at `url`: in `options.cache_dir`, else the user cache directory.
pub fn index_location(url: &str, options: &GzipOptions) -> Option<PathBuf> {
    let dir = options.cache_dir.clone().or_else(user_cache_dir)?;
    let last = url.rsplit('/').find(|s| !s.is_empty()).unwrap_or("object");
    let name: String = last
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(dir.join(cache_file_name(url.as_bytes(), &name)))
}

impl RunSource for RemoteObject {
    /// Nothing is fetched yet: the first GET starts at the first read.
    fn reader(&self, plan: &[Range<u64>]) -> Result<Box<dyn ReadAt + '_>> {
        Ok(Box::new(PlanReader {
            object: self,
            // One GET open at a time per reader: the store's cost model with one in flight.
            plan: merged(plan, self.size(), self.coalesce(1)?),
            body: Mutex::new(Body {
                overrun: FIRST_OVERRUN,
                ..Body::default()
            }),
        }))
    }
    /// Not yet: the planned ranges start at seek points, so a probe from a mark inside one would open a GET of its
    /// own, and one more for the seek point whenever the probe fails.
    fn probes_marks(&self) -> bool {
        false
    }
}

/// Planned ranges clipped to the object, sorted and merged where they touch or where `policy` says reading
/// through the gap is cheaper than another GET.
fn merged(plan: &[Range<u64>], size: u64, policy: Coalesce) -> Vec<Range<u64>> {
    let clipped: Vec<Range<u64>> = plan
        .iter()
        .map(|r| r.start.min(size)..r.end.min(size))
        .filter(|r| r.start < r.end)
        .collect();
    merge_ranges(&clipped, policy)
        .into_iter()
        .map(|m| m.range)
        .collect()
}

/// The compressed bytes of a group of runs: one streaming GET per stretch of planned ranges, consumed as
/// decompression goes. A run restarting a little before where the previous one stopped (at its seek point's byte)
/// is served from the bytes just handed out; a jump a little ahead reads through; a read past the plan is one more
/// GET, of a size that doubles each time.
struct PlanReader<'a> {
    object: &'a RemoteObject,
    plan: Vec<Range<u64>>,
    body: Mutex<Body>,
}

#[derive(Default)]
struct Body {
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    /// Object offset of the next byte of the open response.
    pos: u64,
    /// End of the open request's range.
    end: u64,
    /// Received, not yet handed out (starting at `pos`).
    pending: VecDeque<Bytes>,
    /// The last bytes handed out, ending at `pos` (at most about [`REWIND`]).
    history: VecDeque<Bytes>,
    history_len: u64,
    /// Size of the next GET past the plan.
    overrun: u64,
    fetched: u64,
    requests: u64,
}

impl PlanReader<'_> {
    fn lock(&self) -> MutexGuard<'_, Body> {
        self.body.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a GET starting at `offset` should end: the end of the planned stretch holding `offset`, else (past
    /// the plan) the next overrun size on.
    fn end_for(&self, offset: u64, body: &mut Body) -> u64 {
        let size = self.object.size();
        let planned = self
            .plan
            .iter()
            .find(|r| r.start <= offset && offset < r.end)
            .map(|r| r.end);
        planned.unwrap_or_else(|| {
            let end = offset.saturating_add(body.overrun).min(size);
            body.overrun = body.overrun.saturating_mul(2).min(MAX_OVERRUN);
            end
        })
    }
}

impl ReadAt for PlanReader<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if buf.is_empty() || offset >= self.object.size() {
            return Ok(0);
        }
        let url = self.object.url();
        let mut body = self.lock();
        if offset < body.pos && body.pos - offset <= body.history_len {
            return Ok(body.copy_from_history(buf, offset));
        }
        let ahead = offset.saturating_sub(body.pos);
        let reachable = body.stream.is_some() && offset < body.end && ahead <= SKIP_AHEAD;
        if offset < body.pos || !reachable {
            let end = self.end_for(offset, &mut body);
            body.open(self.object, offset, end)?;
        }
        while body.pos < offset {
            let gap = offset - body.pos;
            body.skip(url, gap)?;
        }
        while body.pending.is_empty() {
            body.pull(url)?;
        }
        Ok(body.hand_out(buf))
    }

    fn fetched(&self) -> Option<ReadStats> {
        let body = self.lock();
        Some(ReadStats {
            bytes_read: body.fetched,
            requests: body.requests,
            ..ReadStats::default()
        })
    }
}

impl Body {
    /// Start a GET of `[from, to)` (dropping any response still open and what it had sent).
    fn open(&mut self, object: &RemoteObject, from: u64, to: u64) -> std::io::Result<()> {
        self.stream = None;
        self.pending.clear();
        self.history.clear();
        self.history_len = 0;
        let stream = object
            .stream_range(from..to)
            .map_err(std::io::Error::other)?;
        self.stream = Some(stream);
        self.pos = from;
        self.end = to;
        self.requests += 1;
        Ok(())
    }

    /// Copy bytes at `offset` (before `pos`) from the history, up to the end of the chunk holding it.
    fn copy_from_history(&self, buf: &mut [u8], offset: u64) -> usize {
        let mut at = self.pos - self.history_len;
        for chunk in &self.history {
            let end = at + chunk.len() as u64;
            if offset < end {
                let from = (offset - at) as usize;
                let n = (chunk.len() - from).min(buf.len());
                buf[..n].copy_from_slice(&chunk[from..from + n]);
                return n;
            }
            at = end;
        }
        0
    }

    /// Hand out the next pending bytes into `buf`, remembering them in the history.
    fn hand_out(&mut self, buf: &mut [u8]) -> usize {
        let Some(chunk) = self.pending.pop_front() else {
            return 0;
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            self.pending.push_front(chunk.slice(n..));
        }
        self.remember(chunk.slice(..n));
        n
    }

    /// Drop up to `n` pending bytes (reading through a small gap).
    fn skip(&mut self, url: &str, n: u64) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.pull(url)?;
        }
        if let Some(chunk) = self.pending.pop_front() {
            let k = (chunk.len() as u64).min(n) as usize;
            if k < chunk.len() {
                self.pending.push_front(chunk.slice(k..));
            }
            self.remember(chunk.slice(..k));
        }
        Ok(())
    }

    fn remember(&mut self, bytes: Bytes) {
        self.pos += bytes.len() as u64;
        self.history_len += bytes.len() as u64;
        self.history.push_back(bytes);
        while let Some(front) = self.history.front() {
            let len = front.len() as u64;
            if self.history_len - len < REWIND {
                break;
            }
            self.history_len -= len;
            self.history.pop_front();
        }
    }

    /// Wait for about [`PULL_BYTES`] more of the response. A response that ends before its range does is an error.
    fn pull(&mut self, url: &str) -> std::io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(cut_short(url, self.pos));
        };
        let got = pull_chunks(stream, PULL_BYTES)
            .map_err(std::io::Error::other)?
            .map_err(|e| {
                std::io::Error::other(VoxelError::Remote {
                    url: url.to_string(),
                    msg: e.to_string(),
                })
            })?;
        let received: u64 = got.iter().map(|b| b.len() as u64).sum();
        if received == 0 {
            self.stream = None;
            return Err(cut_short(url, self.pos));
        }
        self.fetched += received;
        self.pending
            .extend(got.into_iter().filter(|b| !b.is_empty()));
        Ok(())
    }
}

fn cut_short(url: &str, at: u64) -> std::io::Error {
    std::io::Error::other(VoxelError::Remote {
        url: url.to_string(),
        msg: format!(
            "the response ended at byte {at}, before the range asked for; the connection may have been cut"
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    use super::*;
    use crate::io::gzip::SpanCache;
    use crate::io::remote::StoreOptions;
    use crate::io::remote::block_on;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Compressible but not trivially so: runs of low-entropy bytes and noise.
    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 5000) % 3 == 0 {
                    x as u8
                } else {
                    ((x % 5) as u8).wrapping_add((i / 1000) as u8)
                }
            })
            .collect()
    }

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    /// `bytes` put into `store` as `name`, as a [`RemoteObject`] with the ETag the store gave it (or none).
    fn object(store: &Arc<InMemory>, name: &str, bytes: &[u8], with_etag: bool) -> RemoteObject {
        let path = ObjectPath::from(name);
        let put = block_on(store.put(&path, PutPayload::from(bytes.to_vec())))
            .unwrap()
            .unwrap();
        let etag = put.e_tag.filter(|_| with_etag);
        let shared: Arc<dyn ObjectStore> = Arc::clone(store) as Arc<dyn ObjectStore>;
        RemoteObject::in_store(
            &format!("memory://bucket/{name}"),
            shared,
            path,
            bytes.len() as u64,
            etag,
            &StoreOptions::default(),
        )
    }

    fn opts(dir: &std::path::Path) -> GzipOptions {
        GzipOptions {
            span: 64 * 1024,
            cache_dir: Some(dir.to_path_buf()),
            ..GzipOptions::default()
        }
    }

    fn read(src: &RemoteIndexedGzip, segs: &[Segment]) -> (Vec<u8>, ReadStats) {
        let mut out = vec![0u8; segs.iter().map(|s| s.len as usize).sum()];
        let stats = src.read_segments(segs, &mut out).unwrap();
        (out, stats)
    }

    fn expect(d: &[u8], segs: &[Segment]) -> Vec<u8> {
        segs.iter()
            .flat_map(|s| d[s.offset as usize..(s.offset + s.len) as usize].to_vec())
            .collect()
    }

    #[test]
    fn the_first_read_streams_once_and_later_reads_fetch_only_between_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(2_000_000, 1);
        let file = gz(&d);
        let obj = object(&store, "ds/sub-01/bold.nii.gz", &file, true);
        // Cold: one streaming GET; reading most of the object completes the index, written to the cache directory.
        let cold = RemoteIndexedGzip::with_options(obj.clone(), opts(dir.path())).unwrap();
        let segs = [seg(100, 10), seg(1_700_000, 1000)];
        let (got, stats) = read(&cold, &segs);
        assert_eq!(got, expect(&d, &segs));
        assert_eq!(stats.requests, 1, "{stats:?}");
        assert!(cold.index().is_complete());
        let written = cold.index_path().expect("index written");
        assert!(
            written.starts_with(dir.path()) && written.to_string_lossy().contains("bold.nii.gz")
        );
        // An object's permissions are unknown: its index (voxel windows) is private.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&written).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // Warm (another source, as another query would open): the index comes from the cache directory, and a
        // read fetches one range: from the point before it to the point after it.
        let warm = RemoteIndexedGzip::with_options(obj, opts(dir.path())).unwrap();
        assert_eq!(warm.index_path(), Some(written));
        let index = warm.index();
        let want = seg(1_234_567, 5000);
        let (got, stats) = read(&warm, &[want]);
        assert_eq!(got, expect(&d, &[want]));
        let before = index.point_at_or_before(want.offset).unwrap();
        let after = index
            .points()
            .iter()
            .find(|p| p.out >= want.offset + want.len)
            .unwrap();
        assert_eq!(stats.requests, 1, "{stats:?}");
        assert!(
            stats.bytes_read <= after.input - before.input + 1,
            "fetched {} for compressed range {}..{}",
            stats.bytes_read,
            before.input,
            after.input
        );
        assert!(stats.bytes_read < file.len() as u64 / 10, "{stats:?}");
    }

    #[test]
    fn runs_on_two_threads_fetch_their_own_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(1_500_000, 2);
        let file = gz(&d);
        let obj = object(&store, "a.nii.gz", &file, true);
        RemoteIndexedGzip::with_options(obj.clone(), opts(dir.path()))
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        let two = RemoteIndexedGzip::with_options(
            obj,
            GzipOptions {
                threads: 2,
                ..opts(dir.path())
            },
        )
        .unwrap();
        let all = [seg(0, d.len() as u64)];
        let (got, stats) = read(&two, &all);
        assert!(got == d, "whole object on two threads");
        // The runs between points of each thread are adjacent: one GET per thread, the object fetched once.
        assert_eq!(stats.requests, 2, "{stats:?}");
        assert!(stats.bytes_read <= file.len() as u64 + 2, "{stats:?}");
    }

    #[test]
    fn runs_close_together_share_a_get_and_distant_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(3_000_000, 7);
        let file = gz(&d);
        let obj = object(&store, "e.nii.gz", &file, true);
        RemoteIndexedGzip::with_options(obj.clone(), opts(dir.path()))
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        let src = RemoteIndexedGzip::with_options(obj, opts(dir.path())).unwrap();
        // A voxel time series: a few bytes in every span, one run per span, read as one stretch.
        let series: Vec<Segment> = (0..300u64).map(|t| seg(77 + t * 9_990, 2)).collect();
        let (got, stats) = read(&src, &series);
        assert_eq!(got, expect(&d, &series));
        assert_eq!(stats.requests, 1, "{stats:?}");
        // Two far-apart reads: two GETs, fetching about two spans' worth, not what lies between.
        let apart = [seg(100_000, 10), seg(2_900_000, 10)];
        let (got, stats) = read(&src, &apart);
        assert_eq!(got, expect(&d, &apart));
        assert_eq!(stats.requests, 2, "{stats:?}");
        assert!(stats.bytes_read < file.len() as u64 / 4, "{stats:?}");
    }

    #[test]
    fn an_underestimated_run_fetches_on_in_growing_gets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        // Data that compresses to about half first (the index learns that ratio), then noise that does not compress.
        let mut d = data(2_000_000, 8);
        let mut noise = 0x1234_5678u64;
        d.extend((0..1_000_000).map(|_| {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            noise as u8
        }));
        let obj = object(&store, "f.nii.gz", &gz(&d), true);
        let src = RemoteIndexedGzip::with_options(obj, opts(dir.path())).unwrap();
        assert_eq!(
            read(&src, &[seg(1_900_000, 10)]).0,
            &d[1_900_000..1_900_010]
        );
        let index = src.index();
        let ratio = index.last_point().map(|p| p.input as f64 / p.out as f64);
        assert!(
            !index.is_complete() && ratio.is_some_and(|r| r < 0.8),
            "{ratio:?}"
        );
        // The estimate for a run deep into the noise falls short: the reader fetches on, in a few GETs.
        let far = [seg(2_050_000, 900_000)];
        let (got, stats) = read(&src, &far);
        assert_eq!(got, expect(&d, &far));
        assert!(stats.requests > 1 && stats.requests < 16, "{stats:?}");
    }

    #[test]
    fn a_rewritten_object_does_not_use_the_old_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(600_000, 3);
        let obj = object(&store, "b.nii.gz", &gz(&d), true);
        let (_, written) = RemoteIndexedGzip::with_options(obj, opts(dir.path()))
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        assert!(written.is_some());
        let d2: Vec<u8> = d.iter().map(|b| b.wrapping_mul(3)).collect();
        let obj2 = object(&store, "b.nii.gz", &gz(&d2), true);
        let src = RemoteIndexedGzip::with_options(obj2, opts(dir.path())).unwrap();
        assert_eq!(src.index().points().len(), 0, "old index not used");
        let (got, _) = read(&src, &[seg(500_000, 100)]);
        assert_eq!(got, &d2[500_000..500_100]);
    }

    #[test]
    fn without_an_etag_the_index_stays_in_memory_and_no_data_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(600_000, 4);
        let obj = object(&store, "c.nii.gz", &gz(&d), false);
        let o = GzipOptions {
            data_cache: DataCache::Own(Arc::new(SpanCache::new(1 << 30))),
            ..opts(dir.path())
        };
        let src = RemoteIndexedGzip::with_options(obj, o).unwrap();
        let (_, written) = src.build_index(|_| {}).unwrap();
        assert_eq!(written, None);
        assert!(src.index().is_complete());
        let (got, first) = read(&src, &[seg(400_000, 50)]);
        let (_, again) = read(&src, &[seg(400_000, 50)]);
        assert_eq!(got, &d[400_000..400_050]);
        assert!(
            first.requests == 1 && again.requests == 1,
            "{first:?} {again:?}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map(|r| r.count())
                .unwrap_or(0),
            0
        );
    }

    #[test]
    fn repeated_reads_come_from_the_data_cache_without_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(800_000, 5);
        let obj = object(&store, "d.nii.gz", &gz(&d), true);
        let o = GzipOptions {
            data_cache: DataCache::Own(Arc::new(SpanCache::new(64 << 20))),
            ..opts(dir.path())
        };
        let src = RemoteIndexedGzip::with_options(obj, o).unwrap();
        let segs = [seg(10, 100), seg(700_000, 20_000)];
        assert_eq!(read(&src, &segs).0, expect(&d, &segs));
        let (got, stats) = read(&src, &segs);
        assert_eq!(got, expect(&d, &segs));
        assert_eq!((stats.requests, stats.bytes_read), (0, 0));
    }

    #[test]
    fn a_truncated_object_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let d = data(300_000, 6);
        let file = gz(&d);
        let obj = object(&store, "cut.nii.gz", &file[..file.len() / 2], true);
        let src = RemoteIndexedGzip::with_options(obj, opts(dir.path())).unwrap();
        let mut out = vec![0u8; 1000];
        let err = src
            .read_segments(&[seg(250_000, 1000)], &mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("memory://bucket/cut.nii.gz"),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Random reads, cold and warm, on one and two threads, equal the full decompression.
        #[test]
        fn remote_reads_equal_full_decompression(
            seed in proptest::prelude::any::<u64>(),
            n in 1usize..700_000,
            reads in proptest::collection::vec((0.0f64..1.0, 1u64..60_000), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(InMemory::new());
            let d = data(n, seed);
            let obj = object(&store, "p.nii.gz", &gz(&d), true);
            let total = d.len() as u64;
            let segs = crate::io::gzip::tests::disjoint_reads(&reads, total);
            let cold = RemoteIndexedGzip::with_options(obj.clone(), opts(dir.path())).unwrap();
            proptest::prop_assert_eq!(read(&cold, &segs).0, expect(&d, &segs));
            cold.build_index(|_| {}).unwrap();
            for threads in [1, 2] {
                let warm = RemoteIndexedGzip::with_options(
                    obj.clone(),
                    GzipOptions { threads, ..opts(dir.path()) },
                ).unwrap();
                proptest::prop_assert_eq!(read(&warm, &segs).0, expect(&d, &segs));
                for s in &segs {
                    let (got, stats) = read(&warm, std::slice::from_ref(s));
                    proptest::prop_assert_eq!(got, expect(&d, std::slice::from_ref(s)));
                    // One run on one thread: one GET, never a second one for bytes past the planned range.
                    proptest::prop_assert!(threads > 1 || stats.requests == 1, "{:?}", stats);
                }
            }
        }
    }
}
