//! An object-store registry that creates each store the first time a URL needs it, from the URL and the process's
//! environment, so that an executor reads whatever storage a query names without being told about it beforehand:
//!
//! | scheme | store | configured by |
//! |---|---|---|
//! | `file` | the local filesystem | — |
//! | `s3`, `s3a` | Amazon S3 or compatible (bucket from the URL) | `AWS_*` variables: `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, … |
//! | `gs` | Google Cloud Storage | `GOOGLE_*` variables |
//! | `az`, `azure`, `abfs`, `abfss` | Azure Blob Storage | `AZURE_*` variables |
//! | `http`, `https` | a web server answering ranged GETs | — |
//!
//! Stores are kept per `scheme://authority` (one per bucket or server) and reused. Stores registered explicitly
//! (`SessionContext::register_object_store`) take precedence.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore};
use url::Url;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LazyObjectStores {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// `scheme://authority`: the part of a URL that names a store.
fn store_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

fn store_error(key: &str, e: object_store::Error) -> DataFusionError {
    DataFusionError::Execution(format!("cannot create the object store for {key}: {e}"))
}

/// A new store for `key` (`scheme://authority`).
fn create_store(url: &Url, key: &str) -> DfResult<Arc<dyn ObjectStore>> {
    let err = |e| store_error(key, e);
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => Arc::new(LocalFileSystem::new()),
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(key)
                .build()
                .map_err(err)?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(key)
                .build()
                .map_err(err)?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(key)
                .build()
                .map_err(err)?,
        ),
        // The URL's own scheme says whether it is plain HTTP.
        "http" | "https" => Arc::new(
            HttpBuilder::new()
                .with_url(key)
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .build()
                .map_err(err)?,
        ),
        other => {
            return Err(DataFusionError::Execution(format!(
                "no object store for '{other}' URLs ({key}): supported are file, s3, gs, az, http and https"
            )));
        }
    };
    Ok(store)
}

impl LazyObjectStores {
    pub fn new() -> LazyObjectStores {
        LazyObjectStores::default()
    }

    fn lock_error() -> DataFusionError {
        DataFusionError::Internal("object store registry lock poisoned".into())
    }
}

impl ObjectStoreRegistry for LazyObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        stores.insert(store_key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let key = store_key(url);
        let mut stores = self.stores.write().map_err(|_| Self::lock_error())?;
        stores.remove(&key).ok_or_else(|| {
            DataFusionError::Execution(format!("no object store registered for {key}"))
        })
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let key = store_key(url);
        if let Some(s) = self
            .stores
            .read()
            .map_err(|_| Self::lock_error())?
            .get(&key)
        {
            return Ok(Arc::clone(s));
        }
        let mut stores = self.stores.write().map_err(|_| Self::lock_error())?;
        if let Some(s) = stores.get(&key) {
            return Ok(Arc::clone(s));
        }
        let store = create_store(url, &key)?;
        stores.insert(key, Arc::clone(&store));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn stores_are_created_once_per_authority() {
        let reg = LazyObjectStores::new();
        let a = reg
            .get_store(&Url::parse("file:///tmp/a.nii").unwrap())
            .unwrap();
        let b = reg
            .get_store(&Url::parse("file:///data/b.nii").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let h1 = reg
            .get_store(&Url::parse("http://127.0.0.1:8080/x/a.nii").unwrap())
            .unwrap();
        let h2 = reg
            .get_store(&Url::parse("http://127.0.0.1:8080/y").unwrap())
            .unwrap();
        let h3 = reg
            .get_store(&Url::parse("http://127.0.0.1:8081/y").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&h1, &h2));
        assert!(!Arc::ptr_eq(&h1, &h3));
        let e = reg
            .get_store(&Url::parse("ftp://host/a.nii").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("no object store for 'ftp'"), "{e}");
    }

    #[test]
    fn registered_stores_win_and_can_be_removed() {
        let reg = LazyObjectStores::new();
        let url = Url::parse("s3://bucket/key.nii").unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        assert!(reg.register_store(&url, Arc::clone(&mem)).is_none());
        assert!(Arc::ptr_eq(&reg.get_store(&url).unwrap(), &mem));
        assert!(Arc::ptr_eq(&reg.deregister_store(&url).unwrap(), &mem));
        assert!(reg.deregister_store(&url).is_err());
    }
}
