//! Objects and ranged reads: one GET per coalesced run of segments, several in flight, each pinned by the ETag.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::link::Link;
use super::options::*;
use super::store::*;
use super::*;
use crate::error::{Result, VoxelError};
use crate::io::ranges::{Coalesce, merge_ranges};
use crate::io::{ByteSource, ReadStats};
use crate::location::ObjectUrl;
use crate::plan::Segment;

/// One object, as found when it was opened: reads are pinned to this version by its ETag.
#[derive(Clone)]
pub struct RemoteObject {
    pub(super) url: String,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) path: ObjectPath,
    pub(super) size: u64,
    pub(super) etag: Option<String>,
    pub(super) opts: StoreOptions,
    /// What this process has learned of the store's round trip and bandwidth (shared by its objects).
    pub(super) link: Arc<Link>,
}

impl fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteObject")
            .field("url", &self.url)
            .field("size", &self.size)
            .field("etag", &self.etag)
            .finish()
    }
}

impl RemoteObject {
    /// Open `url` with one GET of its first `prefix` bytes (returned), learning its size and ETag.
    pub fn open(url: &str, opts: &StoreOptions, prefix: u64) -> Result<(RemoteObject, Bytes)> {
        let addr = ObjectUrl::parse(url)?;
        let store = store_for(addr.url(), opts)?;
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..prefix.max(1))),
            ..Default::default()
        };
        let got = block_on(async {
            let r = store.get_opts(addr.key(), options).await?;
            let meta = r.meta.clone();
            Ok::<_, object_store::Error>((meta, r.bytes().await?))
        })?;
        let (meta, bytes) = match got {
            Ok(x) => x,
            // A zero-length object cannot serve any range: say so plainly.
            Err(e) if is_range_error(&e) => {
                return Err(VoxelError::header(url, "empty object"));
            }
            Err(e) => return Err(remote_error(url, e)),
        };
        count(1, bytes.len() as u64);
        let obj =
            RemoteObject::in_store(url, store, addr.key().clone(), meta.size, meta.e_tag, opts);
        Ok((obj, bytes))
    }

    /// An object known from an earlier open (size, ETag), without any request: for scans planned elsewhere.
    pub fn known(
        url: &str,
        opts: &StoreOptions,
        size: u64,
        etag: Option<String>,
    ) -> Result<RemoteObject> {
        let addr = ObjectUrl::parse(url)?;
        let store = store_for(addr.url(), opts)?;
        Ok(RemoteObject::in_store(
            url,
            store,
            addr.key().clone(),
            size,
            etag,
            opts,
        ))
    }

    /// The size and ETag with a HEAD request (for a pair's data object, whose first bytes are not needed).
    pub fn head(url: &str, opts: &StoreOptions) -> Result<RemoteObject> {
        let addr = ObjectUrl::parse(url)?;
        let store = store_for(addr.url(), opts)?;
        let meta = block_on(store.head(addr.key()))?.map_err(|e| remote_error(url, e))?;
        count(1, 0);
        Ok(RemoteObject::in_store(
            url,
            store,
            addr.key().clone(),
            meta.size,
            meta.e_tag,
            opts,
        ))
    }

    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }
    /// The store's link estimates (round trip, bandwidth) as learned so far.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// How reads of this object merge ranges into GETs with `concurrency` of them in flight.
    pub fn coalesce(&self, concurrency: usize) -> Result<Coalesce> {
        self.opts.coalesce(&self.link, concurrency)
    }

    pub(super) fn get_options(&self, range: Option<Range<u64>>) -> GetOptions {
        GetOptions {
            range: range.map(GetRange::Bounded),
            if_match: self.etag.clone(),
            ..Default::default()
        }
    }

    /// One GET of `range`, pinned to the ETag.
    async fn get_pinned(&self, range: Range<u64>) -> Result<object_store::GetResult> {
        self.store
            .get_opts(&self.path, self.get_options(Some(range)))
            .await
            .map_err(|e| remote_error(&self.url, e))
    }

    /// One request's bytes streamed into its part of `out` as they arrive; returns the bytes received. Its time to
    /// the first byte and its transfer rate go into the store's link estimates.
    pub(super) async fn fetch_into(&self, req: &Request, out: &mut [u8]) -> Result<u64> {
        let range = req.range.clone();
        let sent = Instant::now();
        let r = self.get_pinned(range.clone()).await?;
        let answered = Instant::now();
        let size = r.meta.size;
        let mut body = r.into_stream();
        let mut at = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| remote_error(&self.url, e))?
        {
            scatter(req, at, &chunk, out);
            at += chunk.len() as u64;
        }
        if at != range.end - range.start {
            return Err(self.short_response(&range, at, size));
        }
        self.link.observe(answered - sent, at, answered.elapsed());
        Ok(at)
    }

    /// A response with `got` bytes for `range` of an object now `size` bytes long: truncated, or cut short.
    pub(super) fn short_response(&self, range: &Range<u64>, got: u64, size: u64) -> VoxelError {
        if size < range.end {
            VoxelError::Truncated {
                path: self.url.clone(),
                expected: range.end,
                actual: size,
            }
        } else {
            VoxelError::Remote {
                url: self.url.clone(),
                msg: format!(
                    "the server sent {got} bytes for range {}..{} ({} asked); the connection may have been cut",
                    range.start,
                    range.end,
                    range.end - range.start
                ),
            }
        }
    }

    /// Bytes `range` of the object, exactly (a short answer is an error).
    pub(super) async fn get_range(&self, range: Range<u64>) -> Result<Bytes> {
        let want = range.end - range.start;
        let r = self.get_pinned(range.clone()).await?;
        let size = r.meta.size;
        let bytes = r.bytes().await.map_err(|e| remote_error(&self.url, e))?;
        if bytes.len() as u64 != want {
            return Err(self.short_response(&range, bytes.len() as u64, size));
        }
        Ok(bytes)
    }

    pub(super) fn check_within(&self, end: u64) -> Result<()> {
        if end > self.size {
            return Err(VoxelError::Truncated {
                path: self.url.clone(),
                expected: end,
                actual: self.size,
            });
        }
        Ok(())
    }
}

