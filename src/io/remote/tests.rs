use super::link::Link;
use super::object::*;
use super::*;
use crate::io::ranges::Coalesce;
use crate::plan::Segment;

fn seg(offset: u64, len: u64) -> Segment {
    Segment { offset, len }
}

#[test]
fn requests_coalesce_small_gaps_only() {
    let segs = [seg(0, 10), seg(15, 5), seg(100, 10)];
    let r = requests(
        &segs,
        Coalesce {
            max_overread: 1.0,
            ..Coalesce::gap(8)
        },
    );
    assert_eq!(
        r,
        vec![
            Request {
                range: 0..20,
                out: 0..15,
                copies: vec![(0, 0, 10), (15, 10, 5)]
            },
            Request {
                range: 100..110,
                out: 15..25,
                copies: vec![(0, 0, 10)]
            },
        ]
    );
    // How many requests the segments take under a gap limit and an overread budget.
    let count = |max_gap, max_overread| {
        requests(
            &segs,
            Coalesce {
                max_overread,
                ..Coalesce::gap(max_gap)
            },
        )
        .len()
    };
    assert_eq!(count(0, 1.0), 3);
    assert_eq!(count(1000, 100.0), 1);
    // The overread budget (25 needed bytes × 0.25 = 6) allows the 5-byte gap, not the 80-byte one.
    assert_eq!(count(1000, 0.25), 2);
    assert_eq!(count(1000, 0.0), 3);
}

#[test]
fn overread_stays_within_budget_and_requests_within_segments() {
    let segs: Vec<Segment> = (0..50u64)
        .map(|k| seg(k * 37 + (k % 7) * 11, 5 + k % 4))
        .collect();
    let needed: u64 = segs.iter().map(|s| s.len).sum();
    for ratio in [0.0, 0.1, 0.25, 1.0, 10.0] {
        let r = requests(
            &segs,
            Coalesce {
                max_overread: ratio,
                ..Coalesce::gap(1 << 20)
            },
        );
        let fetched: u64 = r.iter().map(|q| q.range.end - q.range.start).sum();
        assert!(
            fetched as f64 <= needed as f64 * (1.0 + ratio),
            "ratio {ratio}"
        );
        assert!(r.len() <= segs.len());
    }
}

#[test]
fn responses_in_any_chunking_rebuild_the_segments() {
    // Object bytes are their offsets mod 251; any chunking of any response must rebuild the segments.
    let segs = [seg(3, 7), seg(12, 1), seg(40, 30), seg(200, 64)];
    let want: Vec<u8> = segs
        .iter()
        .flat_map(|s| (s.offset..s.offset + s.len).map(|b| (b % 251) as u8))
        .collect();
    for (gap, chunk) in [(0, 1), (4, 3), (50, 16), (1000, 1000)] {
        let reqs = requests(
            &segs,
            Coalesce {
                max_overread: 100.0,
                ..Coalesce::gap(gap)
            },
        );
        let mut out = vec![0u8; want.len()];
        let parts = split_out(&mut out, &reqs).unwrap();
        for (q, part) in reqs.iter().zip(parts) {
            let body: Vec<u8> = q.range.clone().map(|b| (b % 251) as u8).collect();
            for (k, c) in body.chunks(chunk).enumerate() {
                scatter(q, (k * chunk) as u64, c, part);
            }
        }
        assert_eq!(out, want, "gap {gap} chunk {chunk}");
    }
}

#[test]
fn store_options_check_keys_and_numbers() {
    let mut o = StoreOptions::default();
    o.insert("aws.endpoint", "http://127.0.0.1:3900").unwrap();
    o.insert("AWS.ACCESS_KEY_ID", "k").unwrap();
    o.insert("aws.allow_http", "true").unwrap();
    o.insert("remote.gap", "4096").unwrap();
    assert_eq!(o.gap().unwrap(), 4096);
    assert!(o.insert("aws.endpont", "x").is_err());
    assert!(o.insert("remote.gap", "big").is_err());
    assert!(o.insert("remote.speed", "1").is_err());
    for (key, good, bad) in [
        ("remote.rtt", "25", "-1"),
        ("remote.rtt", "0.5ms", "fast"),
        ("remote.rtt", "0.03s", "NaN"),
        ("remote.bandwidth", "80M", "0"),
        ("remote.max_request", "8M", "8X"),
        ("remote.overread", "0.25", "-0.1"),
    ] {
        o.insert(key, good).unwrap();
        let err = o.insert(key, bad).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(bad), "{err}");
    }
    assert!(StoreOptions::is_store_key("gcp.service_account_path"));
    assert!(!StoreOptions::is_store_key("scaling"));
}

