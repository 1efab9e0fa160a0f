//! The real-server harness of `tests/common/servers.rs` works: Garage stores objects and serves byte ranges over
//! S3 with the credentials it hands out (and refuses others), nginx answers Range requests with 206 and logs every
//! request with its bytes, and a stopped server refuses connections until it is restarted.
// object_store comes with the `remote` feature (on by default through `sql`).
#![cfg(feature = "remote")]

mod common;

use std::error::Error as _;
use std::io;

use common::servers::{
    Garage, Nginx, Request, block_on, parse_access_line, parse_key_create, parse_status_node_id,
};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::{HttpBuilder, HttpStore};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig};

/// `len` bytes that differ from their neighbours, so a shifted range cannot pass.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// An HTTP client for `url` that reports failures at once instead of retrying for minutes.
fn http_store(url: &str) -> HttpStore {
    let built = HttpBuilder::new()
        .with_url(url)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .build();
    match built {
        Ok(store) => store,
        Err(e) => panic!("HTTP client for {url}: {e}"),
    }
}

/// Whether the error chain holds a refused TCP connection.
fn is_connection_refused(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(cause) = source {
        if let Some(io_error) = cause.downcast_ref::<io::Error>()
            && io_error.kind() == io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = cause.source();
    }
    false
}

// ---- Garage --------------------------------------------------------------------------------------------------------

#[test]
fn garage_returns_the_byte_range_that_was_uploaded() {
    let garage = Garage::shared();
    let data = pattern(300_000);
    garage.put("smoke/range.bin", &data);
    let store = garage.store();
    let location = ObjectPath::from("smoke/range.bin");

    let got = block_on(store.get_range(&location, 123_456..200_001)).expect("ranged GET");
    assert_eq!(&got[..], &data[123_456..200_001]);

    let options = GetOptions {
        range: Some(GetRange::Bounded(10..20)),
        ..GetOptions::default()
    };
    let (range, size, bytes) = block_on(async {
        let result = store.get_opts(&location, options).await?;
        let (range, size) = (result.range.clone(), result.meta.size);
        Ok::<_, object_store::Error>((range, size, result.bytes().await?))
    })
    .expect("GET with options");
    assert_eq!((range, size), (10..20, 300_000));
    assert_eq!(&bytes[..], &data[10..20]);
}

#[test]
fn garage_env_is_enough_for_an_s3_client() {
    let garage = Garage::shared();
    garage.put("smoke/env.bin", b"reached through the environment");
    let env = garage.env();
    let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_ENDPOINT",
            "AWS_ALLOW_HTTP"
        ]
    );
    // The way AmazonS3Builder::from_env reads its variables, without touching this process's environment.
    let mut builder = AmazonS3Builder::new().with_bucket_name(garage.bucket());
    for (name, value) in &env {
        let key: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().expect("a known key");
        builder = builder.with_config(key, value);
    }
    let store = builder.build().expect("S3 client from the environment");
    let got = block_on(store.get(&ObjectPath::from("smoke/env.bin")))
        .map(|result| block_on(result.bytes()))
        .expect("GET")
        .expect("body");
    assert_eq!(&got[..], b"reached through the environment");
}

#[test]
fn garage_delete_makes_the_object_missing() {
    let garage = Garage::shared();
    garage.put("smoke/deleted.bin", b"short-lived");
    let store = garage.store();
    let location = ObjectPath::from("smoke/deleted.bin");
    assert_eq!(block_on(store.head(&location)).expect("HEAD").size, 11);
    garage.delete("smoke/deleted.bin");
    let missing = block_on(store.head(&location));
    assert!(
        matches!(missing, Err(object_store::Error::NotFound { .. })),
        "{missing:?}"
    );
}

#[test]
fn garage_refuses_a_wrong_secret() {
    let garage = Garage::shared();
    garage.put("smoke/secret.bin", b"not for strangers");
    let store = garage.store_with(garage.access_key_id(), &"0".repeat(64));
    let denied = block_on(store.get(&ObjectPath::from("smoke/secret.bin")));
    assert!(
        matches!(denied, Err(object_store::Error::PermissionDenied { .. })),
        "{:?}",
        denied.map(|r| r.meta)
    );
}

