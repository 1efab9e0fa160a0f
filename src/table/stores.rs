//! DataFusion's object-store registry made lazy: `s3://`, `gs://`, `az://`, `http(s)://` URLs get a store built
//! on first use from the environment (the same builders the voxel scan uses), so `COPY … TO 's3://…'` and
//! Parquet reads work without registering stores by hand. Stores registered explicitly take precedence.

use std::sync::Arc;

use datafusion::common::Result as DfResult;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

use crate::io::remote;

#[derive(Debug, Default)]
pub struct LazyStoreRegistry {
    inner: DefaultObjectStoreRegistry,
}

impl LazyStoreRegistry {
    pub fn new() -> LazyStoreRegistry {
        LazyStoreRegistry::default()
    }
}

impl ObjectStoreRegistry for LazyStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        if !crate::location::is_url(url.as_str()) {
            return self.inner.get_store(url);
        }
        let store = remote::store_for_url(url, &remote::StoreOptions::default())?;
        self.inner.register_store(url, Arc::clone(&store));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_stores_on_demand_and_keeps_file() {
        let r = LazyStoreRegistry::new();
        let file = Url::parse("file:///tmp/x").unwrap();
        assert!(r.get_store(&file).is_ok());
        let http = Url::parse("http://127.0.0.1:9/data/a.parquet").unwrap();
        let first = r.get_store(&http).unwrap();
        let again = r.get_store(&http).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let odd = Url::parse("ftp://host/x").unwrap();
        assert!(r.get_store(&odd).is_err());
    }
}
