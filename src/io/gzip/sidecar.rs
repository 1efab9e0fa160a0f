//! Where index files live (a hidden sidecar, a cache directory) and the safety rules for writing and loading them.

use std::path::{Path, PathBuf};

use super::index::{FileIdentity, GzIndex};
use super::*;

/// Where an index file may be loaded from and written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPlace {
    pub path: PathBuf,
    /// In a cache directory (created `0700`; used only while it is a directory of this user that others cannot
    /// write to), rather than beside the gz file.
    pub in_cache_dir: bool,
}

impl IndexPlace {
    /// A file in a cache directory.
    pub fn cache(path: PathBuf) -> IndexPlace {
        IndexPlace {
            path,
            in_cache_dir: true,
        }
    }
}

/// Candidate index file locations, in order of preference: the sidecar in the directory where `path` itself
/// lives (not when `path` or a directory on it is a symbolic link: never beside a link's target, in a directory
/// that may be someone else's), then the user cache directory; only the cache directory when `options.cache_dir` names one.
pub fn index_locations(path: &Path, options: &GzipOptions) -> Vec<IndexPlace> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = cache_file_name(canonical.as_os_str().as_encoded_bytes(), &name);
    if let Some(dir) = &options.cache_dir {
        return vec![IndexPlace::cache(dir.join(key))];
    }
    let mut out = Vec::new();
    // A sidecar only when no symbolic link is on the way to the file (the file itself or any directory above it):
    // otherwise "where the path lives" would be a link target's directory.
    let direct = std::path::absolute(path).is_ok_and(|a| a == canonical);
    if direct && let Some(dir) = canonical.parent() {
        out.push(IndexPlace {
            path: dir.join(format!(".{name}.{INDEX_EXTENSION}")),
            in_cache_dir: false,
        });
    }
    if let Some(dir) = user_cache_dir() {
        out.push(IndexPlace::cache(dir.join(key)));
    }
    out
}

/// Who may read the index files an engine writes, and whose files it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexAccess {
    /// Permission bits of written index files (no wider than the gz file's own).
    pub mode: u32,
    /// Index files are loaded only when owned by one of these users (this user and the gz file's owner).
    pub owners: Vec<u32>,
}

impl IndexAccess {
    /// Private to this user: for objects in stores, whose permissions are not known.
    pub fn private() -> IndexAccess {
        IndexAccess {
            mode: 0o600,
            owners: vec![current_uid()],
        }
    }
}

/// Permission bits for an index of a file with `mode` and group `gid`: the file's own, without execute bits, and
/// without group bits when the index will belong to another group (ours) than the file's, whose members might not
/// have been able to read the file.
pub fn index_mode(mode: u32, gid: u32) -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    let ours = unsafe { libc::getegid() };
    let mode = mode & 0o666;
    if gid == ours { mode } else { mode & !0o070 }
}

pub(super) fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Save `index` at the first of `places` that accepts it (a cache directory only while [`cache_dir_usable`]), with
/// permission bits `mode`; where it went, or `None` if nowhere did.
pub fn save_index(
    index: &GzIndex,
    places: &[IndexPlace],
    identity: &FileIdentity,
    mode: u32,
) -> Option<PathBuf> {
    places.iter().find_map(|place| {
        let usable = !place.in_cache_dir || cache_dir_usable(&place.path, true);
        (usable && index.save(&place.path, identity, mode).is_ok()).then(|| place.path.clone())
    })
}

/// Whether the directory of the cache file `path` may be used: a directory owned by this user that others cannot
/// write to (so nobody else can plant or swap index files in it). With `create`, a missing one is made `0700`.
pub fn cache_dir_usable(path: &Path, create: bool) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = path.parent() else {
        return false;
    };
    if create && !dir.exists() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    let me = current_uid();
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o002 == 0)
}

/// `<crc32><adler32>-<name>.vxidx`: an index file name in a cache directory for the stream called `id` (a canonical
/// path or a URL); `name` keeps it readable.
pub fn cache_file_name(id: &[u8], name: &str) -> String {
    format!(
        "{:08x}{:08x}-{name}.{INDEX_EXTENSION}",
        zlib_rs::crc32::crc32(0, id),
        zlib_rs::adler32::adler32(1, id)
    )
}

/// `$XDG_CACHE_HOME/voxelscan` (when absolute), else `$HOME/.cache/voxelscan`.
pub fn user_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("voxelscan"))
}
