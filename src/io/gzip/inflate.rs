//! The one place that calls zlib's C API (through `libz-rs-sys`): a safe handle on one inflate stream. All of the
//! gzip code's `unsafe` lives here.

use std::ffi::{CStr, c_int, c_uint};

use libz_rs_sys as z;

use super::index::WINDOW_SIZE;

/// Where an inflate call writes its output.
pub(super) enum Output<'a> {
    /// An initialised buffer.
    Slice(&'a mut [u8]),
    /// The spare capacity of a vector (not zeroed first, which matters for the large buffers the data cache keeps).
    Spare(&'a mut Vec<u8>),
}

/// A safe handle on one zlib-rs inflate stream (the C API of `libz-rs-sys`).
pub(super) struct Inflater {
    // Boxed so that the stream never moves after initialisation (zlib's contract for `z_stream`).
    strm: Box<z::z_stream>,
}

// SAFETY: the z_stream and its state are owned exclusively by this value; the raw input/output pointers inside are
// set only for the duration of one `inflate` call made through `&mut self` and cleared afterwards, so nothing is
// shared with the thread that created it.
unsafe impl Send for Inflater {}

impl Inflater {
    pub(super) fn new(window_bits: c_int) -> std::result::Result<Inflater, String> {
        let mut strm = Box::new(z::z_stream::default());
        // SAFETY: `strm` is a valid default z_stream (allocator set, no state yet); the version string and struct
        // size are the library's own.
        let ret = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                size_of::<z::z_stream>() as c_int,
            )
        };
        if ret == z::Z_OK {
            Ok(Inflater { strm })
        } else {
            Err(format!("cannot start inflate (zlib code {ret})"))
        }
    }

    pub(super) fn reset(&mut self, window_bits: c_int) -> std::result::Result<(), String> {
        // SAFETY: the stream was initialised by `inflateInit2_` in `new`.
        let ret = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        if ret == z::Z_OK {
            Ok(())
        } else {
            Err(format!("cannot reset inflate (zlib code {ret})"))
        }
    }

    /// Start a raw stream mid-byte: `bits` high bits of `byte` are the first input bits.
    pub(super) fn prime(&mut self, bits: u8, byte: u8) -> std::result::Result<(), String> {
        if bits == 0 {
            return Ok(());
        }
        // SAFETY: initialised stream; 1..=7 bits is within inflatePrime's 16-bit limit.
        let ret = unsafe {
            z::inflatePrime(
                &mut *self.strm,
                c_int::from(bits),
                c_int::from(byte >> (8 - bits)),
            )
        };
        if ret == z::Z_OK {
            Ok(())
        } else {
            Err(format!("cannot prime inflate (zlib code {ret})"))
        }
    }

    pub(super) fn set_dictionary(&mut self, dict: &[u8]) -> std::result::Result<(), String> {
        if dict.is_empty() {
            return Ok(());
        }
        // SAFETY: initialised raw stream; `dict` is a valid slice of at most 32 KiB for the call's duration.
        let ret = unsafe {
            z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as c_uint)
        };
        if ret == z::Z_OK {
            Ok(())
        } else {
            Err(format!("cannot set the inflate window (zlib code {ret})"))
        }
    }

    /// The last (up to) 32 KiB of output since the stream's last reset.
    pub(super) fn window(&self) -> Vec<u8> {
        let mut buf = vec![0u8; WINDOW_SIZE];
        let mut len: c_uint = 0;
        // SAFETY: initialised stream; `buf` has the 32 KiB that inflateGetDictionary may write.
        unsafe { z::inflateGetDictionary(&*self.strm, buf.as_mut_ptr(), &mut len) };
        buf.truncate((len as usize).min(WINDOW_SIZE));
        buf
    }

    /// One `inflate` call writing at most `room` bytes into `out` (at `out[at..]` for a slice, onto the end of a
    /// vector's spare capacity, growing its length by what was made): (input bytes used, output bytes made, zlib
    /// return code).
    pub(super) fn inflate_into(
        &mut self,
        input: &[u8],
        out: &mut Output<'_>,
        at: usize,
        room: usize,
        flush: c_int,
    ) -> (usize, usize, c_int) {
        match out {
            Output::Slice(s) => {
                let room = room.min(s.len().saturating_sub(at));
                let region = &mut s[at..at + room];
                // SAFETY: `region` is a live, writable slice of exactly `room` bytes.
                unsafe { self.inflate(input, region.as_mut_ptr(), room, flush) }
            }
            Output::Spare(v) => {
                v.reserve(room);
                let spare = v.spare_capacity_mut();
                // SAFETY: the spare capacity holds at least `room` bytes (reserved above) and stays alive and
                // unaliased for the call; inflate only writes it.
                let r =
                    unsafe { self.inflate(input, spare.as_mut_ptr().cast::<u8>(), room, flush) };
                // SAFETY: inflate initialised exactly the first `r.1 <= room` bytes of the spare capacity.
                unsafe { v.set_len(v.len() + r.1) };
                r
            }
        }
    }

    /// One `inflate` call writing into the `len` bytes at `out`: (input bytes used, output bytes made, zlib return
    /// code). The output may be uninitialised: inflate only writes it (and reads back only what it wrote).
    ///
    /// # Safety
    /// `out` must be valid for writes of `len` bytes for the duration of the call.
    unsafe fn inflate(
        &mut self,
        input: &[u8],
        out: *mut u8,
        len: usize,
        flush: c_int,
    ) -> (usize, usize, c_int) {
        let avail_in = input.len().min(c_uint::MAX as usize) as c_uint;
        let avail_out = len.min(c_uint::MAX as usize) as c_uint;
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = out;
        self.strm.avail_out = avail_out;
        // SAFETY: initialised stream; next_in/avail_in describe a live slice, next_out/avail_out a writable region
        // (the caller's contract), both outliving the call; they are cleared right after it.
        let ret = unsafe { z::inflate(&mut *self.strm, flush) };
        let used = (avail_in - self.strm.avail_in) as usize;
        let made = (avail_out - self.strm.avail_out) as usize;
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        (used, made, ret)
    }

    pub(super) fn data_type(&self) -> c_int {
        self.strm.data_type
    }

    pub(super) fn message(&self) -> String {
        if self.strm.msg.is_null() {
            return "invalid data".into();
        }
        // SAFETY: zlib-rs sets `msg` only to its static NUL-terminated messages.
        unsafe { CStr::from_ptr(self.strm.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` and ended exactly once, here.
        unsafe { z::inflateEnd(&mut *self.strm) };
    }
}
