//! Per-table store options (`aws.*`, `gcp.*`, `azure.*`, `remote.*`) and their defaults from the environment.

use std::collections::BTreeMap;
use std::time::Duration;

use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::link::Link;
use super::*;
use crate::error::{Result, VoxelError};
use crate::io::gzip::cache::parse_size;
use crate::io::ranges::{Coalesce, CostModel};

/// Per-table object-store settings: `aws.*`, `gcp.*`, `azure.*` keys as `datafusion-cli` takes them (passed to the
/// store builders after the environment), and this crate's own `remote.rtt` (milliseconds), `remote.bandwidth`
/// (bytes per second per stream), `remote.max_request`, `remote.gap`, `remote.overread`, `remote.concurrency`,
/// `remote.retries`, `remote.timeout` (seconds).
/// `Debug` hides secret values ([`super::redact`]).
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StoreOptions {
    pub entries: BTreeMap<String, String>,
}

pub(super) const STORE_PREFIXES: &[&str] =
    &["aws.", "gcp.", "google.", "azure.", "http.", "remote."];
pub(super) const REMOTE_KEYS: &[&str] = &[
    "rtt",
    "bandwidth",
    "max_request",
    "gap",
    "overread",
    "concurrency",
    "retries",
    "timeout",
];

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

    /// How reads from this store coalesce segments into GETs, `concurrency` at a time: by the cost model
    /// ([`StoreOptions::cost_model`]), within [`StoreOptions::gap`], [`StoreOptions::max_request`] and, when set,
    /// [`StoreOptions::overread`].
    pub fn coalesce(&self, link: &Link, concurrency: usize) -> Result<Coalesce> {
        Ok(Coalesce {
            max_gap: self.gap()?,
            max_overread: self.overread()?,
            max_request: self.max_request()?,
            cost: Some(self.cost_model(link, concurrency)?),
        })
    }

    /// The cost model of a read with `concurrency` GETs in flight: round-trip time and per-stream bandwidth from
    /// the options (`remote.rtt` in milliseconds, `remote.bandwidth` in bytes per second; env
    /// `VOXELSCAN_REMOTE_RTT`, `VOXELSCAN_REMOTE_BANDWIDTH`) when given, else as learned from this store's
    /// responses so far (starting from [`DEFAULT_RTT`] and [`DEFAULT_BANDWIDTH`]).
    pub fn cost_model(&self, link: &Link, concurrency: usize) -> Result<CostModel> {
        let learned = link.estimate();
        let rtt = match self.setting("remote.rtt", "VOXELSCAN_REMOTE_RTT") {
            None => learned.rtt,
            Some((name, v)) => parse_millis(&v).map(|ms| ms / 1000.0).ok_or_else(|| {
                invalid(&name, &v, "a time in milliseconds (25, 0.5, 25ms, 0.03s)")
            })?,
        };
        let bandwidth = match self.setting("remote.bandwidth", "VOXELSCAN_REMOTE_BANDWIDTH") {
            None => learned.bandwidth,
            Some((name, v)) => parse_size(&v)
                .filter(|&b| b > 0)
                .map(|b| b as f64)
                .ok_or_else(|| invalid(&name, &v, "bytes per second (85000000, 80M, 1G)"))?,
        };
        Ok(CostModel {
            rtt,
            bandwidth,
            concurrency: concurrency.max(1) as u64,
            per_request: PER_REQUEST,
        })
    }

    /// Largest GET that reads through a gap (option `remote.max_request`, env `VOXELSCAN_REMOTE_MAX_REQUEST`;
    /// default [`DEFAULT_MAX_REQUEST`]).
    pub fn max_request(&self) -> Result<u64> {
        match self.setting("remote.max_request", "VOXELSCAN_REMOTE_MAX_REQUEST") {
            None => Ok(DEFAULT_MAX_REQUEST),
            Some((name, v)) => {
                parse_size(&v).ok_or_else(|| invalid(&name, &v, "a size in bytes (8388608, 8M)"))
            }
        }
    }

    /// Most bytes read through, as a fraction of the bytes needed (option `remote.overread`, env
    /// `VOXELSCAN_REMOTE_OVERREAD`); unset: no bound (the cost model decides).
    pub fn overread(&self) -> Result<f64> {
        match self.setting("remote.overread", "VOXELSCAN_REMOTE_OVERREAD") {
            None => Ok(f64::INFINITY),
            Some((name, v)) => {
                parse_fraction(&v).ok_or_else(|| invalid(&name, &v, "a fraction ≥ 0"))
            }
        }
    }

    /// The option `key`'s value, else the environment variable `env`'s, with the name it came from.
    fn setting(&self, key: &str, env: &str) -> Option<(String, String)> {
        match self.entries.get(key) {
            Some(v) => Some((format!("option '{key}'"), v.clone())),
            None => std::env::var(env).ok().map(|v| (env.to_string(), v)),
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
        Ok(self.number("remote.concurrency", default)?.clamp(1, 1024) as usize)
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

fn invalid(name: &str, value: &str, what: &str) -> VoxelError {
    VoxelError::Invalid(format!("{name}: '{value}' is not {what}"))
}

/// Milliseconds: a number, optionally followed by `ms`, or by `s` for seconds; finite and ≥ 0.
pub(super) fn parse_millis(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (t, 1.0)
    };
    let ms = num.trim().parse::<f64>().ok()? * scale;
    (ms.is_finite() && ms >= 0.0).then_some(ms)
}

fn parse_fraction(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| *x >= 0.0 && !x.is_nan())
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
        let name = format!("option '{key}'");
        return match rest {
            "overread" => parse_fraction(value)
                .map(|_| ())
                .ok_or_else(|| invalid(&name, value, "a fraction ≥ 0")),
            "rtt" => parse_millis(value).map(|_| ()).ok_or_else(|| {
                invalid(
                    &name,
                    value,
                    "a time in milliseconds (25, 0.5, 25ms, 0.03s)",
                )
            }),
            "bandwidth" => parse_size(value)
                .filter(|&b| b > 0)
                .map(|_| ())
                .ok_or_else(|| invalid(&name, value, "bytes per second (85000000, 80M, 1G)")),
            "max_request" => parse_size(value)
                .map(|_| ())
                .ok_or_else(|| invalid(&name, value, "a size in bytes (8388608, 8M)")),
            _ => value
                .trim()
                .parse::<u64>()
                .map(|_| ())
                .map_err(|_| invalid(&name, value, "a whole number")),
        };
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
