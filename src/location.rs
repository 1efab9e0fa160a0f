//! Where an image is: a local path, an open file handle, or (with the `remote` feature) an object URL.
//!
//! One parser ([`Location::parse`]) tells them apart, one decoder turns `%XX` escapes back into bytes (RFC 3986:
//! a `+` stays a `+`, unlike form encoding), and one expander ([`expand`]) turns locations naming a directory, a
//! local glob or an object-store listing into the images they hold. Remote URLs are kept as URLs, never as paths.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, VoxelError};
use crate::formats::detect::{NameKind, header_path_for, name_kind};

use crate::formats::{self, ImageHeader};
use crate::proxy::{ArrayProxy, DataFile, ProxyOptions};
#[cfg(feature = "remote")]
pub(crate) use object::store_root;

#[cfg(feature = "remote")]
pub use crate::io::remote::StoreOptions;
#[cfg(feature = "remote")]
pub use object::{ObjectUrl, is_url};

/// Object-store settings; a build without the `remote` feature reads no object store and has none.
#[cfg(not(feature = "remote"))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StoreOptions {}

/// A place an image (or its data) can be read from.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local file or directory (a `file://` URL is decoded to one).
    Path(PathBuf),
    /// An already-open handle: read with positional reads, never closed or moved; `name` is for messages.
    Handle { file: Arc<File>, name: String },
    /// An object in object storage or on an HTTP server.
    #[cfg(feature = "remote")]
    Object(ObjectUrl),
}

impl Location {
    /// Tell a location string apart: an object-store or HTTP URL, a `file://` URL (percent-decoded to a path), or a
    /// local path. Any other `scheme://` is an error.
    pub fn parse(location: &str) -> Result<Location> {
        #[cfg(feature = "remote")]
        if is_url(location) {
            return ObjectUrl::parse(location).map(Location::Object);
        }
        if let Some(rest) = strip_prefix_ignore_case(location, "file://") {
            return Ok(Location::Path(PathBuf::from(percent_decode(rest))));
        }
        if location.contains("://") {
            return Err(VoxelError::Invalid(format!(
                "location '{location}': unsupported URL scheme ({SUPPORTED})"
            )));
        }
        Ok(Location::Path(PathBuf::from(location)))
    }

    /// The location as messages and the `file` column show it.
    pub fn display(&self) -> String {
        match self {
            Location::Path(p) => p.display().to_string(),
            Location::Handle { name, .. } => name.clone(),
            #[cfg(feature = "remote")]
            Location::Object(o) => o.as_str().to_string(),
        }
    }

    /// The location's name as a path, for the naming rules of `formats::detect` (pairs, `.gz`); for an object,
    /// its URL as written.
    pub(crate) fn name(&self) -> PathBuf {
        match self {
            Location::Path(p) => p.clone(),
            other => PathBuf::from(other.display()),
        }
    }

    /// The same kind of location under another name (from [`Location::name`] by the naming rules): a pair's
    /// other half. A handle has no other name: it stays itself.
    pub(crate) fn renamed(&self, name: &Path) -> Result<Location> {
        Ok(match self {
            Location::Path(_) => Location::Path(name.to_path_buf()),
            Location::Handle { .. } => self.clone(),
            #[cfg(feature = "remote")]
            Location::Object(_) => Location::Object(ObjectUrl::parse(&name.to_string_lossy())?),
        })
    }

    /// The local path, when this is one.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Location::Path(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the bytes live in object storage or on an HTTP server.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Location::Path(_) | Location::Handle { .. })
    }
}

impl PartialEq for Location {
    /// Handles are equal when they are the same open file.
    fn eq(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Path(a), Location::Path(b)) => a == b,
            (Location::Handle { file: a, name: m }, Location::Handle { file: b, name: n }) => {
                Arc::ptr_eq(a, b) && m == n
            }
            #[cfg(feature = "remote")]
            (Location::Object(a), Location::Object(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Path(p.to_path_buf())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Path(p)
    }
}

impl From<File> for Location {
    fn from(f: File) -> Self {
        Location::Handle {
            file: Arc::new(f),
            name: "<open file>".into(),
        }
    }
}

#[cfg(feature = "remote")]
const SUPPORTED: &str = "s3, gs, az, abfss, http, https and file are read";
#[cfg(not(feature = "remote"))]
const SUPPORTED: &str = "this build reads local paths and file:// URLs only";

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let n = prefix.len();
    if s.get(..n)?.eq_ignore_ascii_case(prefix) {
        s.get(n..)
    } else {
        None
    }
}

