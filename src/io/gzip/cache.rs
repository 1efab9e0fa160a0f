//! `SpanCache`: a bounded in-memory cache of decompressed gzip data, shared by every reader in the process.
//!
//! Restarting at a seek point still costs up to a span (1 MiB) of decompression per read; a repeated or overlapping
//! read (the same volume twice, a second query over the same file, neighbouring slices) is served from here instead.
//! Entries are runs of decompressed bytes `[start, start + len)` of one gz file, keyed by the file (its path and
//! identity, so a replaced file never hits old data) and `start`. Readers insert what they were asked for, cut at
//! seek points (at most [`MAX_ENTRY`] bytes each); a lookup splits a wanted range into parts found here and parts
//! to decompress. Each entry also counts [`ENTRY_COST`] bytes against the budget, so that many tiny entries (a
//! voxel's time series is one per volume) cannot hold more memory than it says. Eviction is least-recently-used under a byte budget ([`DEFAULT_BUDGET`], or
//! `VOXELSCAN_GZIP_CACHE`; `0` disables the cache).
//!
//! Only lookups and inserts take the lock; copying and decompressing happen outside it, on `Arc`s of the entries,
//! so concurrent readers (DataFusion partitions, the gzip source's threads) share the cache without waiting on each
//! other. An entry evicted while a reader still copies from it is freed when that reader is done.
//!
//! Evicted buffers are handed out again for new entries ([`SpanCache::buffer`], a few MiB kept at most): a scan
//! larger than the budget then evicts and refills the same memory, instead of paying for freshly mapped, zeroed
//! pages for every span it decompresses.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Result, VoxelError};

/// Byte budget of the process-wide cache: a size such as `268435456`, `256M`, `1G` (binary units); `0` disables it.
pub const ENV_GZIP_CACHE: &str = "VOXELSCAN_GZIP_CACHE";
/// Default byte budget of the process-wide cache (256 MiB).
pub const DEFAULT_BUDGET: u64 = 256 << 20;
/// Longest entry. Readers cut what they decompress at seek points and at most this far apart, so that a lookup
/// needs to look back only this far for an entry covering an offset.
pub const MAX_ENTRY: u64 = 4 << 20;
/// Bookkeeping per entry counted against the budget besides its data (maps, `Arc`, allocation).
pub const ENTRY_COST: u64 = 128;
/// Most bytes of evicted buffers kept for reuse (also at most a quarter of the budget).
const POOL_BYTES: u64 = 32 << 20;

/// A part of a wanted range: found in the cache, or to be decompressed.
#[derive(Debug, Clone)]
pub enum Cover {
    /// `data[at..at + len]` holds the decompressed bytes at `offset`.
    Hit {
        offset: u64,
        data: Arc<Vec<u8>>,
        at: usize,
        len: usize,
    },
    /// `[offset, offset + len)` is not cached.
    Miss { offset: u64, len: u64 },
}

/// What the cache holds and has done, for tests and `--stats`-like reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub budget: u64,
    /// Bytes held now.
    pub used: u64,
    pub entries: u64,
    /// Bytes served from the cache and bytes looked up but not found, since it was made.
    pub hit_bytes: u64,
    pub miss_bytes: u64,
    pub evictions: u64,
}

/// A bounded, thread-safe, least-recently-used cache of decompressed byte runs.
#[derive(Debug)]
pub struct SpanCache {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per file, entries by start offset.
    files: HashMap<Arc<str>, BTreeMap<u64, Entry>>,
    /// Recency order: tick of last use → (file, start).
    lru: BTreeMap<u64, (Arc<str>, u64)>,
    tick: u64,
    stats: CacheStats,
    /// Buffers of evicted entries, for [`SpanCache::buffer`].
    pool: Vec<Vec<u8>>,
    pool_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    data: Arc<Vec<u8>>,
    tick: u64,
}