pub(super) fn is_range_error(e: &object_store::Error) -> bool {
    let text = e.to_string();
    text.contains("416") || text.contains("Range Not Satisfiable") || text.contains("InvalidRange")
}

/// For readers that make their own requests (the gzip index's range reader, `io::gzip::remote`).
impl RemoteObject {
    /// An object in `store`, its size and ETag already known: what `open`, `known` and `head` build, and what a
    /// caller with its own store (an in-memory store in tests) builds directly.
    pub fn in_store(
        url: &str,
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        size: u64,
        etag: Option<String>,
        opts: &StoreOptions,
    ) -> RemoteObject {
        RemoteObject {
            url: url.to_string(),
            store,
            path,
            size,
            etag,
            opts: opts.clone(),
            link: link_for(url, opts),
        }
    }

    /// Bytes `range` of the object as a stream (one GET, pinned to the ETag), to consume as it arrives.
    pub fn stream_range(
        &self,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let options = self.get_options(Some(range));
        let sent = Instant::now();
        let r = block_on(async move { store.get_opts(&path, options).await })?
            .map_err(|e| remote_error(&self.url, e))?;
        // The body is consumed elsewhere, at the decompressor's pace: only the round trip is a sample.
        self.link
            .observe(sent.elapsed(), 0, std::time::Duration::ZERO);
        Ok(r.into_stream())
    }
}

/// One GET of a read: its byte range, the part of `out` it fills, and where each needed run of its response goes
/// there (position in the response, position in its part of `out`, length).
#[derive(Debug, PartialEq)]
pub(super) struct Request {
    pub(super) range: Range<u64>,
    pub(super) out: Range<u64>,
    pub(super) copies: Vec<(u64, u64, u64)>,
}

/// Segments (sorted, non-overlapping) → GETs: runs of segments merged across gaps (smallest first) as `policy`
/// says ([`merge_ranges`]: as far as its cost model says it pays, within its gap, size and over-read bounds). So a
/// read never makes more GETs than it has segments, nor (with an over-read bound) fetches more than
/// (1 + overread) × what it needs.
pub(super) fn requests(segments: &[Segment], policy: Coalesce) -> Vec<Request> {
    let ranges: Vec<Range<u64>> = segments
        .iter()
        .map(|s| s.offset..s.offset + s.len)
        .collect();
    // Where each segment lands in `out`: segments are concatenated in the order given.
    let mut at = Vec::with_capacity(segments.len());
    let mut out_pos = 0u64;
    for s in segments {
        at.push(out_pos);
        out_pos += s.len;
    }
    merge_ranges(&ranges, policy)
        .into_iter()
        .map(|m| {
            let first = m.parts.first().map_or(0, |&i| at[i]);
            let last = m.parts.last().map_or(0, |&i| at[i] + segments[i].len);
            let copies = m
                .parts
                .iter()
                .map(|&i| {
                    (
                        segments[i].offset - m.range.start,
                        at[i] - first,
                        segments[i].len,
                    )
                })
                .collect();
            Request {
                range: m.range,
                out: first..last,
                copies,
            }
        })
        .collect()
}

