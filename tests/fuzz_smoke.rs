//! A deterministic stand-in for the cargo-fuzz targets in `fuzz/` (which need a nightly toolchain): the same two
//! entry points — `formats::fuzz_parse` on bytes and `SliceSpec::parse` + `canonical_slice` on text — over a
//! seeded corpus of valid headers/specs, their mutations and random inputs (~20k inputs in all). Every input
//! must give Ok or Err; a panic fails the test and prints the input.

use std::panic::{AssertUnwindSafe, catch_unwind};

use voxelscan::slicer::{SliceSpec, canonical_slice};

const HEADER_INPUTS: usize = 12_000;
const SLICE_INPUTS: usize = 10_000;

/// splitmix64: small, seeded, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

// ---------------------------------------------------------------------------------------------------- headers

/// Valid headers of every format, built byte by byte from the layouts in the reference (§4).
fn header_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        nifti1(b"n+1\0", 352.0, false),
        nifti1(b"ni1\0", 0.0, false),
        nifti1(b"n+1\0", 352.0, true),
        nifti2(b"n+2\0", 544, false),
        nifti2(b"ni2\0", 0, true),
        analyze(false),
        analyze(true),
        mgh(),
        npy(
            b"{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3, 4), }",
            1,
        ),
        npy(
            b"{'descr': '>f8', 'fortran_order': True, 'shape': (5,), }",
            2,
        ),
        npy(
            b"{'descr': '|u1', 'fortran_order': False, 'shape': (), }",
            1,
        ),
    ];
    // The real files too, as far as a parser reads (gzip ones as stored: a parser must cope or refuse).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nibabel");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                seeds.push(bytes[..bytes.len().min(4096)].to_vec());
            }
        }
    }
    seeds
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn nifti1(magic: &[u8; 4], vox_offset: f32, big: bool) -> Vec<u8> {
    let i16b = |v: i16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i32b = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let f32b = |v: f32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut h = vec![0u8; 352];
    put(&mut h, 0, &i32b(348));
    for (k, d) in [3i16, 4, 5, 6, 1, 1, 1, 1].iter().enumerate() {
        put(&mut h, 40 + 2 * k, &i16b(*d));
    }
    put(&mut h, 70, &i16b(4)); // int16
    put(&mut h, 72, &i16b(16));
    for k in 0..8 {
        put(&mut h, 76 + 4 * k, &f32b(1.0));
    }
    put(&mut h, 108, &f32b(vox_offset));
    put(&mut h, 112, &f32b(2.0));
    put(&mut h, 116, &f32b(-1.0));
    put(&mut h, 252, &i16b(1)); // qform_code
    put(&mut h, 254, &i16b(1)); // sform_code
    put(&mut h, 280, &f32b(1.0));
    put(&mut h, 300, &f32b(1.0));
    put(&mut h, 320, &f32b(1.0));
    put(&mut h, 344, magic);
    h.extend(std::iter::repeat_n(7u8, 120)); // some data
    h
}

fn nifti2(magic: &[u8; 4], vox_offset: i64, big: bool) -> Vec<u8> {
    let i16b = |v: i16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i32b = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i64b = |v: i64| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let f64b = |v: f64| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut h = vec![0u8; 544];
    put(&mut h, 0, &i32b(540));
    put(&mut h, 4, magic);
    put(&mut h, 8, &[0x0d, 0x0a, 0x1a, 0x0a]);
    put(&mut h, 12, &i16b(16)); // float32
    put(&mut h, 14, &i16b(32));
    for (k, d) in [4i64, 2, 3, 4, 5, 1, 1, 1].iter().enumerate() {
        put(&mut h, 16 + 8 * k, &i64b(*d));
    }
    for k in 0..8 {
        put(&mut h, 104 + 8 * k, &f64b(1.5));
    }
    put(&mut h, 168, &i64b(vox_offset));
    put(&mut h, 176, &f64b(0.5));
    put(&mut h, 344, &i32b(2)); // qform_code
    put(&mut h, 352, &f64b(0.5)); // quatern_b
    h.extend(std::iter::repeat_n(1u8, 480));
    h
}

fn analyze(big: bool) -> Vec<u8> {
    let i16b = |v: i16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let i32b = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let f32b = |v: f32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut h = vec![0u8; 348];
    put(&mut h, 0, &i32b(348));
    for (k, d) in [3i16, 2, 3, 4, 1, 1, 1, 1].iter().enumerate() {
        put(&mut h, 40 + 2 * k, &i16b(*d));
    }
    put(&mut h, 70, &i16b(2)); // uint8
    put(&mut h, 72, &i16b(8));
    put(&mut h, 80, &f32b(2.0));
    put(&mut h, 112, &f32b(0.0)); // SPM slope 0: falls back to glmax/cal
    put(&mut h, 124, &f32b(1.0));
    put(&mut h, 140, &i32b(255));
    put(&mut h, 253, &i16b(2)); // SPM origin
    h
}