/// `%XX` escapes decoded (RFC 3986: `+` is a plus sign, not a space; a stray `%` is kept). Bytes that are not UTF-8
/// are replaced, as for any other name shown to a user.
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Is `name` a glob pattern (rather than one file)?
fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// Locations expanded into the images they name.
#[derive(Debug, Clone)]
pub struct Expanded {
    /// Sorted within each location, duplicates dropped.
    pub images: Vec<Location>,
    /// More than one location, or one naming a directory, a glob or a listing (a table with a `file` column).
    pub multi: bool,
}

/// Expand locations (files, directories, local globs, object-store prefixes ending in `/` and key globs) into the
/// images they hold. Images are told by name, pairs counted once by their `.hdr`; `any_name` also keeps files
/// whose name no format claims (raw tables). A location matching nothing is an error.
#[cfg_attr(not(feature = "remote"), allow(unused_variables))]
pub fn expand(locations: &[String], any_name: bool, store: &StoreOptions) -> Result<Expanded> {
    if locations.is_empty() {
        return Err(VoxelError::Invalid("no LOCATION given".into()));
    }
    let mut multi = locations.len() > 1;
    let mut images = Vec::new();
    let mut seen = HashSet::new();
    for text in locations {
        let found = match Location::parse(text)? {
            Location::Path(path) => {
                let (found, listed) = expand_local(&path, any_name)?;
                multi |= listed;
                found
            }
            Location::Handle { name, .. } => {
                return Err(VoxelError::Invalid(format!(
                    "location '{name}': an open handle cannot be expanded"
                )));
            }
            #[cfg(feature = "remote")]
            Location::Object(url) => {
                let listed = url.is_listing();
                multi |= listed;
                if listed {
                    keep_images(url.list(store)?, any_name)
                } else {
                    vec![(PathBuf::from(url.as_str()), Location::Object(url))]
                }
            }
        };
        if found.is_empty() {
            return Err(VoxelError::Invalid(format!(
                "location '{text}' matches no image file"
            )));
        }
        for (key, loc) in found {
            if seen.insert(key) {
                images.push(loc);
            }
        }
    }
    Ok(Expanded { images, multi })
}

/// An image whose header has been read: the header, and where its data are read from.
#[derive(Debug)]
pub struct OpenImage {
    pub header: ImageHeader,
    /// The data file (a pair's `.img`), the handle, or the object holding the data (size and ETag known).
    pub data: DataFile,
}

impl OpenImage {
    /// A proxy over the data with `opts`; over an object the planner skips no gap itself (the remote source
    /// decides which gaps are worth a GET).
    pub fn into_proxy(self, opts: ProxyOptions) -> Result<ArrayProxy> {
        let opts = match self.data {
            DataFile::Path(_) | DataFile::Handle { .. } => opts,
            #[cfg(feature = "remote")]
            DataFile::Remote(_) => ProxyOptions {
                skip_threshold: 0,
                ..opts
            },
        };
        ArrayProxy::with_compression(
            self.data,
            self.header.compression,
            &self.header.layout,
            opts,
        )
    }
}

/// Read the header of the image at `location`: its format detected (a local `.hdr`/`.img` pair found from
/// either half), or the array described by a raw `spec` instead. Objects are read with a few small ranged GETs
/// (see `io::remote::open_image`); an open handle needs a raw spec.
#[cfg_attr(not(feature = "remote"), allow(unused_variables))]
pub fn open_image(
    location: &Location,
    raw: Option<&str>,
    store: &StoreOptions,
) -> Result<OpenImage> {
    match location {
        Location::Path(path) => {
            let header = match raw {
                Some(spec) => formats::parse_raw_spec(spec, path)?,
                None => formats::read_header(path)?,
            };
            let data = DataFile::Path(header.data_path()?.to_path_buf());
            Ok(OpenImage { header, data })
        }
        Location::Handle { file, name } => {
            let spec = raw.ok_or_else(|| {
                VoxelError::Invalid(format!(
                    "{name}: an open handle has no file name to find a header by; describe the array with a raw spec"
                ))
            })?;
            let header = formats::parse_raw_spec(spec, Path::new(name))?;
            let data = DataFile::Handle {
                file: Arc::clone(file),
                name: name.clone(),
            };
            Ok(OpenImage { header, data })
        }
        #[cfg(feature = "remote")]
        Location::Object(url) => {
            use crate::io::remote;
            let image = match raw {
                Some(spec) => remote::open_raw(url.as_str(), spec, store)?,
                None => remote::open_image(url.as_str(), store)?,
            };
            Ok(OpenImage {
                header: image.header,
                data: DataFile::Remote(image.data),
            })
        }
    }
}