#[test]
fn garage_refuses_a_key_without_access_to_the_bucket() {
    let garage = Garage::shared();
    garage.put("smoke/private.bin", b"bucket members only");
    let outsider = garage.create_key("smoke-outsider");
    assert_ne!(outsider.id, garage.access_key_id());
    assert!(outsider.id.starts_with("GK"), "{outsider:?}");
    let store = garage.store_with(&outsider.id, &outsider.secret);
    let location = ObjectPath::from("smoke/private.bin");
    let read = block_on(store.get(&location)).map(|r| r.meta);
    assert!(
        matches!(read, Err(object_store::Error::PermissionDenied { .. })),
        "{read:?}"
    );
    let write = block_on(store.put(&location, b"overwritten".to_vec().into()));
    assert!(
        matches!(write, Err(object_store::Error::PermissionDenied { .. })),
        "{write:?}"
    );
    let env = garage.env_with(&outsider);
    assert!(env.contains(&("AWS_ACCESS_KEY_ID".to_string(), outsider.id.clone())));
}

#[test]
fn garage_stopped_refuses_connections_and_keeps_its_data_over_a_restart() {
    let garage = Garage::start();
    garage.put("kept.bin", b"survives a restart");
    garage.stop();
    let store = garage.store_with(garage.access_key_id(), garage.secret_access_key());
    // Three quick retries (see Garage::store_with), then the refusal.
    let down = block_on(store.head(&ObjectPath::from("kept.bin")));
    match down {
        Err(e) => assert!(is_connection_refused(&e), "{e:?}"),
        Ok(meta) => panic!("a stopped Garage answered: {meta:?}"),
    }
    garage.restart();
    let got = block_on(store.get_range(&ObjectPath::from("kept.bin"), 0..8)).expect("GET");
    assert_eq!(&got[..], b"survives");
}

// ---- nginx ---------------------------------------------------------------------------------------------------------

#[test]
fn nginx_answers_a_range_with_206_and_logs_it() {
    let nginx = Nginx::shared();
    let data = pattern(100_000);
    nginx.put("smoke/range.bin", &data);
    let store = http_store(&nginx.url());
    let location = ObjectPath::from("smoke/range.bin");

    let options = GetOptions {
        range: Some(GetRange::Bounded(10..1010)),
        ..GetOptions::default()
    };
    let (range, size, bytes) = block_on(async {
        let result = store.get_opts(&location, options).await?;
        let (range, size) = (result.range.clone(), result.meta.size);
        Ok::<_, object_store::Error>((range, size, result.bytes().await?))
    })
    .expect("ranged GET");
    // object_store accepts a ranged answer only as a 206 with a Content-Range: the total size comes from it.
    assert_eq!((range, size), (10..1010, 100_000));
    assert_eq!(&bytes[..], &data[10..1010]);

    let whole = block_on(async { store.get(&location).await?.bytes().await }).expect("GET");
    assert_eq!(whole.len(), data.len());

    let log = nginx.log_of("smoke/range.bin");
    let expected = [
        Request {
            method: "GET".into(),
            uri: "/smoke/range.bin".into(),
            status: 206,
            bytes: 1000,
            range: Some("bytes=10-1009".into()),
        },
        Request {
            method: "GET".into(),
            uri: "/smoke/range.bin".into(),
            status: 200,
            bytes: 100_000,
            range: None,
        },
    ];
    assert_eq!(log, expected);
}

#[test]
fn nginx_missing_file_is_not_found() {
    let nginx = Nginx::shared();
    let store = http_store(&nginx.url());
    let missing = block_on(store.head(&ObjectPath::from("smoke/absent.bin")));
    assert!(
        matches!(missing, Err(object_store::Error::NotFound { .. })),
        "{missing:?}"
    );
    let log = nginx.log_of("smoke/absent.bin");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].method.as_str(), log[0].status), ("HEAD", 404));
}

#[test]
fn nginx_stopped_refuses_connections_until_restarted() {
    let root = tempfile::tempdir().expect("temp dir");
    let nginx = Nginx::start(root.path());
    // The readiness probes (bare TCP connections) leave no log line: counts start at zero.
    assert_eq!(nginx.log(), []);
    nginx.put("a/b.bin", &pattern(5000));
    assert!(root.path().join("a/b.bin").is_file());
    let store = http_store(&nginx.url());
    let location = ObjectPath::from("a/b.bin");
    let got = block_on(store.get_range(&location, 4000..5000)).expect("GET");
    assert_eq!(&got[..], &pattern(5000)[4000..]);

    nginx.stop();
    // A new client: the old one's pooled keep-alive connection may see the stop as a cut response instead.
    let down = block_on(http_store(&nginx.url()).get_range(&location, 0..10));
    match down {
        Err(e) => assert!(is_connection_refused(&e), "{e:?}"),
        Ok(bytes) => panic!("a stopped nginx answered {} bytes", bytes.len()),
    }

    nginx.restart();
    nginx.clear_log();
    let store = http_store(&nginx.url());
    let got = block_on(store.get_range(&location, 0..10)).expect("GET after restart");
    assert_eq!(&got[..], &pattern(5000)[..10]);
    let log = nginx.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].status, log[0].bytes), (206, 10));
    nginx.delete("a/b.bin");
    assert!(!root.path().join("a/b.bin").exists());
}