fn mgh() -> Vec<u8> {
    let mut h = vec![0u8; 284];
    put(&mut h, 0, &1i32.to_be_bytes());
    for (k, d) in [3i32, 4, 5, 2].iter().enumerate() {
        put(&mut h, 4 + 4 * k, &d.to_be_bytes());
    }
    put(&mut h, 20, &3i32.to_be_bytes()); // float32
    put(&mut h, 28, &1i16.to_be_bytes()); // goodRASFlag
    for k in 0..3 {
        put(&mut h, 30 + 4 * k, &1.0f32.to_be_bytes());
        put(&mut h, 42 + 16 * k, &1.0f32.to_be_bytes()); // Mdc diagonal
    }
    h.extend(std::iter::repeat_n(0u8, 3 * 4 * 5 * 2 * 4 + 20));
    h
}

fn npy(dict: &[u8], version: u8) -> Vec<u8> {
    let mut h = b"\x93NUMPY".to_vec();
    h.push(version);
    h.push(0);
    let len = dict.len() + 1;
    if version == 1 {
        h.extend_from_slice(&(len as u16).to_le_bytes());
    } else {
        h.extend_from_slice(&(len as u32).to_le_bytes());
    }
    h.extend_from_slice(dict);
    h.push(b'\n');
    h.extend(std::iter::repeat_n(3u8, 64));
    h
}

/// Values that break naive arithmetic, for the numeric header fields.
const EVIL_I16: &[i16] = &[0, -1, 1, 7, 8, i16::MAX, i16::MIN, 255, 2048, 1536, 2304];
const EVIL_I32: &[i32] = &[0, -1, 1, i32::MAX, i32::MIN, 348, 540, 0x7fff_fff0];
const EVIL_F32: &[f32] = &[
    0.0,
    -0.0,
    f32::NAN,
    f32::INFINITY,
    -f32::INFINITY,
    1e30,
    -352.0,
    3.5e9,
    f32::MAX,
];
const EVIL_I64: &[i64] = &[0, -1, i64::MAX, i64::MIN, 1 << 40, 544];
/// Offsets of dims, datatype, vox_offset, scale factors etc. in the layouts above.
const HOT_SPOTS: &[usize] = &[
    0, 4, 8, 12, 16, 20, 24, 28, 40, 42, 44, 46, 48, 56, 70, 72, 108, 112, 116, 140, 144, 168, 176,
    344,
];

/// Little-endian bytes, reversed for big-endian.
fn ordered<const N: usize>(le: [u8; N], big: bool) -> Vec<u8> {
    let mut v = le.to_vec();
    if big {
        v.reverse();
    }
    v
}

fn mutate_header(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        if data.is_empty() {
            data.push(rng.next() as u8);
        }
        let len = data.len();
        match rng.below(9) {
            0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len);
                data[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 1]);
            }
            2 => data.truncate(rng.below(len + 1)),
            3 => data.extend((0..rng.below(600)).map(|_| rng.next() as u8)),
            4 | 5 => {
                // An extreme value at a field position, in either byte order.
                let at = *rng.pick(HOT_SPOTS);
                let big = rng.chance(50);
                let bytes = match rng.below(4) {
                    0 => ordered(rng.pick(EVIL_I16).to_le_bytes(), big),
                    1 => ordered(rng.pick(EVIL_I32).to_le_bytes(), big),
                    2 => ordered(rng.pick(EVIL_F32).to_le_bytes(), big),
                    _ => ordered(rng.pick(EVIL_I64).to_le_bytes(), big),
                };
                if at + bytes.len() <= len {
                    put(&mut data, at, &bytes);
                }
            }
            6 => {
                // Splice: the head of this seed with the tail of another.
                let cut = rng.below(len.min(other.len()) + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[cut.min(other.len())..]);
            }
            7 => {
                // npy header text mutations.
                let i = rng.below(len);
                data[i] = *rng.pick(b"(),:'{} 0123456789<>|fiucTFLxV[]");
            }
            _ => {
                let i = rng.below(len);
                let j = rng.below(len);
                data.swap(i, j);
            }
        }
    }
    data
}