/// One local location: the images it names (with the key that tells duplicates apart) and whether it was a
/// directory or a glob.
fn expand_local(path: &Path, any_name: bool) -> Result<(Vec<(PathBuf, Location)>, bool)> {
    let text = path.to_string_lossy();
    let (paths, listed) = if path.is_dir() {
        (keep_images(list_dir(path)?, any_name), true)
    } else if is_glob(&text) {
        (keep_images(expand_glob(&text)?, any_name), true)
    } else {
        std::fs::metadata(path).map_err(|e| VoxelError::io(path, e))?;
        (
            vec![(path.to_path_buf(), Location::Path(path.to_path_buf()))],
            false,
        )
    };
    let keyed = paths
        .into_iter()
        .map(|(p, loc)| (std::fs::canonicalize(&p).unwrap_or(p), loc))
        .collect();
    Ok((keyed, listed))
}

/// The files in a directory, sorted by path.
fn list_dir(dir: &Path) -> Result<Vec<Location>> {
    let entries = std::fs::read_dir(dir).map_err(|e| VoxelError::io(dir, e))?;
    let mut paths = Vec::new();
    for e in entries {
        let path = e.map_err(|e| VoxelError::io(dir, e))?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths.into_iter().map(Location::Path).collect())
}

/// The files a local glob matches, sorted by path.
fn expand_glob(pattern: &str) -> Result<Vec<Location>> {
    let matches = glob::glob(pattern).map_err(|e| {
        VoxelError::Invalid(format!("location '{pattern}' is not a valid glob: {e}"))
    })?;
    let mut paths = Vec::new();
    for m in matches {
        let path = m.map_err(|e| VoxelError::io(e.path(), std::io::Error::other(e.to_string())))?;
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths.into_iter().map(Location::Path).collect())
}

/// The images among listed files or objects (in the order given): told by name, a pair once by its `.hdr` (its `.img` is kept
/// only when no `.hdr` was listed beside it); names no format claims only when `any_name`. Each comes with its
/// name as a path, the key duplicates are told apart by.
fn keep_images(found: Vec<Location>, any_name: bool) -> Vec<(PathBuf, Location)> {
    let named: Vec<(PathBuf, Location)> = found
        .into_iter()
        .map(|loc| (PathBuf::from(loc.display()), loc))
        .collect();
    let all: HashSet<PathBuf> = named.iter().map(|(p, _)| p.clone()).collect();
    named
        .into_iter()
        .filter(|(p, _)| match name_kind(p) {
            NameKind::Img => !all.contains(&header_path_for(p)) || header_path_for(p) == *p,
            NameKind::Other => any_name,
            _ => true,
        })
        .collect()
}

#[cfg(feature = "remote")]
mod object {
    use futures::TryStreamExt;
    use object_store::path::Path as ObjectPath;
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    use url::Url;

    use super::{Location, is_glob, percent_decode};
    use crate::error::{Result, VoxelError};
    use crate::io::remote::{self, StoreOptions};

    /// URL schemes read through object storage (`file://` is a local path).
    const SCHEMES: &[&str] = &[
        "s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "adl", "http", "https",
    ];

    /// Characters of a listed key escaped to make its URL: those a URL parser would otherwise read as an escape,
    /// a query or a fragment.
    const KEY_ESCAPES: &AsciiSet = &CONTROLS.add(b'%').add(b'?').add(b'#');

    /// Whether a location names an object-store or HTTP URL (as opposed to a local path or `file://` URL).
    pub fn is_url(location: &str) -> bool {
        location
            .split_once("://")
            .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
    }

