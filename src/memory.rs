//! Memory sized from header claims: a budget checked before a result is allocated, and allocations that fail
//! with an error instead of aborting the process.
//!
//! A header can claim any array size; the data behind it may be far shorter (a gzip member ending early) or the
//! claim may simply exceed the machine. Reads therefore check what their result would need against
//! [`result_budget`] first (`error: <file>: the result would need N bytes …`), and allocate the big buffers
//! fallibly, so an allocation the system refuses is an error too, never an abort.

use std::collections::TryReserveError;

use crate::error::{Result, VoxelError};

/// Environment variable overriding the default budget: a number of bytes, optionally with a `K`, `M`, `G` or `T`
/// suffix (powers of 1024), e.g. `VOXELSCAN_MAX_RESULT_BYTES=8G`.
pub const BUDGET_ENV: &str = "VOXELSCAN_MAX_RESULT_BYTES";

/// The most bytes one read may hold for its result: `VOXELSCAN_MAX_RESULT_BYTES` when set, otherwise the machine's
/// physical memory, lowered to the address space left under a `ulimit -v` (RLIMIT_AS) limit.
pub fn result_budget() -> Result<u64> {
    if let Some(value) = std::env::var_os(BUDGET_ENV) {
        let text = value.to_string_lossy();
        return parse_bytes(&text).ok_or_else(|| {
            VoxelError::Invalid(format!(
                "{BUDGET_ENV} should be a number of bytes (suffix K, M, G or T allowed), not {text:?}"
            ))
        });
    }
    Ok(physical_memory().min(address_space_left()))
}

/// `123`, `64K`, `8G`, `1T` (case-insensitive, an optional `B`/`iB` after the suffix).
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (digits, shift) = match t.chars().next_back()? {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Physical memory in bytes (`u64::MAX` when the system does not say).
fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system configuration; it has no memory-safety preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(p), Ok(s)) if p > 0 && s > 0 => p.saturating_mul(s),
        _ => u64::MAX,
    }
}

/// Address space still free under RLIMIT_AS: the limit minus what the process has mapped already (`u64::MAX`
/// without a limit).
fn address_space_left() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass, which lives for the whole call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    limit.rlim_cur.saturating_sub(mapped_bytes())
}

/// The process's virtual size (first field of `/proc/self/statm`, in pages); 0 when unknown.
fn mapped_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: as in `physical_memory`.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    pages.saturating_mul(page)
}

/// Refuse, before allocating, `what` (e.g. "the result") of a read from `location` needing `needed` bytes when that
/// exceeds the budget.
pub fn check(location: &str, what: &str, needed: u64) -> Result<()> {
    let budget = result_budget()?;
    if needed > budget {
        return Err(VoxelError::TooLarge {
            path: location.to_string(),
            what: what.to_string(),
            needed,
            why: format!(
                "more than the {budget} bytes allowed (physical memory or the address-space limit; set \
                 {BUDGET_ENV} to change)"
            ),
        });
    }
    Ok(())
}

/// `n` elements of `size` bytes, saturating (a count that overflows is certainly over any budget).
pub fn bytes_of(n: u64, size: u64) -> u64 {
    n.saturating_mul(size)
}

/// The error for an allocation of `needed` bytes the system refused.
pub fn allocation_failed(
    location: &str,
    what: &str,
    needed: u64,
    e: TryReserveError,
) -> VoxelError {
    VoxelError::TooLarge {
        path: location.to_string(),
        what: what.to_string(),
        needed,
        why: format!("the allocation failed ({e})"),
    }
}

/// A zeroed byte buffer of `n` bytes, or an error naming `location` when it cannot be allocated.
pub fn zeroed_bytes(location: &str, what: &str, n: usize) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| allocation_failed(location, what, n as u64, e))?;
    v.resize(n, 0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_values_parse_with_suffixes() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes(" 1T "), Some(1 << 40));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("99999999999999999999T"), None);
        assert_eq!(parse_bytes("16777216T"), None);
    }

    #[test]
    fn the_default_budget_is_positive_and_huge_needs_are_refused() {
        // The variable may be set by whoever runs the tests; either way the budget is a real number.
        let budget = result_budget().unwrap_or(u64::MAX);
        assert!(budget > 0);
        let err = check("x.nii.gz", "the result", u64::MAX).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("x.nii.gz: the result would need 18446744073709551615 bytes"),
            "{text}"
        );
        assert!(check("x.nii.gz", "the result", 1).is_ok());
    }

    #[test]
    fn refused_allocations_are_errors() {
        let err = zeroed_bytes("f.npy", "the result", usize::MAX).unwrap_err();
        assert!(
            err.to_string().contains("f.npy: the result would need"),
            "{err}"
        );
        assert_eq!(zeroed_bytes("f", "x", 5).unwrap(), vec![0u8; 5]);
    }
}
