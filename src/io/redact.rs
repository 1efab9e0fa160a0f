//! Secrets in table options (`OPTIONS ('aws.secret_access_key' '…')`) never appear in a display of a plan, a table
//! or a scan, nor in a log line: every `Debug` of [`StoreOptions`] shows them as `<redacted>`. (They still travel
//! inside plans to the cluster's executors, which need them; see README, "Security and limits".)

use std::fmt;

use super::remote::StoreOptions;

/// What a secret value is shown as.
pub const REDACTED: &str = "<redacted>";

/// Parts of a key that mark its value as a secret (keys are lower case): access keys and their ids, secret keys,
/// session and bearer tokens, passwords, SAS tokens and keys, account keys, service-account keys and credential
/// files, private keys. Ids count as secrets too: half a credential is still no one's business.
const SECRET_MARKS: &[&str] = &[
    "secret",
    "access_key",
    "token",
    "password",
    "sas",
    "account_key",
    "service_account",
    "credential",
    "private_key",
    "bearer",
    // Azure's account key under object_store's other names (`azure.master_key`, `azure_storage_master_key`), and
    // S3's customer-provided encryption key (`aws.sse_customer_key_base64`).
    "master_key",
    "customer_key",
];

/// Whether the value of option `key` is a secret (matched case-insensitively anywhere in the key).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_MARKS.iter().any(|m| key.contains(m))
}

/// `value`, or [`REDACTED`] when `key` names a secret.
pub fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_key(key) { REDACTED } else { value }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entries<'a>(&'a StoreOptions);
        impl fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.entries.iter().map(|(k, v)| (k, shown(k, v))))
                    .finish()
            }
        }
        f.debug_struct("StoreOptions")
            .field("entries", &Entries(self))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for key in [
            "aws.secret_access_key",
            "aws.access_key_id",
            "aws.session_token",
            "aws.token",
            "AWS.SECRET_ACCESS_KEY",
            "http.password",
            "azure.storage_sas_key",
            "azure.sas_token",
            "azure.storage_account_key",
            "azure.account_key",
            "gcp.service_account_key",
            "gcp.service_account_path",
            "google.application_credentials",
            "azure.client_secret",
            "azure.bearer_token",
            "azure.master_key",
            "azure.storage_master_key",
            "aws.sse_customer_key_base64",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "aws.region",
            "aws.endpoint",
            "aws.allow_http",
            "remote.retries",
            "remote.concurrency",
            "azure.account_name",
            "gcp.bucket",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let mut o = StoreOptions::default();
        o.insert("aws.secret_access_key", "SeCrEt-VaLuE").unwrap();
        o.insert("aws.access_key_id", "KeyIdValue").unwrap();
        o.insert("aws.region", "garage").unwrap();
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("SeCrEt-VaLuE") && !shown.contains("KeyIdValue"),
            "{shown}"
        );
        assert!(
            shown.contains("garage") && shown.contains(REDACTED),
            "{shown}"
        );
        let pretty = format!("{o:#?}");
        assert!(!pretty.contains("SeCrEt-VaLuE"), "{pretty}");
    }
}