impl Entry {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

impl SpanCache {
    /// An empty cache holding at most `budget` bytes of data (0: never holds anything).
    pub fn new(budget: u64) -> SpanCache {
        SpanCache {
            budget,
            inner: Mutex::new(Inner {
                stats: CacheStats {
                    budget,
                    ..CacheStats::default()
                },
                ..Inner::default()
            }),
        }
    }

    /// The process-wide cache, sized by `VOXELSCAN_GZIP_CACHE` (read once); `None` when that is `0`. A value that is
    /// not a size is an error naming the variable.
    pub fn shared() -> Result<Option<Arc<SpanCache>>> {
        static SHARED: OnceLock<std::result::Result<Option<Arc<SpanCache>>, String>> =
            OnceLock::new();
        SHARED
            .get_or_init(|| {
                let budget = budget_from(std::env::var(ENV_GZIP_CACHE).ok().as_deref())?;
                Ok((budget > 0).then(|| Arc::new(SpanCache::new(budget))))
            })
            .clone()
            .map_err(VoxelError::Invalid)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// Drop every entry (statistics other than `used` and `entries` are kept).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.files.clear();
        inner.lru.clear();
        inner.pool.clear();
        inner.pool_bytes = 0;
        inner.stats.used = 0;
        inner.stats.entries = 0;
    }

    /// An empty buffer with room for `len` bytes, for a new entry: an evicted entry's when one is large enough
    /// (its memory already mapped), else a new one. Filled by appending (nothing is zeroed first).
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut inner = self.lock();
            let found = inner.pool.iter().position(|b| b.capacity() >= len);
            found.map(|i| {
                let b = inner.pool.swap_remove(i);
                inner.pool_bytes -= b.capacity() as u64;
                b
            })
        };
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Split `[offset, offset + len)` of file `key` into cached and missing parts, in order, appended to `out`.
    /// Entries found become the most recently used.
    pub fn cover(&self, key: &str, offset: u64, len: u64, out: &mut Vec<Cover>) {
        let end = offset.saturating_add(len);
        let mut inner = self.lock();
        let Inner {
            files,
            lru,
            tick,
            stats,
            ..
        } = &mut *inner;
        let Some(entries) = files.get_mut(key) else {
            stats.miss_bytes += len;
            out.push(Cover::Miss { offset, len });
            return;
        };
        let mut at = offset;
        while at < end {
            match covering(entries, at) {
                Some((start, entry)) => {
                    let upto = end.min(start + entry.len());
                    *tick += 1;
                    if let Some(file_start) = lru.remove(&entry.tick) {
                        lru.insert(*tick, file_start);
                    }
                    entry.tick = *tick;
                    stats.hit_bytes += upto - at;
                    out.push(Cover::Hit {
                        offset: at,
                        data: Arc::clone(&entry.data),
                        at: (at - start) as usize,
                        len: (upto - at) as usize,
                    });
                    at = upto;
                }
                None => {
                    let next = entries
                        .range(at.saturating_add(1)..end)
                        .next()
                        .map_or(end, |(&s, _)| s);
                    stats.miss_bytes += next - at;
                    out.push(Cover::Miss {
                        offset: at,
                        len: next - at,
                    });
                    at = next;
                }
            }
        }
    }