/// Copy the part of a response chunk (starting at `at` in the response) that the request needs into its `out`.
pub(super) fn scatter(req: &Request, at: u64, chunk: &[u8], out: &mut [u8]) {
    let end = at + chunk.len() as u64;
    for &(pos, dst, len) in &req.copies {
        let lo = pos.max(at);
        let hi = (pos + len).min(end);
        if lo >= hi {
            continue;
        }
        let from = chunk.get((lo - at) as usize..(hi - at) as usize);
        let to = out.get_mut((dst + lo - pos) as usize..(dst + hi - pos) as usize);
        if let (Some(f), Some(t)) = (from, to) {
            t.copy_from_slice(f);
        }
    }
}

/// Split `out` into the disjoint parts the requests fill (requests are in output order).
pub(super) fn split_out<'a>(mut out: &'a mut [u8], reqs: &[Request]) -> Result<Vec<&'a mut [u8]>> {
    let mut parts = Vec::with_capacity(reqs.len());
    let mut pos = 0u64;
    for r in reqs {
        let skip = (r.out.start - pos) as usize;
        let len = (r.out.end - r.out.start) as usize;
        if out.len() < skip + len {
            return Err(VoxelError::Invalid(
                "output buffer shorter than the segments".into(),
            ));
        }
        let (_, rest) = std::mem::take(&mut out).split_at_mut(skip);
        let (mine, rest) = rest.split_at_mut(len);
        parts.push(mine);
        out = rest;
        pos = r.out.end;
    }
    Ok(parts)
}

/// Uncompressed data in an object: planned segments by concurrent ranged GETs.
#[derive(Debug)]
pub struct RemoteSource {
    pub(super) object: RemoteObject,
}

impl RemoteSource {
    pub fn new(object: RemoteObject) -> RemoteSource {
        RemoteSource { object }
    }
}

impl ByteSource for RemoteSource {
    fn location(&self) -> &str {
        &self.object.url
    }

    fn size(&self) -> Result<Option<u64>> {
        Ok(Some(self.object.size))
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        let segments: Vec<Segment> = segments.iter().copied().filter(|s| s.len > 0).collect();
        if let Some(last) = segments
            .iter()
            .map(|s| s.offset.saturating_add(s.len))
            .max()
        {
            self.object.check_within(last)?;
        }
        // The coalescing policy is the store's (its options and what its responses taught), not the planner's.
        let concurrency = self.object.opts.concurrency()?;
        let reqs = requests(&segments, self.object.coalesce(concurrency)?);
        let parts = split_out(out, &reqs)?;
        let object = &self.object;
        // The futures are made here, not in a closure inside the async block: that keeps the block `Send`.
        let fetches: Vec<_> = reqs
            .iter()
            .zip(parts)
            .map(|(r, part)| object.fetch_into(r, part))
            .collect();
        let fetched = block_on(async move {
            let mut arrivals = futures::stream::iter(fetches).buffer_unordered(concurrency);
            let mut sum = 0u64;
            while let Some(n) = arrivals.next().await {
                sum += n?;
            }
            Ok::<u64, VoxelError>(sum)
        })??;
        Ok(ReadStats {
            bytes_read: fetched,
            bytes_delivered: segments.iter().map(|s| s.len).sum(),
            segments: segments.len() as u64,
            requests: reqs.len() as u64,
        })
    }
}

/// Wait (blocking) for about `max` more bytes of a response body: its next chunks, fewer at its end, none after.
pub fn pull_chunks(
    stream: &mut BoxStream<'static, object_store::Result<Bytes>>,
    max: usize,
) -> Result<object_store::Result<Vec<Bytes>>> {
    block_on(async move {
        let mut got = Vec::new();
        let mut n = 0;
        while n < max {
            match stream.next().await {
                Some(Ok(b)) => {
                    n += b.len();
                    got.push(b);
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(got)
    })
}