#[test]
fn header_parsers_never_panic() {
    let seeds = header_seeds();
    let mut rng = Rng(0x5eed_4ead);
    let mut inputs: Vec<Vec<u8>> = seeds.clone();
    inputs.push(Vec::new());
    while inputs.len() < HEADER_INPUTS {
        if rng.chance(10) {
            let n = rng.below(700);
            inputs.push((0..n).map(|_| rng.next() as u8).collect());
        } else {
            let seed = rng.pick(&seeds).clone();
            let other = rng.pick(&seeds).clone();
            inputs.push(mutate_header(&mut rng, &seed, &other));
        }
    }
    let mut panics = Vec::new();
    for input in &inputs {
        if catch_unwind(AssertUnwindSafe(|| {
            voxelscan::formats::fuzz_parse(input);
        }))
        .is_err()
        {
            panics.push(hex_head(input));
        }
    }
    assert!(
        panics.is_empty(),
        "fuzz_parse panicked on {} of {} inputs; first ones (hex, first 96 bytes):\n{}",
        panics.len(),
        inputs.len(),
        panics
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn hex_head(data: &[u8]) -> String {
    let head: String = data.iter().take(96).map(|b| format!("{b:02x}")).collect();
    format!("len {}: {head}", data.len())
}

// ------------------------------------------------------------------------------------------------------ slices

const SPEC_SEEDS: &[&str] = &[
    "",
    "...",
    ":",
    "::",
    "0",
    "-1",
    "None",
    "1:3",
    "::-1",
    "10:20, ::-2, ..., None",
    "1:4, ::2, -2",
    "::-1, None, 3, ...",
    "-3:, 5:1:-2, :",
    "2, 3, 1, :",
    "None, None, 0, ..., None",
    "0,",
    " 1 , 2 ",
    "-100:100:7",
    "9223372036854775807",
    "-9223372036854775808:",
    "::9223372036854775807",
    "::-9223372036854775808",
    "0, 0, 0, 0, 0, 0",
];

/// Tokens to build and mutate specs from: valid pieces, near misses and junk.
const TOKENS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "-7",
    "10",
    ":",
    "::",
    ",",
    ", ",
    "...",
    "None",
    "-",
    "+",
    " ",
    "\t",
    "..",
    ".",
    "[",
    "]",
    "(",
    ")",
    "1.5",
    "1e3",
    "0x10",
    "_",
    "True",
    "newaxis",
    "99999999999999999999999",
    "-0",
    "…",
    "١",
    "None,",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "\u{0}",
    "\n",
    "::0",
    "Ellipsis",
];

fn mutate_spec(rng: &mut Rng, seed: &str) -> String {
    let mut parts: Vec<String> = seed
        .split_inclusive([',', ':'])
        .map(str::to_string)
        .collect();
    for _ in 0..=rng.below(3) {
        let at = rng.below(parts.len() + 1);
        match rng.below(4) {
            0 | 1 => parts.insert(at, rng.pick(TOKENS).to_string()),
            2 if !parts.is_empty() => {
                parts.remove(at.min(parts.len() - 1));
            }
            _ => {
                if let Some(p) = parts.get_mut(at) {
                    *p = rng.pick(TOKENS).to_string();
                }
            }
        }
    }
    parts.concat()
}

const SHAPES: &[&[usize]] = &[
    &[],
    &[0],
    &[1],
    &[10],
    &[3, 0, 5],
    &[4, 5, 6],
    &[2, 3, 4, 5, 6],
    &[1 << 40, 3],
    &[i64::MAX as usize],
];

#[test]
fn slice_parser_never_panics() {
    for seed in SPEC_SEEDS {
        assert!(
            SliceSpec::parse(seed).is_ok(),
            "valid Python index text {seed:?} must parse"
        );
    }
    let mut rng = Rng(0x0051_1ce5);
    let mut inputs: Vec<String> = SPEC_SEEDS.iter().map(|s| s.to_string()).collect();
    while inputs.len() < SLICE_INPUTS {
        if rng.chance(30) {
            inputs.push((0..rng.below(12)).map(|_| *rng.pick(TOKENS)).collect());
        } else {
            let seed = *rng.pick(SPEC_SEEDS);
            inputs.push(mutate_spec(&mut rng, seed));
        }
    }
    let mut panics = Vec::new();
    let mut parsed = 0;
    for text in &inputs {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Ok(spec) = SliceSpec::parse(text) else {
                return false;
            };
            for shape in SHAPES {
                let _ = canonical_slice(&spec, shape);
            }
            true
        }));
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => panics.push(format!("{text:?}")),
        }
    }
    assert!(
        panics.is_empty(),
        "slice parsing/canonicalisation panicked on {} inputs, e.g.:\n{}",
        panics.len(),
        panics
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The corpus must reach the canonicaliser, not only the parser's error paths.
    assert!(parsed > SLICE_INPUTS / 10, "only {parsed} inputs parsed");
}