    /// Keep `data`, the decompressed bytes of file `key` at `start`, evicting the least recently used entries to
    /// stay within the budget. Ignored when empty, longer than [`MAX_ENTRY`] or than the budget, or when an entry
    /// at `start` already holds at least as much; entries it contains are dropped.
    pub fn insert(&self, key: &Arc<str>, start: u64, data: Vec<u8>) {
        let len = data.len() as u64;
        if len == 0 || len > MAX_ENTRY || len + ENTRY_COST > self.budget {
            return;
        }
        let mut inner = self.lock();
        if let Some(e) = inner.files.get(&**key).and_then(|m| m.get(&start))
            && e.len() >= len
        {
            return;
        }
        // Entries inside the new one (including a shorter one at `start`) are redundant.
        let inside: Vec<u64> = inner
            .files
            .get(&**key)
            .map(|m| {
                m.range(start..start + len)
                    .filter(|(s, e)| **s + e.len() <= start + len)
                    .map(|(s, _)| *s)
                    .collect()
            })
            .unwrap_or_default();
        for s in inside {
            inner.remove(key, s, self.budget);
        }
        while inner.stats.used + len + ENTRY_COST > self.budget {
            if !inner.evict_oldest(self.budget) {
                break;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.lru.insert(tick, (Arc::clone(key), start));
        inner.files.entry(Arc::clone(key)).or_default().insert(
            start,
            Entry {
                data: Arc::new(data),
                tick,
            },
        );
        inner.stats.used += len + ENTRY_COST;
        inner.stats.entries += 1;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every change is complete before the
        // next statement can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn remove(&mut self, key: &str, start: u64, budget: u64) {
        if let Some(tick) = self.take(key, start, budget) {
            self.lru.remove(&tick);
        }
    }

    /// Evict the least recently used entry; `false` when there is none.
    fn evict_oldest(&mut self, budget: u64) -> bool {
        let Some((_, (key, start))) = self.lru.pop_first() else {
            return false;
        };
        self.take(&key, start, budget);
        self.stats.evictions += 1;
        true
    }

    /// Drop the entry at `start` of `key` from the file maps (not from the recency order), keeping its buffer for
    /// reuse when no reader holds it and the pool has room; its tick if it was there.
    fn take(&mut self, key: &str, start: u64, budget: u64) -> Option<u64> {
        let entries = self.files.get_mut(key)?;
        let removed = entries.remove(&start);
        if entries.is_empty() {
            self.files.remove(key);
        }
        let e = removed?;
        self.stats.used -= e.len() + ENTRY_COST;
        self.stats.entries -= 1;
        if let Ok(buf) = Arc::try_unwrap(e.data) {
            let cap = buf.capacity() as u64;
            if self.pool_bytes + cap <= POOL_BYTES.min(budget / 4) {
                self.pool_bytes += cap;
                self.pool.push(buf);
            }
        }
        Some(e.tick)
    }
}

/// The entry covering `offset` (starting at or before it, ending after it), if any.
fn covering(entries: &mut BTreeMap<u64, Entry>, offset: u64) -> Option<(u64, &mut Entry)> {
    entries
        .range_mut(offset.saturating_sub(MAX_ENTRY)..=offset)
        .rev()
        .find(|(s, e)| **s + e.len() > offset)
        .map(|(s, e)| (*s, e))
}

/// The budget a value of `VOXELSCAN_GZIP_CACHE` asks for (unset: [`DEFAULT_BUDGET`]); a message naming the variable
/// when it is not a size.
pub fn budget_from(value: Option<&str>) -> std::result::Result<u64, String> {
    match value {
        None => Ok(DEFAULT_BUDGET),
        Some(v) => parse_size(v).ok_or_else(|| {
            format!(
                "{ENV_GZIP_CACHE}='{v}' is not a size: give bytes such as 268435456, 256M or 1G (0 disables the \
                 cache)"
            )
        }),
    }
}

/// A byte size: digits with an optional binary suffix `K`, `M`, `G`, `T` (also `KiB`, `KB`, `k`…).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn bytes(start: u64, len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| ((start + i) % 251) as u8).collect()
    }

    /// The bytes a cover list describes, with `None` for misses.
    fn flatten(covers: &[Cover]) -> Vec<(u64, Option<Vec<u8>>)> {
        covers
            .iter()
            .map(|c| match c {
                Cover::Hit {
                    offset,
                    data,
                    at,
                    len,
                } => (*offset, Some(data[*at..*at + *len].to_vec())),
                Cover::Miss { offset, .. } => (*offset, None),
            })
            .collect()
    }

    fn cover(c: &SpanCache, k: &str, offset: u64, len: u64) -> Vec<Cover> {
        let mut out = Vec::new();
        c.cover(k, offset, len, &mut out);
        out
    }

