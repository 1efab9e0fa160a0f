//! Per-table store options (`aws.*`, `gcp.*`, `azure.*`, `remote.*`) and their defaults from the environment.

use std::collections::BTreeMap;
use std::time::Duration;

use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::*;
use crate::error::{Result, VoxelError};
use crate::io::ranges::Coalesce;

/// Per-table object-store settings: `aws.*`, `gcp.*`, `azure.*` keys as `datafusion-cli` takes them (passed to the
/// store builders after the environment), and this crate's own `remote.gap`, `remote.concurrency`,
/// `remote.retries`, `remote.timeout` (seconds).
/// `Debug` hides secret values ([`super::redact`]).
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StoreOptions {
    pub entries: BTreeMap<String, String>,
}

pub(super) const STORE_PREFIXES: &[&str] =
    &["aws.", "gcp.", "google.", "azure.", "http.", "remote."];
pub(super) const REMOTE_KEYS: &[&str] = &["gap", "overread", "concurrency", "retries", "timeout"];

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

    pub(super) fn number(&self, key: &str, default: u64) -> Result<u64> {
        match self.entries.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                VoxelError::Invalid(format!("option '{key}': '{v}' is not a whole number"))
            }),
        }
    }

    /// How reads from this store coalesce segments into GETs: [`StoreOptions::gap`] and [`StoreOptions::overread`].
    pub fn coalesce(&self) -> Result<Coalesce> {
        Ok(Coalesce {
            max_gap: self.gap()?,
            max_overread: self.overread()?,
        })
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

    pub(super) fn retry(&self) -> Result<RetryConfig> {
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

    pub(super) fn client(&self, allow_http: bool) -> Result<ClientOptions> {
        let timeout = self.number("remote.timeout", 120)?;
        Ok(ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(timeout.max(1))))
    }

    /// Options for one builder: the keys under `prefix`, with the prefix removed.
    pub(super) fn under<'a>(
        &'a self,
        prefixes: &'a [&str],
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.entries.iter().filter_map(move |(k, v)| {
            prefixes
                .iter()
                .find_map(|p| k.strip_prefix(p))
                .map(|rest| (rest, v.as_str()))
        })
    }
}

pub(super) fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

pub(super) fn check_key(key: &str, value: &str) -> Result<()> {
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

pub(super) fn aws_key(rest: &str) -> Option<object_store::aws::AmazonS3ConfigKey> {
    rest.parse()
        .ok()
        .or_else(|| format!("aws_{rest}").parse().ok())
}

pub(super) fn gcp_key(rest: &str) -> Option<object_store::gcp::GoogleConfigKey> {
    rest.parse()
        .ok()
        .or_else(|| format!("google_{rest}").parse().ok())
}

pub(super) fn azure_key(rest: &str) -> Option<object_store::azure::AzureConfigKey> {
    rest.parse()
        .ok()
        .or_else(|| format!("azure_{rest}").parse().ok())
        .or_else(|| format!("azure_storage_{rest}").parse().ok())
}

pub(super) fn client_key(rest: &str) -> Option<object_store::ClientConfigKey> {
    rest.parse().ok()
}
