//! Session settings of voxelscan's own plan choices, under the `voxelscan.` prefix (`SET voxelscan.dense_joins =
//! false`). They choose how a query runs, never what it answers: every test of a dense path also runs with it off.

use std::any::Any;

use datafusion::common::Result as DfResult;
use datafusion::common::config::{
    ConfigEntry, ConfigExtension, ConfigField, ConfigOptions, ExtensionOptions,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionConfig;

/// voxelscan's settings (prefix `voxelscan`).
#[derive(Debug, Clone)]
pub struct VoxelscanOptions {
    /// Joins on coordinate keys whose build-side ranges are known, small and exact address build rows directly by
    /// key instead of hashing them.
    pub dense_joins: bool,
    /// GROUP BY on coordinate keys with known, small, exact ranges aggregates into directly indexed groups.
    pub dense_aggregates: bool,
    /// Aggregates of the value column grouped by coordinate columns (or by nothing) directly over a voxel scan are
    /// computed inside the scan: group indices from the slab layout, no coordinate columns.
    pub scan_aggregates: bool,
    /// An aggregate over an inner join of a voxel scan with a small build side on coordinates (an atlas, a mask, a
    /// table of coordinates) is computed in one pass over the scan: build voxels addressed directly, groups numbered
    /// by build key and probe coordinate, no joined rows.
    pub fused_joins: bool,
}

impl Default for VoxelscanOptions {
    fn default() -> Self {
        VoxelscanOptions {
            dense_joins: true,
            dense_aggregates: true,
            scan_aggregates: true,
            fused_joins: true,
        }
    }
}

/// Each setting's name and description (what `SHOW ALL` prints).
const SETTINGS: [(&str, &str); 4] = [
    (
        "dense_joins",
        "Joins on coordinate keys with known, small, exact build-side ranges address build rows directly by key.",
    ),
    (
        "dense_aggregates",
        "GROUP BY on coordinate keys with known, small, exact ranges aggregates into directly indexed groups.",
    ),
    (
        "scan_aggregates",
        "Aggregates of the value column grouped by coordinate columns (or nothing) over a voxel scan are computed in \
         the scan.",
    ),
    (
        "fused_joins",
        "An aggregate over an inner join of a voxel scan with a small build side on coordinates is computed in one \
         pass over the scan.",
    ),
];

impl VoxelscanOptions {
    fn field(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "dense_joins" => Some(&mut self.dense_joins),
            "dense_aggregates" => Some(&mut self.dense_aggregates),
            "scan_aggregates" => Some(&mut self.scan_aggregates),
            "fused_joins" => Some(&mut self.fused_joins),
            _ => None,
        }
    }
}

// Written out rather than with DataFusion's `extensions_options!`, whose entries leave the prefix off their keys:
// Ballista sends a session's settings to the scheduler and executors as `entries()` and sets them back by key, so
// unprefixed keys were dropped there (`SET voxelscan.…` on a cluster client never reached the executors), and
// `SHOW voxelscan.…` found nothing.
impl ExtensionOptions for VoxelscanOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DfResult<()> {
        let field = self.field(key).ok_or_else(|| {
            DataFusionError::Configuration(format!(
                "no setting voxelscan.{key} (there are {})",
                SETTINGS
                    .map(|(name, _)| format!("voxelscan.{name}"))
                    .join(", ")
            ))
        })?;
        ConfigField::set(field, "", value)
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let mut me = self.clone();
        SETTINGS
            .iter()
            .map(|&(name, description)| ConfigEntry {
                key: format!("{}.{name}", Self::PREFIX),
                value: me.field(name).map(|v| v.to_string()),
                description,
            })
            .collect()
    }
}

impl ConfigExtension for VoxelscanOptions {
    const PREFIX: &'static str = "voxelscan";
}

impl VoxelscanOptions {
    /// The settings of a session: defaults when the session was built without them (a context made elsewhere).
    pub fn from_config(options: &ConfigOptions) -> Self {
        options
            .extensions
            .get::<VoxelscanOptions>()
            .cloned()
            .unwrap_or_default()
    }
}

/// `config` with voxelscan's settings registered (kept as they are when already there), so `SET voxelscan.…` works.
pub fn with_voxelscan_options(mut config: SessionConfig) -> SessionConfig {
    if config
        .options()
        .extensions
        .get::<VoxelscanOptions>()
        .is_none()
    {
        config = config.with_option_extension(VoxelscanOptions::default());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_on_and_can_be_set() {
        let mut config = with_voxelscan_options(SessionConfig::new());
        let opts = VoxelscanOptions::from_config(config.options());
        assert!(opts.dense_joins && opts.dense_aggregates);
        config
            .options_mut()
            .set("voxelscan.dense_joins", "false")
            .unwrap();
        let opts = VoxelscanOptions::from_config(config.options());
        assert!(!opts.dense_joins && opts.dense_aggregates);
        assert!(
            config
                .options_mut()
                .set("voxelscan.no_such_setting", "1")
                .is_err()
        );
        assert!(
            config
                .options_mut()
                .set("voxelscan.dense_joins", "maybe")
                .is_err()
        );
    }

    /// Entries carry the prefix: Ballista sends them to executors by key and sets them back there.
    #[test]
    fn entries_round_trip_by_key() {
        let mut config = with_voxelscan_options(SessionConfig::new());
        config
            .options_mut()
            .set("voxelscan.scan_aggregates", "false")
            .unwrap();
        let mut other = with_voxelscan_options(SessionConfig::new());
        let entries = config.options().entries();
        let ours: Vec<_> = entries
            .iter()
            .filter(|e| e.key.starts_with("voxelscan."))
            .collect();
        assert_eq!(ours.len(), SETTINGS.len());
        for e in ours {
            if let Some(v) = &e.value {
                other.options_mut().set(&e.key, v).unwrap();
            }
        }
        let opts = VoxelscanOptions::from_config(other.options());
        assert!(!opts.scan_aggregates && opts.dense_joins);
    }

    #[test]
    fn a_session_without_them_gets_defaults() {
        let opts = VoxelscanOptions::from_config(SessionConfig::new().options());
        assert!(opts.dense_joins && opts.dense_aggregates);
    }
}