    #[test]
    fn hits_and_misses_split_a_range_in_order() {
        let c = SpanCache::new(1 << 20);
        let k = key("f");
        c.insert(&k, 100, bytes(100, 50));
        c.insert(&k, 300, bytes(300, 100));
        let parts = cover(&c, "f", 120, 250);
        let kinds: Vec<(u64, bool, u64)> = parts
            .iter()
            .map(|p| match p {
                Cover::Hit { offset, len, .. } => (*offset, true, *len as u64),
                Cover::Miss { offset, len } => (*offset, false, *len),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![(120, true, 30), (150, false, 150), (300, true, 70)]
        );
        for (offset, data) in flatten(&parts) {
            if let Some(d) = data {
                assert_eq!(d, bytes(offset, d.len()));
            }
        }
        let s = c.stats();
        assert_eq!(
            (s.hit_bytes, s.miss_bytes, s.used, s.entries),
            (100, 150, 150 + 2 * ENTRY_COST, 2)
        );
        // Another file with the same offsets shares nothing.
        assert!(matches!(
            cover(&c, "g", 100, 10)[..],
            [Cover::Miss {
                offset: 100,
                len: 10
            }]
        ));
    }

    #[test]
    fn least_recently_used_is_evicted_first() {
        let c = SpanCache::new(3 * (100 + ENTRY_COST));
        let k = key("f");
        c.insert(&k, 0, bytes(0, 100));
        c.insert(&k, 100, bytes(100, 100));
        c.insert(&k, 200, bytes(200, 100));
        // Touch the first: the second is now the oldest.
        assert!(matches!(cover(&c, "f", 0, 10)[..], [Cover::Hit { .. }]));
        c.insert(&k, 300, bytes(300, 100));
        assert!(matches!(cover(&c, "f", 150, 1)[..], [Cover::Miss { .. }]));
        assert!(matches!(cover(&c, "f", 50, 1)[..], [Cover::Hit { .. }]));
        let s = c.stats();
        assert_eq!(
            (s.used, s.entries, s.evictions),
            (3 * (100 + ENTRY_COST), 3, 1)
        );
    }

    #[test]
    fn longer_entries_replace_contained_ones_and_limits_hold() {
        let c = SpanCache::new(1000);
        let k = key("f");
        c.insert(&k, 10, bytes(10, 20));
        c.insert(&k, 40, bytes(40, 20));
        c.insert(&k, 10, bytes(10, 60));
        assert_eq!((c.stats().used, c.stats().entries), (60 + ENTRY_COST, 1));
        // A shorter entry at the same start changes nothing.
        c.insert(&k, 10, bytes(10, 5));
        assert_eq!((c.stats().used, c.stats().entries), (60 + ENTRY_COST, 1));
        // Empty, over-budget and over-MAX_ENTRY entries are not kept.
        c.insert(&k, 500, Vec::new());
        c.insert(&k, 500, bytes(500, 1001));
        assert_eq!(c.stats().entries, 1);
        let big = SpanCache::new(MAX_ENTRY * 2);
        big.insert(&k, 0, vec![0; MAX_ENTRY as usize + 1]);
        assert_eq!(big.stats().entries, 0);
        let off = SpanCache::new(0);
        off.insert(&k, 0, bytes(0, 1));
        assert!(matches!(cover(&off, "f", 0, 1)[..], [Cover::Miss { .. }]));
        c.clear();
        assert_eq!((c.stats().used, c.stats().entries), (0, 0));
    }

    #[test]
    fn evicted_buffers_are_reused_unless_a_reader_holds_them() {
        const M: u64 = 1 << 20;
        let c = SpanCache::new(16 * M + 16 * ENTRY_COST);
        let k = key("f");
        c.insert(&k, 0, vec![1; M as usize]);
        c.insert(&k, M, vec![2; M as usize]);
        // Where the second entry's bytes live (the Arc is dropped again at once).
        let second = match &cover(&c, "f", M, 1)[..] {
            [Cover::Hit { data, .. }] => data.as_ptr() as usize,
            other => panic!("{other:?}"),
        };
        // A reader holds the first entry (and makes it the most recent).
        let held = cover(&c, "f", 0, 1);
        for i in 0..3 {
            c.insert(&k, 2 * M + i * 4 * M, vec![3; 4 * M as usize]);
        }
        // Full: this evicts the second entry, whose buffer goes to the pool...
        c.insert(&k, 14 * M, vec![4; 3 * M as usize]);
        // ...and this the first, whose buffer the reader still holds: not pooled.
        c.insert(&k, 17 * M, vec![5; M as usize]);
        assert_eq!(c.stats().evictions, 2);
        let b = c.buffer(M as usize);
        assert!(b.is_empty() && b.capacity() >= M as usize);
        assert_eq!(b.as_ptr() as usize, second, "the evicted entry's memory");
        let fresh = c.buffer(100);
        assert!(
            fresh.is_empty() && fresh.capacity() >= 100 && fresh.capacity() < M as usize,
            "nothing else pooled"
        );
        assert!(matches!(&held[..], [Cover::Hit { data, .. }] if data[0] == 1));
        // A smaller request reuses a larger buffer, cut to length.
        c.insert(&k, 18 * M, vec![6; 4 * M as usize]);
        assert!(
            c.buffer(10).capacity() >= M as usize,
            "a larger pooled buffer serves a small request"
        );
        assert!(c.stats().used <= c.budget());
    }

    #[test]
    fn entries_starting_before_the_offset_are_found() {
        let c = SpanCache::new(MAX_ENTRY * 3);
        let k = key("f");
        c.insert(&k, 0, vec![7; MAX_ENTRY as usize]);
        c.insert(&k, 1000, bytes(1000, 10));
        // The entry at 1000 does not cover 5000, the one at 0 does.
        match &cover(&c, "f", 5000, 10)[..] {
            [
                Cover::Hit {
                    offset, at, len, ..
                },
            ] => assert_eq!((*offset, *at, *len), (5000, 5000, 10)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cover(&c, "f", MAX_ENTRY, 1)[..],
            [Cover::Miss { .. }]
        ));
    }

    #[test]
    fn concurrent_readers_and_writers_keep_the_budget() {
        let c = Arc::new(SpanCache::new(10_000));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let c = Arc::clone(&c);
                s.spawn(move || {
                    let k = key("f");
                    for i in 0..500u64 {
                        let start = (i * 7 + t * 13) % 200 * 100;
                        c.insert(&k, start, bytes(start, 100 + (i % 5) as usize * 50));
                        for p in flatten(&{
                            let mut v = Vec::new();
                            c.cover("f", start / 2, 900, &mut v);
                            v
                        }) {
                            if let (o, Some(d)) = p {
                                assert_eq!(d, bytes(o, d.len()));
                            }
                        }
                        assert!(c.stats().used <= 10_000);
                    }
                });
            }
        });
        let s = c.stats();
        assert!(s.used <= 10_000 && s.evictions > 0, "{s:?}");
    }

    #[test]
    fn the_environment_value_sets_the_budget_or_is_named_in_the_error() {
        assert_eq!(budget_from(None), Ok(DEFAULT_BUDGET));
        assert_eq!(budget_from(Some("0")), Ok(0));
        assert_eq!(budget_from(Some("1G")), Ok(1 << 30));
        let err = budget_from(Some("lots")).unwrap_err();
        assert!(
            err.contains("VOXELSCAN_GZIP_CACHE='lots'") && err.contains("256M"),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("268435456"), Some(256 << 20));
        assert_eq!(parse_size(" 256M "), Some(256 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("12 MB"), Some(12 << 20));
        for bad in ["", "M", "-1", "1.5G", "12X", "99999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
