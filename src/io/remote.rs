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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
};
use url::Url;

use super::{ByteSource, ReadStats};
use crate::error::{Result, VoxelError};
use crate::formats::{self, Compression, ImageHeader};
use crate::location::{Location, ObjectUrl, store_root};
use crate::plan::{Segment, merge_segments};

/// Bytes of the first GET of an image whose name does not tell its format: the largest fixed-size header
/// (NIfTI-2's 540 bytes and its extension flag).
pub const HEADER_PREFIX: u64 = 544;
/// Default largest gap between two needed byte ranges read through rather than requested separately.
pub const DEFAULT_GAP: u64 = 1 << 20;
/// Default bound on bytes read through gaps, as a fraction of the bytes a read needs.
pub const DEFAULT_OVERREAD: f64 = 0.25;
/// Default GET requests in flight per read.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Per-table object-store settings: `aws.*`, `gcp.*`, `azure.*` keys as `datafusion-cli` takes them (passed to the
/// store builders after the environment), and this crate's own `remote.gap`, `remote.concurrency`,
/// `remote.retries`, `remote.timeout` (seconds).
/// `Debug` hides secret values ([`super::redact`]).
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StoreOptions {
    pub entries: BTreeMap<String, String>,
}

const STORE_PREFIXES: &[&str] = &["aws.", "gcp.", "google.", "azure.", "http.", "remote."];
const REMOTE_KEYS: &[&str] = &["gap", "overread", "concurrency", "retries", "timeout"];

impl StoreOptions {
    /// Whether `key` (lower case) belongs to the store options rather than to the table's own options.
    pub fn is_store_key(key: &str) -> bool {
        STORE_PREFIXES.iter().any(|p| key.starts_with(p))
    }

    /// Add one option, checking the key now so that a typo fails at registration, not at the first read.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.to_ascii_lowercase();
        check_key(&key, value)?;
        self.entries.insert(key, value.to_string());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn number(&self, key: &str, default: u64) -> Result<u64> {
        match self.entries.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                VoxelError::Invalid(format!("option '{key}': '{v}' is not a whole number"))
            }),
        }
    }

    /// Most bytes read through, as a fraction of the bytes needed (option `remote.overread`, default 0.25).
    pub fn overread(&self) -> Result<f64> {
        match self.entries.get("remote.overread") {
            None => Ok(DEFAULT_OVERREAD),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| *x >= 0.0)
                .ok_or_else(|| {
                    VoxelError::Invalid(format!(
                        "option 'remote.overread': '{v}' is not a fraction ≥ 0"
                    ))
                }),
        }
    }

    /// Largest gap read through between two needed ranges (option `remote.gap`, env `VOXELSCAN_REMOTE_GAP`).
    pub fn gap(&self) -> Result<u64> {
        let default = env_number("VOXELSCAN_REMOTE_GAP").unwrap_or(DEFAULT_GAP);
        self.number("remote.gap", default)
    }

    /// GETs in flight per read (option `remote.concurrency`, env `VOXELSCAN_REMOTE_CONCURRENCY`).
    pub fn concurrency(&self) -> Result<usize> {
        let default =
            env_number("VOXELSCAN_REMOTE_CONCURRENCY").unwrap_or(DEFAULT_CONCURRENCY as u64);
        Ok(self.number("remote.concurrency", default)?.clamp(1, 256) as usize)
    }

    fn retry(&self) -> Result<RetryConfig> {
        let retries = self.number(
            "remote.retries",
            env_number("VOXELSCAN_REMOTE_RETRIES").unwrap_or(4),
        )?;
        Ok(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: retries as usize,
            retry_timeout: Duration::from_secs(60),
        })
    }

    fn client(&self, allow_http: bool) -> Result<ClientOptions> {
        let timeout = self.number("remote.timeout", 120)?;
        Ok(ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(timeout.max(1))))
    }

    /// Options for one builder: the keys under `prefix`, with the prefix removed.
    fn under<'a>(&'a self, prefixes: &'a [&str]) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.entries.iter().filter_map(move |(k, v)| {
            prefixes
                .iter()
                .find_map(|p| k.strip_prefix(p))
                .map(|rest| (rest, v.as_str()))
        })
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn check_key(key: &str, value: &str) -> Result<()> {
    let bad = |what: &str| VoxelError::Invalid(format!("unknown option '{key}'{what}"));
    if let Some(rest) = key.strip_prefix("remote.") {
        if !REMOTE_KEYS.contains(&rest) {
            return Err(bad(&format!(
                " (remote options: {})",
                REMOTE_KEYS.join(", ")
            )));
        }
        let ok = if rest == "overread" {
            value.trim().parse::<f64>().is_ok_and(|x| x >= 0.0)
        } else {
            value.trim().parse::<u64>().is_ok()
        };
        if !ok {
            return Err(VoxelError::Invalid(format!(
                "option '{key}': '{value}' is not a whole number"
            )));
        }
        return Ok(());
    }
    let known = if let Some(rest) = key.strip_prefix("aws.") {
        aws_key(rest).is_some()
    } else if let Some(rest) = key
        .strip_prefix("gcp.")
        .or_else(|| key.strip_prefix("google."))
    {
        gcp_key(rest).is_some()
    } else if let Some(rest) = key.strip_prefix("azure.") {
        azure_key(rest).is_some()
    } else if let Some(rest) = key.strip_prefix("http.") {
        client_key(rest).is_some()
    } else {
        false
    };
    if known { Ok(()) } else { Err(bad("")) }
}

