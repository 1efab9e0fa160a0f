//! The store registry: one `ObjectStore` per root URL and option set, built from the environment and options.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ::url::Url;
use object_store::ObjectStore;

use super::link::Link;
use super::options::*;
use crate::error::{Result, VoxelError};
use crate::location::{ObjectUrl, store_root};

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
pub(super) fn store_for(url: &Url, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
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

/// The link estimates shared by every read of the store serving `url` (same root, same non-`remote.*` options).
pub(super) fn link_for(url: &str, opts: &StoreOptions) -> Arc<Link> {
    type Cache = Mutex<HashMap<(String, Vec<(String, String)>), Arc<Link>>>;
    static LINKS: OnceLock<Cache> = OnceLock::new();
    let Ok(addr) = ObjectUrl::parse(url) else {
        return Arc::new(Link::default());
    };
    let settings = opts
        .entries
        .iter()
        .filter(|(k, _)| !k.starts_with("remote."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let key = (store_root(addr.url()), settings);
    let Ok(mut cache) = LINKS.get_or_init(Cache::default).lock() else {
        return Arc::new(Link::default());
    };
    Arc::clone(cache.entry(key).or_default())
}

pub(super) fn build_store(url: &Url, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
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