mod headers {
    use super::super::header::*;
    use super::super::object::*;
    use super::super::*;
    use crate::dtype::ByteOrder;
    use crate::formats::ImageHeader;
    use crate::formats::test_util::{HeaderBuilder, mgh_file};
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};
    use std::io::Write;
    use std::sync::Arc;

    fn gz(members: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in members {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(m).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    }

    fn object(name: &str, bytes: &[u8]) -> RemoteObject {
        let store = Arc::new(InMemory::new());
        let path = ObjectPath::from(name);
        block_on(store.put(&path, PutPayload::from(bytes.to_vec())))
            .unwrap()
            .unwrap();
        RemoteObject::in_store(
            &format!("memory://bucket/{name}"),
            store,
            path,
            bytes.len() as u64,
            None,
            &StoreOptions::default(),
        )
    }

    /// The header of `bytes` stored as `name`, and the requests made after the first; `first` is the first
    /// GET's length (`None`: what the name suggests).
    fn open(name: &str, bytes: &[u8], first: Option<u64>) -> (Result<ImageHeader>, u64) {
        let obj = object(name, bytes);
        let n = first.unwrap_or_else(|| header_prefix(name)).min(obj.size());
        let prefix = obj.get_range_blocking(0..n).unwrap().to_vec();
        let mut fetch = HeaderFetch::new(&obj, prefix);
        let header = fetch.parse(&crate::location::Location::Object(
            crate::location::ObjectUrl::parse(obj.url()).unwrap(),
        ));
        (header, fetch.requests)
    }

    fn with_extensions(payload: usize) -> Vec<u8> {
        let p = vec![7u8; payload];
        let esize = (8 + payload).div_ceil(16) * 16;
        HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
            .vox_offset((352 + 3 * esize) as f64)
            .single_file(&[(6, &p), (6, &p), (6, &p)], &[1u8; 48])
    }

    #[test]
    fn nifti_extensions_come_in_one_more_request() {
        let file = with_extensions(1000);
        let (h, requests) = open("e.nii", &file, None);
        let h = h.unwrap();
        assert_eq!((h.layout.offset, h.header_bytes, requests), (3376, 3376, 1));
        // Gzip: the first 4 KiB hold it all.
        let (h, requests) = open("e.nii.gz", &gz(&[&file]), None);
        assert_eq!((h.unwrap().layout.offset, requests), (3376, 0));
        // A long gzip header: the compressed prefix grows, never re-read per extension.
        let big = with_extensions(300_000);
        let (h, requests) = open("big.nii.gz", &gz(&[&big]), Some(64));
        assert_eq!(h.unwrap().layout.offset, 352 + 3 * 300_016);
        assert!(requests <= 4, "{requests}");
    }

    #[test]
    fn headers_asking_past_their_cap_are_errors_naming_the_url() {
        let mut file = HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
            .vox_offset(1e9)
            .build();
        file.extend_from_slice(&[1, 0, 0, 0]);
        file.extend_from_slice(&(100i32 << 20).to_le_bytes());
        file.extend_from_slice(&6i32.to_le_bytes());
        file.resize(2 << 20, 0);
        let (h, _) = open("cap.nii.gz", &gz(&[&file]), None);
        let msg = h.unwrap_err().to_string();
        assert!(
            msg.contains("memory://bucket/cap.nii.gz") && msg.contains("limit"),
            "{msg}"
        );
        // Uncompressed, the object's own length answers: one GET up to its end (within the cap), then the
        // extension is truncated.
        let (h, requests) = open("cap.nii", &file, None);
        assert!(h.unwrap_err().to_string().contains("truncated"));
        assert_eq!(requests, 1);
        // npy: numpy's own header limit.
        let mut npy = b"\x93NUMPY\x02\x00".to_vec();
        npy.extend_from_slice(&60_000u32.to_le_bytes());
        npy.resize(70_000, b' ');
        let (h, requests) = open("big.npy", &npy, None);
        let msg = h.unwrap_err().to_string();
        assert!(msg.contains("big.npy") && msg.contains("10000"), "{msg}");
        assert_eq!(requests, 0);
    }

    fn mgh_4d() -> Vec<u8> {
        let mdc = [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
        let mut f = mgh_file([20, 30, 4, 5], 3, 1, [1.0; 3], mdc, [0.0; 3]);
        f.extend(vec![0u8; 20 * 30 * 4 * 5 * 4]);
        f.extend_from_slice(&2000f32.to_be_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f
    }

    #[test]
    fn an_mgh_footer_is_one_ranged_request_not_the_data() {
        let (h, requests) = open("f.mgh", &mgh_4d(), None);
        assert_eq!((h.unwrap().zooms[3], requests), (2000.0, 1));
        let (h, _) = open("f.mgz", &gz(&[&mgh_4d()]), Some(100));
        assert_eq!(h.unwrap().zooms[3], 2000.0);
        // A footer past the end: the data are truncated.
        let mut cut = mgh_4d();
        cut.truncate(400);
        let (h, _) = open("cut.mgh", &cut, None);
        assert!(matches!(h, Err(VoxelError::Truncated { .. })), "{h:?}");
    }

    #[test]
    fn a_gzip_bomb_is_decompressed_no_further_than_the_header_claims() {
        let header = HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
            .single_file(&[], &[1u8; 48]);
        let zeros = vec![0u8; 1 << 20];
        let one = gz(&[&zeros]);
        let mut bomb = gz(&[&header]);
        for _ in 0..64 {
            bomb.extend_from_slice(&one);
        }
        // Bounded: at most `stop` bytes come out, and only `keep` are stored.
        let r = inflate(&bomb, 1000, Some(5000..5100), 10 << 20, "b").unwrap();
        assert_eq!((r.out, r.head.len(), r.tail.len()), (10 << 20, 1000, 100));
        // Fetched whole, the length check stops at the claimed 400 bytes.
        let (h, requests) = open("bomb.nii.gz", &bomb, Some(bomb.len() as u64));
        assert_eq!((h.unwrap().layout.offset, requests), (352, 0));
        // A claim beyond what the stream holds is truncated, after decompressing no more than it holds.
        let claims = HeaderBuilder::nifti1(ByteOrder::Little, &[1024, 1024, 1024], 4, true)
            .single_file(&[], &[]);
        let mut short = gz(&[&claims]);
        for _ in 0..8 {
            short.extend_from_slice(&one);
        }
        let (h, _) = open("short.nii.gz", &short, Some(short.len() as u64));
        match h {
            Err(VoxelError::Truncated {
                path,
                expected,
                actual,
            }) => {
                assert!(path.contains("short.nii.gz"));
                assert_eq!((expected, actual), (352 + (2 << 30), 352 + (8 << 20)));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn block_on_works_inside_and_outside_a_runtime() {
    assert_eq!(block_on(async { 7 }).unwrap(), 7);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let v = rt.block_on(async { block_on(async { 8 }).unwrap() });
    assert_eq!(v, 8);
}

/// The store options set the cost model; without them it is what the store's responses taught (from the defaults).
#[test]
fn the_cost_model_comes_from_options_or_from_the_link() {
    let link = Link::default();
    let plain = StoreOptions::default();
    let m = plain.cost_model(&link, 7).unwrap();
    assert_eq!(
        (m.rtt, m.bandwidth, m.concurrency),
        (DEFAULT_RTT, DEFAULT_BANDWIDTH, 7)
    );
    link.observe(
        std::time::Duration::from_millis(80),
        1 << 20,
        std::time::Duration::from_millis(100),
    );
    let learned = plain.cost_model(&link, 7).unwrap();
    assert!(
        learned.rtt > DEFAULT_RTT && learned.bandwidth < DEFAULT_BANDWIDTH,
        "{learned:?}"
    );
    let mut fixed = StoreOptions::default();
    fixed.insert("remote.rtt", "40").unwrap();
    fixed.insert("remote.bandwidth", "1G").unwrap();
    let m = fixed.cost_model(&link, 1).unwrap();
    assert_eq!((m.rtt, m.bandwidth), (0.04, (1u64 << 30) as f64));
    let c = fixed.coalesce(&link, 1).unwrap();
    assert_eq!(
        (c.max_gap, c.max_request, c.max_overread),
        (DEFAULT_GAP, DEFAULT_MAX_REQUEST, f64::INFINITY)
    );
    fixed.insert("remote.overread", "0.25").unwrap();
    assert_eq!(fixed.coalesce(&link, 1).unwrap().max_overread, 0.25);
}

/// The benchmark image's reads (96×96×60×300 int16 after a 352-byte header) under the default model: an ROI box
/// (160 rows of 32 bytes in 10 slices 18 KiB apart) is one GET of 165 KiB instead of one per row or two; a voxel's
/// time series stays one GET per point (1.1 MB apart: reading through would cost far more than the round trips
/// saved); a volume is one GET.
#[test]
fn default_plans_for_a_box_a_time_series_and_a_volume() {
    let (nx, ny, nz) = (96u64, 96u64, 60u64);
    let at = |i: u64, j: u64, k: u64, t: u64| 352 + 2 * (i + nx * (j + ny * (k + nz * t)));
    let policy = StoreOptions::default()
        .coalesce(&Link::default(), DEFAULT_CONCURRENCY)
        .unwrap();
    let roi: Vec<Segment> = (25..35)
        .flat_map(|k| (40..56).map(move |j| seg(at(40, j, k, 150), 32)))
        .collect();
    let r = requests(&roi, policy);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].range, at(40, 40, 25, 150)..at(56, 55, 34, 150));
    // The old policy (25 % over-read): far more GETs.
    let old = Coalesce {
        max_overread: 0.25,
        ..Coalesce::gap(DEFAULT_GAP)
    };
    assert!(requests(&roi, old).len() > 100);
    let series: Vec<Segment> = (0..300).map(|t| seg(at(48, 48, 30, t), 2)).collect();
    assert_eq!(requests(&series, policy).len(), 300);
    let volume = [seg(at(0, 0, 0, 150), 2 * nx * ny * nz)];
    assert_eq!(requests(&volume, policy).len(), 1);
}
