//! Object URLs: which locations are URLs, their store and key, and glob expansion by listing a store.

use ::url::Url;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

use super::options::*;
use super::store::*;
use super::*;
use crate::error::{Result, VoxelError};

/// URL schemes read through object storage (`file://` is a local path).
pub(super) const SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "adl", "http", "https",
];

/// Whether a location names an object-store or HTTP URL (as opposed to a local path or `file://` URL).
pub fn is_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Where an object lives: the store it belongs to and its path there.
#[derive(Debug, Clone)]
pub(super) struct Address {
    pub(super) url: Url,
    pub(super) path: ObjectPath,
}

pub(super) fn parse_address(location: &str) -> Result<Address> {
    let url = Url::parse(location)
        .map_err(|e| VoxelError::Invalid(format!("'{location}' is not a valid URL: {e}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(VoxelError::Invalid(format!(
            "'{location}': the URL names no bucket or host"
        )));
    }
    let path = ObjectPath::from_url_path(url.path())
        .map_err(|e| VoxelError::Invalid(format!("'{location}': bad object path: {e}")))?;
    Ok(Address { url, path })
}

pub(super) fn store_root(url: &Url) -> String {
    let scheme = url.scheme();
    let host = url.host_str().unwrap_or_default();
    match (url.port(), url.username()) {
        (Some(p), _) => format!("{scheme}://{host}:{p}"),
        (None, user) if !user.is_empty() => format!("{scheme}://{user}@{host}"),
        _ => format!("{scheme}://{host}"),
    }
}

/// Objects whose URL matches `pattern` (a glob over the key: `*` and `?` stay within one `/` level, `**` crosses
/// them), or every object directly under a URL ending in `/`. Sorted by URL.
pub fn list_matching(pattern: &str, opts: &StoreOptions) -> Result<Vec<String>> {
    let addr = parse_address(pattern)?;
    if matches!(addr.url.scheme(), "http" | "https") {
        return Err(VoxelError::Invalid(format!(
            "'{pattern}': HTTP servers cannot be listed; name the files one by one"
        )));
    }
    let store = store_for(&addr.url, opts)?;
    let root = store_root(&addr.url);
    let key = percent_decoded(addr.url.path().trim_start_matches('/'));
    let directory = key.is_empty() || key.ends_with('/');
    let literal_end = key.find(['*', '?', '[']).unwrap_or(key.len());
    let prefix = match key[..literal_end].rfind('/') {
        Some(i) => &key[..i],
        None => "",
    };
    let glob = if directory {
        None
    } else {
        Some(glob::Pattern::new(&key).map_err(|e| {
            VoxelError::Invalid(format!("location '{pattern}' is not a valid glob: {e}"))
        })?)
    };
    let match_opts = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let prefix_path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let metas: Vec<object_store::ObjectMeta> = block_on(async {
        if directory {
            store
                .list_with_delimiter(prefix_path.as_ref())
                .await
                .map(|l| l.objects)
        } else {
            store.list(prefix_path.as_ref()).try_collect().await
        }
    })?
    .map_err(|e| remote_error(pattern, e))?;
    count(1, 0);
    let mut urls: Vec<String> = metas
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| glob.as_ref().is_none_or(|g| g.matches_with(k, match_opts)))
        .map(|k| format!("{root}/{k}"))
        .collect();
    urls.sort();
    Ok(urls)
}

pub(super) fn percent_decoded(s: &str) -> String {
    ::url::form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}