#[test]
fn nginx_log_counts_concurrent_requests() {
    let nginx = Nginx::shared();
    nginx.put("smoke/many.bin", &pattern(64 * 1024));
    let store = http_store(&nginx.url());
    let location = ObjectPath::from("smoke/many.bin");
    let ranges: Vec<std::ops::Range<u64>> = (0..8).map(|i| i * 8192..i * 8192 + 100).collect();
    let parts = block_on(async {
        let reads = ranges.iter().map(|r| store.get_range(&location, r.clone()));
        futures::future::try_join_all(reads).await
    })
    .expect("concurrent GETs");
    assert!(parts.iter().all(|part| part.len() == 100));
    let log = nginx.log_of("smoke/many.bin");
    assert_eq!(log.len(), 8, "{log:?}");
    assert!(
        log.iter().all(|r| r.status == 206 && r.bytes == 100),
        "{log:?}"
    );
    assert_eq!(log.iter().map(|r| r.bytes).sum::<u64>(), 800);
}

// ---- parsers -------------------------------------------------------------------------------------------------------

#[test]
fn access_lines_parse_with_and_without_range() {
    let ranged = parse_access_line(r#"GET 206 1000 "bytes=10-1009" /dir/a file.nii"#);
    assert_eq!(
        ranged,
        Some(Request {
            method: "GET".into(),
            uri: "/dir/a file.nii".into(),
            status: 206,
            bytes: 1000,
            range: Some("bytes=10-1009".into()),
        })
    );
    let plain = parse_access_line(r#"HEAD 404 0 "-" /x"#).expect("parses");
    assert_eq!((plain.range, plain.bytes), (None, 0));
    assert_eq!(parse_access_line("GET 200 12"), None);
    assert_eq!(parse_access_line(r#"GET two 12 "-" /x"#), None);
}

#[test]
fn garage_cli_outputs_parse() {
    let key = "==== ACCESS KEY INFORMATION ====\n\
               Key ID:              GK31c2f218a2e44f485b94239e\n\
               Key name:            outsider\n\
               Secret key:          b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835\n\
               Created:             2026-11-26 22:40:00.000 +00:00\n";
    let parsed = parse_key_create("outsider", key).expect("parses");
    assert_eq!(parsed.id, "GK31c2f218a2e44f485b94239e");
    assert_eq!(
        parsed.secret,
        "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835"
    );
    assert_eq!(parse_key_create("x", "Key ID: GK1\n"), None);

    let status = "==== HEALTHY NODES ====\n\
                  ID                Hostname  Address          Tags  Zone  Capacity          DataAvail  Version\n\
                  563e1ac825ee3323  host      127.0.0.1:3901                NO ROLE ASSIGNED             v2.5.0\n";
    assert_eq!(
        parse_status_node_id(status).as_deref(),
        Some("563e1ac825ee3323")
    );
    assert_eq!(parse_status_node_id("==== HEALTHY NODES ====\n"), None);
}

#[test]
fn servers_listen_on_loopback_only() {
    let nginx = Nginx::shared();
    assert!(nginx.url().starts_with("http://127.0.0.1:"));
    let garage = Garage::shared();
    assert!(garage.endpoint().starts_with("http://127.0.0.1:"));
    for port in [nginx.port(), garage_port(garage)] {
        let v4 = listening_addresses("/proc/net/tcp", port);
        assert_eq!(v4, ["0100007F"], "IPv4 listeners on port {port}");
        let v6 = listening_addresses("/proc/net/tcp6", port);
        assert!(v6.is_empty(), "IPv6 listeners on port {port}: {v6:?}");
    }
}

/// The local addresses (kernel hex) of the sockets listening on `port`, from `/proc/net/tcp{,6}`.
fn listening_addresses(table: &str, port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let suffix = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let address = local.strip_suffix(suffix.as_str())?;
            (*state == LISTEN).then(|| address.to_string())
        })
        .collect()
}

fn garage_port(garage: &Garage) -> u16 {
    garage
        .endpoint()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port in the endpoint")
}