fn aws_key(rest: &str) -> Option<object_store::aws::AmazonS3ConfigKey> {
    rest.parse()
        .ok()
        .or_else(|| format!("aws_{rest}").parse().ok())
}

fn gcp_key(rest: &str) -> Option<object_store::gcp::GoogleConfigKey> {
    rest.parse()
        .ok()
        .or_else(|| format!("google_{rest}").parse().ok())
}

fn azure_key(rest: &str) -> Option<object_store::azure::AzureConfigKey> {
    rest.parse()
        .ok()
        .or_else(|| format!("azure_{rest}").parse().ok())
        .or_else(|| format!("azure_storage_{rest}").parse().ok())
}

fn client_key(rest: &str) -> Option<object_store::ClientConfigKey> {
    rest.parse().ok()
}

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

// ---------------------------------------------------------------------------------------------------------------
// Stores.

/// The store for a URL's bucket or host, as the scan builds it (environment + `opts`), for other users of
/// `object_store` such as DataFusion's registry.
pub fn store_for_url(url: &Url, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(VoxelError::Invalid(format!(
            "'{url}': the URL names no bucket or host"
        )));
    }
    store_for(url, opts)
}

/// The store serving `url` with `opts` (built once per root URL and option set, then shared).
fn store_for(url: &Url, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    type Cache = Mutex<HashMap<(String, StoreOptions), Arc<dyn ObjectStore>>>;
    static STORES: OnceLock<Cache> = OnceLock::new();
    let key = (store_root(url), opts.clone());
    let cache = STORES.get_or_init(Cache::default);
    if let Some(s) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(s);
    }
    let store = build_store(url, opts)?;
    if let Ok(mut c) = cache.lock() {
        c.insert(key, Arc::clone(&store));
    }
    Ok(store)
}

fn build_store(url: &Url, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    let root = store_root(url);
    let fail = |e: object_store::Error| VoxelError::Remote {
        url: url.to_string(),
        msg: format!("cannot configure the store: {e}"),
    };
    let retry = opts.retry()?;
    Ok(match url.scheme() {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};
            let mut b = AmazonS3Builder::from_env()
                .with_url(format!("s3://{}", url.host_str().unwrap_or_default()))
                .with_retry(retry);
            for (k, v) in opts.under(&["aws."]) {
                if let Some(key) = aws_key(k) {
                    b = b.with_config(key, v);
                }
            }
            if b.get_config_value(&K::Region).is_none() {
                b = b.with_region("us-east-1");
            }
            // No credentials anywhere: a public bucket, read unsigned (as `aws s3 --no-sign-request`).
            if b.get_config_value(&K::AccessKeyId).is_none()
                && b.get_config_value(&K::WebIdentityTokenFile).is_none()
                && b.get_config_value(&K::ContainerCredentialsRelativeUri)
                    .is_none()
                && b.get_config_value(&K::ContainerCredentialsFullUri)
                    .is_none()
            {
                b = b.with_skip_signature(true);
            }
            let http = b
                .get_config_value(&K::Endpoint)
                .is_some_and(|e| e.starts_with("http://"));
            // An endpoint named `http://…` means plain HTTP, unless the user said otherwise explicitly.
            let said = opts.entries.contains_key("aws.allow_http")
                || std::env::var_os("AWS_ALLOW_HTTP").is_some();
            if http && !said {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(fail)?)
        }
        "gs" | "gcs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey as K};
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(format!("gs://{}", url.host_str().unwrap_or_default()))
                .with_retry(retry);
            for (k, v) in opts.under(&["gcp.", "google."]) {
                if let Some(key) = gcp_key(k) {
                    b = b.with_config(key, v);
                }
            }
            if b.get_config_value(&K::ServiceAccount).is_none()
                && b.get_config_value(&K::ServiceAccountKey).is_none()
                && b.get_config_value(&K::ApplicationCredentials).is_none()
            {
                b = b.with_skip_signature(true);
            }
            Arc::new(b.build().map_err(fail)?)
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            use object_store::azure::MicrosoftAzureBuilder;
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry);
            for (k, v) in opts.under(&["azure."]) {
                if let Some(key) = azure_key(k) {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build().map_err(fail)?)
        }
        "http" | "https" => {
            let mut client = opts.client(url.scheme() == "http")?;
            for (k, v) in opts.under(&["http."]) {
                if let Some(key) = client_key(k) {
                    client = client.with_config(key, v);
                }
            }
            let b = object_store::http::HttpBuilder::new()
                .with_url(root)
                .with_client_options(client)
                .with_retry(retry);
            Arc::new(b.build().map_err(fail)?)
        }
        other => {
            return Err(VoxelError::Invalid(format!(
                "'{url}': unsupported URL scheme '{other}'"
            )));
        }
    })
}

