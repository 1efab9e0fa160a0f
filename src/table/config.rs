//! Session settings of voxelscan's own plan choices, under the `voxelscan.` prefix (`SET voxelscan.dense_joins =
//! false`). They choose how a query runs, never what it answers: every test of a dense path also runs with it off.

use datafusion::common::config::{ConfigExtension, ConfigOptions};
use datafusion::common::extensions_options;
use datafusion::prelude::SessionConfig;

extensions_options! {
    /// voxelscan's settings (prefix `voxelscan`).
    pub struct VoxelscanOptions {
        /// Joins on coordinate keys whose build-side ranges are known, small and exact address build rows directly
        /// by key instead of hashing them.
        pub dense_joins: bool, default = true
        /// GROUP BY on coordinate keys with known, small, exact ranges aggregates into directly indexed groups.
        pub dense_aggregates: bool, default = true
        /// Aggregates of the value column grouped by coordinate columns (or by nothing) directly over a voxel scan
        /// are computed inside the scan: group indices from the slab layout, no coordinate columns.
        pub scan_aggregates: bool, default = true
        /// An aggregate over an inner join of a voxel scan with a small build side on coordinates (an atlas, a
        /// mask, a table of coordinates) is computed in one pass over the scan: build voxels addressed directly,
        /// groups numbered by build key and probe coordinate, no joined rows.
        pub fused_joins: bool, default = true
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
    }

    #[test]
    fn a_session_without_them_gets_defaults() {
        let opts = VoxelscanOptions::from_config(SessionConfig::new().options());
        assert!(opts.dense_joins && opts.dense_aggregates);
    }
}
