//! Any text as a slice spec, then canonicalised against a few shapes (empty, zero-size, huge): Ok or Err, never
//! a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxelscan::slicer::{SliceSpec, canonical_slice};

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

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = SliceSpec::parse(text) else {
        return;
    };
    for shape in SHAPES {
        let _ = canonical_slice(&spec, shape);
    }
});