pub(crate) fn remote_error(url: &str, e: object_store::Error) -> VoxelError {
    let msg = match &e {
        object_store::Error::NotFound { .. } => "object not found".to_string(),
        object_store::Error::PermissionDenied { .. } => format!("access denied: {e}"),
        object_store::Error::Unauthenticated { .. } => format!("not authenticated: {e}"),
        object_store::Error::Precondition { .. } => {
            "the object changed since it was opened (its ETag differs); open or register it again"
                .to_string()
        }
        _ => e.to_string(),
    };
    VoxelError::Remote {
        url: url.to_string(),
        msg,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Objects.

/// One object, as found when it was opened: reads are pinned to this version by its ETag.
#[derive(Clone)]
pub struct RemoteObject {
    url: String,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
    etag: Option<String>,
    opts: StoreOptions,
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
        let obj = RemoteObject {
            url: url.to_string(),
            store,
            path: addr.key().clone(),
            size: meta.size,
            etag: meta.e_tag,
            opts: opts.clone(),
        };
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
        Ok(RemoteObject {
            url: url.to_string(),
            store: store_for(addr.url(), opts)?,
            path: addr.key().clone(),
            size,
            etag,
            opts: opts.clone(),
        })
    }

    /// The size and ETag with a HEAD request (for a pair's data object, whose first bytes are not needed).
    pub fn head(url: &str, opts: &StoreOptions) -> Result<RemoteObject> {
        let addr = ObjectUrl::parse(url)?;
        let store = store_for(addr.url(), opts)?;
        let meta = block_on(store.head(addr.key()))?.map_err(|e| remote_error(url, e))?;
        count(1, 0);
        Ok(RemoteObject {
            url: url.to_string(),
            store,
            path: addr.key().clone(),
            size: meta.size,
            etag: meta.e_tag,
            opts: opts.clone(),
        })
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

    fn get_options(&self, range: Option<Range<u64>>) -> GetOptions {
        GetOptions {
            range: range.map(GetRange::Bounded),
            if_match: self.etag.clone(),
            ..Default::default()
        }
    }

    /// One request's bytes streamed into its part of `out` as they arrive; returns the bytes received.
    async fn fetch_into(&self, req: &Request, out: &mut [u8]) -> Result<u64> {
        let range = req.range.clone();
        let r = self
            .store
            .get_opts(&self.path, self.get_options(Some(range.clone())))
            .await
            .map_err(|e| remote_error(&self.url, e))?;
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
        Ok(at)
    }

    /// A response with `got` bytes for `range` of an object now `size` bytes long: truncated, or cut short.
    fn short_response(&self, range: &Range<u64>, got: u64, size: u64) -> VoxelError {
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
    async fn get_range(&self, range: Range<u64>) -> Result<Bytes> {
        let want = range.end - range.start;
        let r = self
            .store
            .get_opts(&self.path, self.get_options(Some(range.clone())))
            .await
            .map_err(|e| remote_error(&self.url, e))?;
        let size = r.meta.size;
        let bytes = r.bytes().await.map_err(|e| remote_error(&self.url, e))?;
        if bytes.len() as u64 != want {
            return Err(self.short_response(&range, bytes.len() as u64, size));
        }
        Ok(bytes)
    }

    fn check_within(&self, end: u64) -> Result<()> {
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

fn is_range_error(e: &object_store::Error) -> bool {
    let text = e.to_string();
    text.contains("416") || text.contains("Range Not Satisfiable") || text.contains("InvalidRange")
}

/// For readers that make their own requests (the gzip index's range reader, `io::gzip::remote`).
impl RemoteObject {
    /// An object in a store the caller built (an in-memory store in tests), its size and ETag already known.
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
        let r = block_on(async move { store.get_opts(&path, options).await })?
            .map_err(|e| remote_error(&self.url, e))?;
        Ok(r.into_stream())
    }
}

/// One GET of a read: its byte range, the part of `out` it fills, and where each needed run of its response goes
/// there (position in the response, position in its part of `out`, length).
#[derive(Debug, PartialEq)]
struct Request {
    range: Range<u64>,
    out: Range<u64>,
    copies: Vec<(u64, u64, u64)>,
}

/// Segments (sorted, non-overlapping) → GETs: runs of segments merged across gaps of at most `max_gap`, smallest
/// gaps first, while the bytes read through stay within `overread` × the bytes needed. So a read never makes more
/// GETs than it has segments, nor fetches more than (1 + overread) × what it needs.
fn requests(segments: &[Segment], max_gap: u64, overread: f64) -> Vec<Request> {
    let needed: u64 = segments.iter().map(|s| s.len).sum();
    let budget = (needed as f64 * overread.max(0.0)) as u64;
    let mut gaps: Vec<(u64, usize)> = segments
        .windows(2)
        .enumerate()
        .filter_map(|(k, w)| {
            let gap = w[1].offset.checked_sub(w[0].offset + w[0].len)?;
            (gap <= max_gap).then_some((gap, k))
        })
        .collect();
    gaps.sort_unstable();
    let mut joined = vec![false; segments.len()];
    let mut spent = 0u64;
    for (gap, k) in gaps {
        if spent + gap > budget {
            break;
        }
        spent += gap;
        joined[k] = true;
    }
    let mut reqs = Vec::new();
    let mut out_pos = 0u64;
    let mut start = 0;
    while start < segments.len() {
        let mut end = start + 1;
        while end < segments.len() && joined[end - 1] {
            end += 1;
        }
        let run = &segments[start..end];
        start = end;
        let Some(merged) = merge_segments(run, u64::MAX).into_iter().next() else {
            continue;
        };
        let (merged, parts) = merged;
        let first = out_pos;
        let copies = parts
            .into_iter()
            .map(|(pos, len)| {
                let c = (pos, out_pos - first, len);
                out_pos += len;
                c
            })
            .collect();
        reqs.push(Request {
            range: merged.offset..merged.offset + merged.len,
            out: first..out_pos,
            copies,
        });
    }
    reqs
}

/// Copy the part of a response chunk (starting at `at` in the response) that the request needs into its `out`.
fn scatter(req: &Request, at: u64, chunk: &[u8], out: &mut [u8]) {
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
fn split_out<'a>(mut out: &'a mut [u8], reqs: &[Request]) -> Result<Vec<&'a mut [u8]>> {
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
    object: RemoteObject,
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
        let opts = &self.object.opts;
        let reqs = requests(&segments, opts.gap()?, opts.overread()?);
        let concurrency = opts.concurrency()?;
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

// ---------------------------------------------------------------------------------------------------------------
// Headers and listings.

/// An image in object storage: its parsed header and the object holding its data.
#[derive(Debug, Clone)]
pub struct RemoteImage {
    pub header: ImageHeader,
    pub data: RemoteObject,
}

/// The first GET's length: just the header the name promises, so that a small query fetches little more than
/// it needs (NIfTI-1/Analyze 348 bytes + the extension flag, MGH 284, npy's usual 128; gzip: a few KiB that
/// decompress to more than any header). A longer header costs one more GET.
fn header_prefix(url: &str) -> u64 {
    use formats::detect::{NameKind, name_kind};
    let path = Path::new(url);
    if formats::detect::compression_by_name(path) == Compression::Gzip {
        return 4096;
    }
    match name_kind(path) {
        NameKind::Nii | NameKind::Hdr | NameKind::Img => 352,
        NameKind::Mgh => 284,
        NameKind::Npy => 128,
        _ => HEADER_PREFIX,
    }
}

/// Most compressed bytes fetched to find a gzip-compressed header.
const MAX_GZIP_HEADER_FETCH: u64 = 64 << 20;
/// Most bytes a NIfTI-1/2 header may take with its extensions (up to `vox_offset`; a pair's to the end of the
/// `.hdr`), in decompressed bytes.
pub const MAX_NIFTI_HEADER: u64 = 64 << 20;
/// Most bytes an npy header may take: magic, version, a 4-byte length field and numpy's 10,000-byte limit.
pub const MAX_NPY_HEADER: u64 = 12 + formats::npy::MAX_HEADER_LEN as u64;
/// Most bytes decompressed from a gzip object while reading its header (a 4-D MGH's footer after its data, the
/// length check of a whole small object): never more than the header claims, and never more than this.
pub const MAX_HEADER_INFLATE: u64 = 256 << 20;
/// Decompressed bytes looked at first in a gzip object (more only when the header asks).
const FIRST_LOOK: u64 = 1024;

/// The format of a header as its first bytes tell it, for the cap on the bytes it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderKind {
    Nifti1,
    Nifti2,
    Mgh,
    Npy,
    Analyze,
    Unknown,
}

impl HeaderKind {
    /// The kind the first bytes show; `Unknown` (capped at [`HEADER_PREFIX`], enough to tell) while too few
    /// bytes are there to tell a NIfTI-1 from an Analyze header.
    fn of(head: &[u8]) -> HeaderKind {
        let at = |r: Range<usize>| head.get(r).unwrap_or_default();
        let sizeof_hdr = |n: i32| at(0..4) == n.to_le_bytes() || at(0..4) == n.to_be_bytes();
        if head.starts_with(formats::npy::MAGIC) {
            HeaderKind::Npy
        } else if at(344..348) == b"n+1\0" || at(344..348) == b"ni1\0" {
            HeaderKind::Nifti1
        } else if at(4..8) == b"n+2\0" || at(4..8) == b"ni2\0" || sizeof_hdr(540) {
            HeaderKind::Nifti2
        } else if at(0..4) == 1i32.to_be_bytes() {
            HeaderKind::Mgh
        } else if sizeof_hdr(348) && head.len() >= 348 {
            HeaderKind::Analyze
        } else {
            HeaderKind::Unknown
        }
    }

    /// Most (decompressed) bytes from the start of the file the header may need. An MGH's 4-D footer lies after
    /// its data and is fetched on its own, outside this cap.
    fn cap(self) -> u64 {
        match self {
            HeaderKind::Nifti1 | HeaderKind::Nifti2 => MAX_NIFTI_HEADER,
            HeaderKind::Mgh => formats::mgh::DATA_OFFSET,
            HeaderKind::Npy => MAX_NPY_HEADER,
            HeaderKind::Analyze => formats::nifti1::HEADER_SIZE as u64,
            HeaderKind::Unknown => HEADER_PREFIX,
        }
    }

    fn name(self) -> &'static str {
        match self {
            HeaderKind::Nifti1 => "NIfTI-1",
            HeaderKind::Nifti2 => "NIfTI-2",
            HeaderKind::Mgh => "MGH",
            HeaderKind::Npy => "npy",
            HeaderKind::Analyze => "Analyze",
            HeaderKind::Unknown => "unrecognised",
        }
    }
}

/// Where a single-file NIfTI's extensions end (its `vox_offset`), so that all of them come in one request.
fn nifti_extensions_end(head: &[u8], kind: HeaderKind) -> Option<u64> {
    let field = |r: Range<usize>| head.get(r);
    match kind {
        HeaderKind::Nifti1 if field(344..348)? == b"n+1\0" => {
            let raw: [u8; 4] = field(108..112)?.try_into().ok()?;
            let little = field(0..4)? == 348i32.to_le_bytes();
            let v = if little {
                f32::from_le_bytes(raw)
            } else {
                f32::from_be_bytes(raw)
            };
            (v.is_finite() && v >= 0.0).then_some(v as u64)
        }
        HeaderKind::Nifti2 if field(4..8)? == b"n+2\0" => {
            let raw: [u8; 8] = field(168..176)?.try_into().ok()?;
            let little = field(0..4)? == 540i32.to_le_bytes();
            let v = if little {
                i64::from_le_bytes(raw)
            } else {
                i64::from_be_bytes(raw)
            };
            u64::try_from(v).ok()
        }
        _ => None,
    }
}

/// Read an image's header from object storage: one ranged GET of the first bytes its name suggests, then only
/// what the header says is missing (the rest of its extensions in one GET, a 4-D MGH's footer), never more than
/// its format's cap; a pair's data object is checked with a HEAD request.
pub fn open_image(url: &str, opts: &StoreOptions) -> Result<RemoteImage> {
    let hint = Location::Object(ObjectUrl::parse(url)?);
    let header_url = formats::detect::header_path_for(&hint.name())
        .to_string_lossy()
        .into_owned();
    let (object, first) = RemoteObject::open(&header_url, opts, header_prefix(&header_url))?;
    let header = HeaderFetch::new(&object, first.to_vec()).parse(&hint)?;
    let data = if header.format.is_pair() {
        RemoteObject::head(&header.data_file.display(), opts)?
    } else {
        object
    };
    if header.compression == Compression::None {
        data.check_within(header.layout.end())?;
    }
    Ok(RemoteImage { header, data })
}

/// The bytes of a header object fetched so far: `raw` from byte 0 as stored (gzip or not), and a stretch further
/// on for an MGH footer (stored bytes for a plain object; for gzip, the decompressed range to keep).
struct HeaderFetch<'a> {
    object: &'a RemoteObject,
    /// Requests made after the first.
    requests: u64,
    raw: Vec<u8>,
    gz: bool,
    plain_tail: Option<(u64, Vec<u8>)>,
    gz_tail: Option<Range<u64>>,
}

/// What the parser is given: the start of the content, a stretch further on, the content's length if known.
struct View {
    head: Vec<u8>,
    tail: Option<(u64, Vec<u8>)>,
    len: Option<u64>,
}

impl<'a> HeaderFetch<'a> {
    fn new(object: &'a RemoteObject, raw: Vec<u8>) -> HeaderFetch<'a> {
        let gz = raw.starts_with(&[0x1f, 0x8b]);
        HeaderFetch {
            object,
            requests: 0,
            raw,
            gz,
            plain_tail: None,
            gz_tail: None,
        }
    }

    fn url(&self) -> &str {
        self.object.url()
    }

    fn get(&mut self, range: Range<u64>) -> Result<Bytes> {
        self.requests += 1;
        self.object.get_range_blocking(range)
    }

    fn whole(&self) -> bool {
        self.raw.len() as u64 >= self.object.size
    }

    /// Parse, fetching what the parser asks for until it has enough, within the format's cap.
    fn parse(&mut self, hint: &Location) -> Result<ImageHeader> {
        let header_path = formats::detect::header_path_for(&hint.name());
        let compression = formats::container(&self.raw, &header_path)?;
        let mut want = 0u64;
        loop {
            let view = self.view(want)?;
            let kind = HeaderKind::of(&view.head);
            let tail = view.tail.as_ref().map(|(at, b)| (*at, b.as_slice()));
            let expected =
                match formats::parse_header_parts(&view.head, tail, view.len, hint, compression) {
                    Ok(header) => {
                        self.check_gz_length(&header)?;
                        return Ok(header);
                    }
                    Err(VoxelError::Truncated { expected, .. })
                        if view.len.is_none_or(|n| expected <= n) =>
                    {
                        expected
                    }
                    Err(e) => return Err(e),
                };
            let before = (want, self.raw.len(), self.has_tail());
            if kind == HeaderKind::Mgh && expected > kind.cap() && !self.has_tail() {
                self.fetch_footer(expected)?;
            } else if expected > kind.cap() {
                return Err(VoxelError::header(
                    self.url(),
                    format!(
                        "the {} header asks for {expected} bytes, more than the {}-byte limit for its format",
                        kind.name(),
                        kind.cap()
                    ),
                ));
            } else {
                want = expected.max(self.extensions_end(&view.head, kind, expected));
                if !self.gz {
                    self.fetch_plain(want)?;
                }
            }
            if before == (want, self.raw.len(), self.has_tail()) {
                return Err(VoxelError::header(
                    self.url(),
                    format!("the header asks for byte {expected} again after it was fetched"),
                ));
            }
        }
    }

    /// How far to fetch when a NIfTI header asks for `expected` bytes: to its `vox_offset` when that lies further,
    /// else (a pair's extensions, or a `vox_offset` inside the header) to the end of the object, so that every
    /// extension comes at once; within the cap.
    fn extensions_end(&self, head: &[u8], kind: HeaderKind, expected: u64) -> u64 {
        if !matches!(kind, HeaderKind::Nifti1 | HeaderKind::Nifti2) {
            return expected;
        }
        let to_end = if self.gz {
            kind.cap()
        } else {
            self.object.size
        };
        nifti_extensions_end(head, kind)
            .filter(|&v| v >= expected)
            .unwrap_or(to_end)
            .min(kind.cap())
    }

    fn has_tail(&self) -> bool {
        self.plain_tail.is_some() || self.gz_tail.is_some()
    }

    /// The content the parser sees when it has asked for `want` bytes from the start.
    fn view(&mut self, want: u64) -> Result<View> {
        if !self.gz {
            return Ok(View {
                head: self.raw.clone(),
                tail: self.plain_tail.clone(),
                len: Some(self.object.size),
            });
        }
        let keep = want.clamp(FIRST_LOOK, MAX_NIFTI_HEADER);
        loop {
            let stop = self.gz_tail.as_ref().map_or(keep, |t| t.end.max(keep));
            let inflated = inflate(&self.raw, keep, self.gz_tail.clone(), stop, self.url())?;
            let whole = self.whole();
            if inflated.out >= stop || whole {
                // A whole object that ends (or is cut) before `stop` has just the bytes it gave.
                let len = (whole && inflated.out < stop).then_some(inflated.out);
                let tail = self.gz_tail.as_ref().map(|t| (t.start, inflated.tail));
                return Ok(View {
                    head: inflated.head,
                    tail,
                    len,
                });
            }
            self.fetch_more_gz()?;
        }
    }

    /// Append the stored bytes up to `want` (one ranged GET of exactly what is missing).
    fn fetch_plain(&mut self, want: u64) -> Result<()> {
        let have = self.raw.len() as u64;
        let end = want.min(self.object.size);
        if end > have {
            let more = self.get(have..end)?;
            self.raw.extend_from_slice(&more);
        }
        Ok(())
    }

    /// Append more compressed bytes (the prefix grows fourfold), at most [`MAX_GZIP_HEADER_FETCH`] in all.
    fn fetch_more_gz(&mut self) -> Result<()> {
        let have = self.raw.len() as u64;
        if have >= MAX_GZIP_HEADER_FETCH {
            return Err(VoxelError::header(
                self.url(),
                "header not found in the first 64 MiB",
            ));
        }
        let end = (have.max(1) * 4)
            .min(MAX_GZIP_HEADER_FETCH)
            .min(self.object.size);
        let more = self.get(have..end)?;
        self.raw.extend_from_slice(&more);
        Ok(())
    }

    /// A 4-D MGH's footer, asked for as the bytes ending at `expected`: one ranged GET of it from a plain object;
    /// from a gzip object, the rest of the object in one GET (at most [`MAX_GZIP_HEADER_FETCH`] in all),
    /// decompressed up to the footer's end (within [`MAX_HEADER_INFLATE`]) keeping only the footer.
    fn fetch_footer(&mut self, expected: u64) -> Result<()> {
        let at = expected.saturating_sub(formats::mgh::FOOTER_SIZE as u64);
        if !self.gz {
            let end = expected.min(self.object.size);
            let bytes = if at < end {
                self.get(at..end)?.to_vec()
            } else {
                Vec::new()
            };
            self.plain_tail = Some((at, bytes));
            return Ok(());
        }
        if expected > MAX_HEADER_INFLATE {
            return Err(VoxelError::header(
                self.url(),
                format!(
                    "the MGH footer lies {expected} decompressed bytes in, past the {MAX_HEADER_INFLATE}-byte limit for reading a header from a compressed object"
                ),
            ));
        }
        let (have, size) = (self.raw.len() as u64, self.object.size);
        if size > MAX_GZIP_HEADER_FETCH {
            return Err(VoxelError::header(
                self.url(),
                "a compressed 4-D MGH's footer can be read only from an object of at most 64 MiB",
            ));
        }
        if have < size {
            let rest = self.get(have..size)?;
            self.raw.extend_from_slice(&rest);
        }
        self.gz_tail = Some(at..expected);
        Ok(())
    }

    /// A whole small gzip object fetched for its header: its content must hold the data the header claims
    /// (checked by decompressing up to that claim, at most [`MAX_HEADER_INFLATE`] bytes, keeping none).
    fn check_gz_length(&self, header: &ImageHeader) -> Result<()> {
        if !self.gz || !self.whole() || header.format.is_pair() {
            return Ok(());
        }
        let claimed = header.layout.end();
        let stop = claimed.min(MAX_HEADER_INFLATE);
        let inflated = inflate(&self.raw, 0, None, stop, self.url())?;
        if inflated.out < stop {
            return Err(VoxelError::Truncated {
                path: self.url().to_string(),
                expected: claimed,
                actual: inflated.out,
            });
        }
        Ok(())
    }
}

/// What decompressing a gzip prefix gave: its first bytes, a kept stretch, and how many bytes came out.
#[derive(Default)]
struct Inflated {
    head: Vec<u8>,
    tail: Vec<u8>,
    out: u64,
}

/// Decompress the gzip bytes `raw` (all members) until `stop` bytes came out or the input ends (a cut stream
/// just ends), keeping the first `keep` bytes and the stretch `tail`. `stop` is the bound: a stream that would
/// expand further (a gzip bomb) is never decompressed past it, and nothing between the kept parts is stored.
fn inflate(
    raw: &[u8],
    keep: u64,
    tail: Option<Range<u64>>,
    stop: u64,
    url: &str,
) -> Result<Inflated> {
    use std::io::Read;
    let mut dec = flate2::bufread::MultiGzDecoder::new(raw);
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = Inflated::default();
    while r.out < stop {
        let room = usize::try_from(stop - r.out).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match dec.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                return Err(VoxelError::header(url, format!("corrupt gzip stream: {e}")));
            }
        };
        let (start, end) = (r.out, r.out + n as u64);
        if start < keep {
            r.head
                .extend_from_slice(&buf[..(keep.min(end) - start) as usize]);
        }
        if let Some(t) = &tail {
            let (lo, hi) = (t.start.max(start), t.end.min(end));
            if lo < hi {
                r.tail
                    .extend_from_slice(&buf[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        r.out = end;
    }
    Ok(r)
}

/// A headerless raw array in object storage, described by a spec (no header request; a HEAD for size and ETag).
pub fn open_raw(url: &str, spec: &str, opts: &StoreOptions) -> Result<RemoteImage> {
    let object = Location::Object(ObjectUrl::parse(url)?);
    let header = formats::ImageHeader {
        header_file: object.clone(),
        data_file: object,
        ..formats::raw::parse_spec(spec, Path::new(url))?
    };
    let data = RemoteObject::head(url, opts)?;
    if header.compression == Compression::None {
        data.check_within(header.layout.end())?;
    }
    Ok(RemoteImage { header, data })
}

impl RemoteObject {
    /// A ranged GET outside data reads (a longer header prefix), counted in the process totals.
    fn get_range_blocking(&self, range: Range<u64>) -> Result<Bytes> {
        let bytes = block_on(self.get_range(range))??;
        count(1, bytes.len() as u64);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn requests_coalesce_small_gaps_only() {
        let segs = [seg(0, 10), seg(15, 5), seg(100, 10)];
        let r = requests(&segs, 8, 1.0);
        assert_eq!(
            r,
            vec![
                Request {
                    range: 0..20,
                    out: 0..15,
                    copies: vec![(0, 0, 10), (15, 10, 5)]
                },
                Request {
                    range: 100..110,
                    out: 15..25,
                    copies: vec![(0, 0, 10)]
                },
            ]
        );
        assert_eq!(requests(&segs, 0, 1.0).len(), 3);
        assert_eq!(requests(&segs, 1000, 100.0).len(), 1);
        // The overread budget (25 needed bytes × 0.25 = 6) allows the 5-byte gap, not the 80-byte one.
        assert_eq!(requests(&segs, 1000, 0.25).len(), 2);
        assert_eq!(requests(&segs, 1000, 0.0).len(), 3);
    }

    #[test]
    fn overread_stays_within_budget_and_requests_within_segments() {
        let segs: Vec<Segment> = (0..50u64)
            .map(|k| seg(k * 37 + (k % 7) * 11, 5 + k % 4))
            .collect();
        let needed: u64 = segs.iter().map(|s| s.len).sum();
        for ratio in [0.0, 0.1, 0.25, 1.0, 10.0] {
            let r = requests(&segs, 1 << 20, ratio);
            let fetched: u64 = r.iter().map(|q| q.range.end - q.range.start).sum();
            assert!(
                fetched as f64 <= needed as f64 * (1.0 + ratio),
                "ratio {ratio}"
            );
            assert!(r.len() <= segs.len());
        }
    }

    #[test]
    fn responses_in_any_chunking_rebuild_the_segments() {
        // Object bytes are their offsets mod 251; any chunking of any response must rebuild the segments.
        let segs = [seg(3, 7), seg(12, 1), seg(40, 30), seg(200, 64)];
        let want: Vec<u8> = segs
            .iter()
            .flat_map(|s| (s.offset..s.offset + s.len).map(|b| (b % 251) as u8))
            .collect();
        for (gap, chunk) in [(0, 1), (4, 3), (50, 16), (1000, 1000)] {
            let reqs = requests(&segs, gap, 100.0);
            let mut out = vec![0u8; want.len()];
            let parts = split_out(&mut out, &reqs).unwrap();
            for (q, part) in reqs.iter().zip(parts) {
                let body: Vec<u8> = q.range.clone().map(|b| (b % 251) as u8).collect();
                for (k, c) in body.chunks(chunk).enumerate() {
                    scatter(q, (k * chunk) as u64, c, part);
                }
            }
            assert_eq!(out, want, "gap {gap} chunk {chunk}");
        }
    }

    #[test]
    fn store_options_check_keys_and_numbers() {
        let mut o = StoreOptions::default();
        o.insert("aws.endpoint", "http://127.0.0.1:3900").unwrap();
        o.insert("AWS.ACCESS_KEY_ID", "k").unwrap();
        o.insert("aws.allow_http", "true").unwrap();
        o.insert("remote.gap", "4096").unwrap();
        assert_eq!(o.gap().unwrap(), 4096);
        assert!(o.insert("aws.endpont", "x").is_err());
        assert!(o.insert("remote.gap", "big").is_err());
        assert!(o.insert("remote.speed", "1").is_err());
        assert!(StoreOptions::is_store_key("gcp.service_account_path"));
        assert!(!StoreOptions::is_store_key("scaling"));
    }

    mod headers {
        use super::super::*;
        use crate::dtype::ByteOrder;
        use crate::formats::test_util::{HeaderBuilder, mgh_file};
        use object_store::PutPayload;
        use object_store::memory::InMemory;
        use std::io::Write;

        fn gz(members: &[&[u8]]) -> Vec<u8> {
            let mut out = Vec::new();
            for m in members {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                e.write_all(m).unwrap();
                out.extend(e.finish().unwrap());
            }
            out
        }

        fn object(name: &str, bytes: &[u8]) -> RemoteObject {
            let store = Arc::new(InMemory::new());
            let path = ObjectPath::from(name);
            block_on(store.put(&path, PutPayload::from(bytes.to_vec())))
                .unwrap()
                .unwrap();
            RemoteObject::in_store(
                &format!("memory://bucket/{name}"),
                store,
                path,
                bytes.len() as u64,
                None,
                &StoreOptions::default(),
            )
        }

        /// The header of `bytes` stored as `name`, and the requests made after the first; `first` is the first
        /// GET's length (`None`: what the name suggests).
        fn open(name: &str, bytes: &[u8], first: Option<u64>) -> (Result<ImageHeader>, u64) {
            let obj = object(name, bytes);
            let n = first.unwrap_or_else(|| header_prefix(name)).min(obj.size());
            let prefix = obj.get_range_blocking(0..n).unwrap().to_vec();
            let mut fetch = HeaderFetch::new(&obj, prefix);
            let header = fetch.parse(&Location::Object(ObjectUrl::parse(obj.url()).unwrap()));
            (header, fetch.requests)
        }

        fn with_extensions(payload: usize) -> Vec<u8> {
            let p = vec![7u8; payload];
            let esize = (8 + payload).div_ceil(16) * 16;
            HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
                .vox_offset((352 + 3 * esize) as f64)
                .single_file(&[(6, &p), (6, &p), (6, &p)], &[1u8; 48])
        }

        #[test]
        fn nifti_extensions_come_in_one_more_request() {
            let file = with_extensions(1000);
            let (h, requests) = open("e.nii", &file, None);
            let h = h.unwrap();
            assert_eq!((h.layout.offset, h.header_bytes, requests), (3376, 3376, 1));
            // Gzip: the first 4 KiB hold it all.
            let (h, requests) = open("e.nii.gz", &gz(&[&file]), None);
            assert_eq!((h.unwrap().layout.offset, requests), (3376, 0));
            // A long gzip header: the compressed prefix grows, never re-read per extension.
            let big = with_extensions(300_000);
            let (h, requests) = open("big.nii.gz", &gz(&[&big]), Some(64));
            assert_eq!(h.unwrap().layout.offset, 352 + 3 * 300_016);
            assert!(requests <= 4, "{requests}");
        }

        #[test]
        fn headers_asking_past_their_cap_are_errors_naming_the_url() {
            let mut file = HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
                .vox_offset(1e9)
                .build();
            file.extend_from_slice(&[1, 0, 0, 0]);
            file.extend_from_slice(&(100i32 << 20).to_le_bytes());
            file.extend_from_slice(&6i32.to_le_bytes());
            file.resize(2 << 20, 0);
            let (h, _) = open("cap.nii.gz", &gz(&[&file]), None);
            let msg = h.unwrap_err().to_string();
            assert!(
                msg.contains("memory://bucket/cap.nii.gz") && msg.contains("limit"),
                "{msg}"
            );
            // Uncompressed, the object's own length answers: one GET up to its end (within the cap), then the
            // extension is truncated.
            let (h, requests) = open("cap.nii", &file, None);
            assert!(h.unwrap_err().to_string().contains("truncated"));
            assert_eq!(requests, 1);
            // npy: numpy's own header limit.
            let mut npy = b"\x93NUMPY\x02\x00".to_vec();
            npy.extend_from_slice(&60_000u32.to_le_bytes());
            npy.resize(70_000, b' ');
            let (h, requests) = open("big.npy", &npy, None);
            let msg = h.unwrap_err().to_string();
            assert!(msg.contains("big.npy") && msg.contains("10000"), "{msg}");
            assert_eq!(requests, 0);
        }

        fn mgh_4d() -> Vec<u8> {
            let mdc = [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
            let mut f = mgh_file([20, 30, 4, 5], 3, 1, [1.0; 3], mdc, [0.0; 3]);
            f.extend(vec![0u8; 20 * 30 * 4 * 5 * 4]);
            f.extend_from_slice(&2000f32.to_be_bytes());
            f.extend_from_slice(&[0u8; 16]);
            f
        }

        #[test]
        fn an_mgh_footer_is_one_ranged_request_not_the_data() {
            let (h, requests) = open("f.mgh", &mgh_4d(), None);
            assert_eq!((h.unwrap().zooms[3], requests), (2000.0, 1));
            let (h, _) = open("f.mgz", &gz(&[&mgh_4d()]), Some(100));
            assert_eq!(h.unwrap().zooms[3], 2000.0);
            // A footer past the end: the data are truncated.
            let mut cut = mgh_4d();
            cut.truncate(400);
            let (h, _) = open("cut.mgh", &cut, None);
            assert!(matches!(h, Err(VoxelError::Truncated { .. })), "{h:?}");
        }

        #[test]
        fn a_gzip_bomb_is_decompressed_no_further_than_the_header_claims() {
            let header = HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
                .single_file(&[], &[1u8; 48]);
            let zeros = vec![0u8; 1 << 20];
            let one = gz(&[&zeros]);
            let mut bomb = gz(&[&header]);
            for _ in 0..64 {
                bomb.extend_from_slice(&one);
            }
            // Bounded: at most `stop` bytes come out, and only `keep` are stored.
            let r = inflate(&bomb, 1000, Some(5000..5100), 10 << 20, "b").unwrap();
            assert_eq!((r.out, r.head.len(), r.tail.len()), (10 << 20, 1000, 100));
            // Fetched whole, the length check stops at the claimed 400 bytes.
            let (h, requests) = open("bomb.nii.gz", &bomb, Some(bomb.len() as u64));
            assert_eq!((h.unwrap().layout.offset, requests), (352, 0));
            // A claim beyond what the stream holds is truncated, after decompressing no more than it holds.
            let claims = HeaderBuilder::nifti1(ByteOrder::Little, &[1024, 1024, 1024], 4, true)
                .single_file(&[], &[]);
            let mut short = gz(&[&claims]);
            for _ in 0..8 {
                short.extend_from_slice(&one);
            }
            let (h, _) = open("short.nii.gz", &short, Some(short.len() as u64));
            match h {
                Err(VoxelError::Truncated {
                    path,
                    expected,
                    actual,
                }) => {
                    assert!(path.contains("short.nii.gz"));
                    assert_eq!((expected, actual), (352 + (2 << 30), 352 + (8 << 20)));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn block_on_works_inside_and_outside_a_runtime() {
        assert_eq!(block_on(async { 7 }).unwrap(), 7);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let v = rt.block_on(async { block_on(async { 8 }).unwrap() });
        assert_eq!(v, 8);
    }
}
