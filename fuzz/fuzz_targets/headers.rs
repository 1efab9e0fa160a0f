//! Any bytes as the start of an image file: every header parser must answer Ok or Err, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    voxelscan::formats::fuzz_parse(data);
});