    /// An object's URL: the store it belongs to (scheme, bucket or host) and its key there.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct ObjectUrl {
        /// The URL as given (shown in messages and the `file` column).
        text: String,
        url: Url,
        /// The key, percent-decoded.
        key: ObjectPath,
    }

    impl ObjectUrl {
        pub fn parse(location: &str) -> Result<ObjectUrl> {
            let url = Url::parse(location).map_err(|e| {
                VoxelError::Invalid(format!("'{location}' is not a valid URL: {e}"))
            })?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(VoxelError::Invalid(format!(
                    "'{location}': the URL names no bucket or host"
                )));
            }
            let key = ObjectPath::from_url_path(url.path())
                .map_err(|e| VoxelError::Invalid(format!("'{location}': bad object path: {e}")))?;
            Ok(ObjectUrl {
                text: location.to_string(),
                url,
                key,
            })
        }

        pub fn as_str(&self) -> &str {
            &self.text
        }

        pub fn url(&self) -> &Url {
            &self.url
        }

        /// The object's key in its store (decoded).
        pub fn key(&self) -> &ObjectPath {
            &self.key
        }

        /// `scheme://bucket` (with the port or user when the URL has one): what one store serves.
        pub fn root(&self) -> String {
            store_root(&self.url)
        }

        /// A prefix ending in `/` or a key with glob characters: a listing, not one object.
        pub fn is_listing(&self) -> bool {
            self.text.ends_with('/') || is_glob(&self.text)
        }

        /// The key as written in the URL, decoded but keeping a trailing `/` (which [`ObjectUrl::key`] drops).
        fn url_key(&self) -> String {
            percent_decode(self.url.path().trim_start_matches('/'))
        }

        /// Objects whose key matches this URL's (a glob over the key: `*` and `?` stay within one `/` level, `**`
        /// crosses them), or every object directly under a URL ending in `/`. Sorted by URL.
        pub fn list(&self, opts: &StoreOptions) -> Result<Vec<Location>> {
            if matches!(self.url.scheme(), "http" | "https") {
                return Err(VoxelError::Invalid(format!(
                    "'{}': HTTP servers cannot be listed; name the files one by one",
                    self.text
                )));
            }
            let store = remote::store_for_url(&self.url, opts)?;
            let key = self.url_key();
            let directory = key.is_empty() || key.ends_with('/');
            let literal_end = key.find(['*', '?', '[']).unwrap_or(key.len());
            let prefix = key[..literal_end].rfind('/').map_or("", |i| &key[..i]);
            let glob = if directory {
                None
            } else {
                Some(glob::Pattern::new(&key).map_err(|e| {
                    VoxelError::Invalid(format!(
                        "location '{}' is not a valid glob: {e}",
                        self.text
                    ))
                })?)
            };
            let match_opts = glob::MatchOptions {
                require_literal_separator: true,
                ..Default::default()
            };
            let prefix_path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
            let metas: Vec<object_store::ObjectMeta> = remote::block_on(async {
                if directory {
                    store
                        .list_with_delimiter(prefix_path.as_ref())
                        .await
                        .map(|l| l.objects)
                } else {
                    store.list(prefix_path.as_ref()).try_collect().await
                }
            })?
            .map_err(|e| remote::remote_error(&self.text, e))?;
            crate::io::record(crate::io::ReadStats {
                requests: 1,
                ..Default::default()
            });
            let root = self.root();
            let mut urls = Vec::new();
            for k in metas.into_iter().map(|m| m.location.to_string()) {
                if glob.as_ref().is_none_or(|g| g.matches_with(&k, match_opts)) {
                    let escaped = utf8_percent_encode(&k, KEY_ESCAPES);
                    urls.push(ObjectUrl::parse(&format!("{root}/{escaped}"))?);
                }
            }
            urls.sort_by(|a, b| a.text.cmp(&b.text));
            Ok(urls.into_iter().map(Location::Object).collect())
        }
    }

    /// `scheme://bucket` (with the port or user when the URL has one).
    pub(crate) fn store_root(url: &Url) -> String {
        let scheme = url.scheme();
        let host = url.host_str().unwrap_or_default();
        match (url.port(), url.username()) {
            (Some(p), _) => format!("{scheme}://{host}:{p}"),
            (None, user) if !user.is_empty() => format!("{scheme}://{user}@{host}"),
            _ => format!("{scheme}://{host}"),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn urls_are_told_from_paths() {
            assert!(is_url("s3://bucket/a.nii"));
            assert!(is_url("HTTPS://host/a.nii"));
            assert!(is_url("abfss://c@acct.dfs.core.windows.net/x.nii"));
            assert!(!is_url("file:///tmp/a.nii"));
            assert!(!is_url("/tmp/a.nii"));
            assert!(!is_url("weird://x/y"));
        }

        #[test]
        fn addresses_keep_bucket_and_key() {
            let a = ObjectUrl::parse("s3://bucket/ds/sub-01/func/x%20y+z.nii.gz").unwrap();
            assert_eq!(a.root(), "s3://bucket");
            assert_eq!(a.key().as_ref(), "ds/sub-01/func/x y+z.nii.gz");
            assert_eq!(a.as_str(), "s3://bucket/ds/sub-01/func/x%20y+z.nii.gz");
            assert!(!a.is_listing());
            let h = ObjectUrl::parse("http://127.0.0.1:8080/d/a.nii").unwrap();
            assert_eq!(h.root(), "http://127.0.0.1:8080");
            assert!(ObjectUrl::parse("s3:///nobucket").is_err());
            assert!(ObjectUrl::parse("not a url").is_err());
            // A glob keeps `+` as a plus sign: `a+b*` lists keys starting `a+b`, not `a b`.
            let g = ObjectUrl::parse("s3://bucket/d/a+b%20c*.nii").unwrap();
            assert!(g.is_listing());
            assert_eq!(g.url_key(), "d/a+b c*.nii");
            assert!(ObjectUrl::parse("s3://bucket/d/").unwrap().is_listing());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_decode_and_plus_stays_a_plus() {
        assert_eq!(percent_decode("a+b%20c%2Bd"), "a+b c+d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        let path = |s: &str| Location::parse(s).unwrap().as_path().map(Path::to_path_buf);
        assert_eq!(
            path("file:///tmp/a+b%20c.nii").unwrap(),
            Path::new("/tmp/a+b c.nii")
        );
        assert_eq!(path("/tmp/a%20b").unwrap(), Path::new("/tmp/a%20b"));
    }

    #[test]
    fn locations_parse_by_scheme() {
        let p = Location::parse("FILE:///x/y%20z.nii").unwrap();
        assert_eq!(p.as_path(), Some(Path::new("/x/y z.nii")));
        assert_eq!(
            Location::parse("rel/a.nii").unwrap().as_path(),
            Some(Path::new("rel/a.nii"))
        );
        let e = Location::parse("weird://x/y").unwrap_err().to_string();
        assert!(e.contains("unsupported URL scheme"), "{e}");
        #[cfg(feature = "remote")]
        {
            let o = Location::parse("s3://b/k.nii").unwrap();
            assert!(o.is_remote() && o.as_path().is_none());
            assert_eq!(o.display(), "s3://b/k.nii");
        }
    }

    #[test]
    fn locations_expand_to_sorted_images() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.nii", "a.nii", "c.hdr", "c.img", "lone.img", "notes.txt"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let d = dir.path().display().to_string();
        let run = |locs: &[String], any: bool| expand(locs, any, &StoreOptions::default());
        let names = |e: &Expanded| -> Vec<String> {
            e.images
                .iter()
                .map(|l| {
                    l.as_path()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        let e = run(std::slice::from_ref(&d), false).unwrap();
        assert_eq!(names(&e), ["a.nii", "b.nii", "c.hdr", "lone.img"]);
        assert!(e.multi);
        let e = run(std::slice::from_ref(&d), true).unwrap();
        assert!(names(&e).contains(&"notes.txt".to_string()));
        let e = run(&[format!("{d}/*.nii")], false).unwrap();
        assert_eq!(e.images.len(), 2);
        // The same file twice (directly and through a glob) counts once.
        let e = run(&[format!("{d}/a.nii"), format!("{d}/a*.nii")], false).unwrap();
        assert_eq!((e.images.len(), e.multi), (1, true));
        let e = run(&[format!("{d}/a.nii")], false).unwrap();
        assert_eq!((e.images.len(), e.multi), (1, false));
        let e = run(&[format!("file://{d}/a.nii")], false).unwrap();
        assert_eq!(names(&e), ["a.nii"]);
        let e = run(&[format!("{d}/*.mgz")], false).unwrap_err();
        assert!(e.to_string().contains("matches no image file"), "{e}");
        assert!(run(&[format!("{d}/missing.nii")], false).is_err());
        assert!(run(&[], false).is_err());
    }
}
