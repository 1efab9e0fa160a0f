//! The one range merger: byte ranges a read needs → the ranges a source asks its medium for, each with the input
//! ranges it serves. Pure; every source that coalesces (object stores across gaps, remote gzip across the ranges its
//! decompression runs read) calls it with its own [`Coalesce`] policy. Local files need none: a positional read or a
//! copy out of a map costs the same whether or not its neighbour is read too.

use std::ops::Range;

/// How a source trades bytes read through gaps for fewer requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coalesce {
    /// Largest gap read through between two needed ranges (overlapping and touching ranges always merge).
    pub max_gap: u64,
    /// Most bytes read through gaps in all, as a fraction of the bytes needed (the union of the input ranges);
    /// `f64::INFINITY`: no bound. Gaps are spent smallest first.
    pub max_overread: f64,
}

impl Coalesce {
    /// Merge only ranges that overlap or touch.
    pub const TOUCHING: Coalesce = Coalesce {
        max_gap: 0,
        max_overread: 0.0,
    };

    /// Merge across every gap of at most `max_gap` bytes, however much that reads through.
    pub fn gap(max_gap: u64) -> Coalesce {
        Coalesce {
            max_gap,
            max_overread: f64::INFINITY,
        }
    }
}

/// One range to request and the input ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub range: Range<u64>,
    /// Indices into the input of the ranges inside `range`, in increasing order. Input range `i` is found at
    /// `input[i].start - range.start` in what `range` returns.
    pub parts: Vec<usize>,
}

/// Merge `ranges` (any order, overlaps allowed; empty ranges are served by the merged range they fall in, or by
/// one of their own) under `policy`. The result is sorted by start, its ranges disjoint and separated by more than
/// nothing; every input index appears in exactly one `parts`. Never more merged ranges than input ranges.
pub fn merge_ranges(ranges: &[Range<u64>], policy: Coalesce) -> Vec<Merged> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| (ranges[i].start, ranges[i].end));
    let end_of = |i: usize| ranges[i].end.max(ranges[i].start);
    // Between sorted neighbours k and k + 1: the gap after everything up to k (None: they overlap or touch).
    let mut gaps: Vec<(u64, usize)> = Vec::new();
    let mut joined = vec![false; order.len()];
    let (mut reach, mut needed) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        let (start, end) = (ranges[i].start, end_of(i));
        if k > 0 && start <= reach {
            joined[k - 1] = true;
        } else if k > 0 {
            gaps.push((start - reach, k - 1));
        }
        needed += end.saturating_sub(start.max(if k > 0 { reach } else { start }));
        reach = if k > 0 { reach.max(end) } else { end };
    }
    gaps.retain(|&(gap, _)| gap <= policy.max_gap);
    gaps.sort_unstable();
    let budget = match policy.max_overread {
        f if f.is_infinite() => f64::INFINITY,
        f => needed as f64 * f.max(0.0),
    };
    let mut spent = 0u64;
    for (gap, k) in gaps {
        if spent.saturating_add(gap) as f64 > budget {
            break;
        }
        spent += gap;
        joined[k] = true;
    }
    let mut out: Vec<Merged> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        match out.last_mut() {
            Some(m) if joined[k - 1] => {
                m.range.end = m.range.end.max(end_of(i));
                m.parts.push(i);
            }
            _ => out.push(Merged {
                range: ranges[i].start..end_of(i),
                parts: vec![i],
            }),
        }
    }
    for m in &mut out {
        m.parts.sort_unstable();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hulls(merged: &[Merged]) -> Vec<Range<u64>> {
        merged.iter().map(|m| m.range.clone()).collect()
    }

    #[test]
    fn gaps_touching_and_overlaps() {
        assert!(merge_ranges(&[], Coalesce::gap(10)).is_empty());
        let r = [0..4, 4..8, 10..12, 100..101];
        assert_eq!(
            hulls(&merge_ranges(&r, Coalesce::TOUCHING)),
            [0..8, 10..12, 100..101]
        );
        assert_eq!(
            hulls(&merge_ranges(&r, Coalesce::gap(2))),
            [0..12, 100..101]
        );
        let all = merge_ranges(&r, Coalesce::gap(88));
        assert_eq!(
            all,
            vec![Merged {
                range: 0..101,
                parts: vec![0, 1, 2, 3]
            }]
        );
        // Out of order and overlapping input: sorted output, parts pointing back into the input.
        let m = merge_ranges(&[10..15, 0..2, 12..22, 13..14], Coalesce::TOUCHING);
        assert_eq!(
            m,
            vec![
                Merged {
                    range: 0..2,
                    parts: vec![1]
                },
                Merged {
                    range: 10..22,
                    parts: vec![0, 2, 3]
                },
            ]
        );
        // A range inside an earlier, longer one does not reset where the run reaches.
        assert_eq!(
            hulls(&merge_ranges(&[0..100, 10..20, 50..60], Coalesce::TOUCHING)),
            [0..100]
        );
        assert_eq!(
            merge_ranges(
                &[u64::MAX - 1..u64::MAX, u64::MAX..u64::MAX],
                Coalesce::gap(u64::MAX)
            )
            .len(),
            1
        );
    }

    #[test]
    fn the_overread_budget_spends_the_smallest_gaps_first() {
        // 30 bytes needed; gaps 5, 1, 20. A 25 % budget (7.5 bytes) buys the gaps of 1 and 5, not 20.
        let r = [0..10, 15..20, 21..26, 46..51];
        let m = merge_ranges(
            &r,
            Coalesce {
                max_gap: 1 << 20,
                max_overread: 0.25,
            },
        );
        assert_eq!(hulls(&m), [0..26, 46..51]);
        // A 4 % budget (1.2 bytes) buys only the gap of 1.
        let m = merge_ranges(
            &r,
            Coalesce {
                max_gap: 1 << 20,
                max_overread: 0.04,
            },
        );
        assert_eq!(hulls(&m), [0..10, 15..26, 46..51]);
        // Gaps above max_gap are never read through, whatever the budget.
        let m = merge_ranges(
            &r,
            Coalesce {
                max_gap: 4,
                max_overread: 10.0,
            },
        );
        assert_eq!(hulls(&m), [0..10, 15..26, 46..51]);
    }

    proptest! {
        #[test]
        fn merged_ranges_serve_every_input_within_the_policy(
            raw in prop::collection::vec((0u64..300, 0u64..30), 0..30),
            max_gap in prop::sample::select(vec![0u64, 1, 5, 30, 1 << 20]),
            max_overread in prop::sample::select(vec![0.0, 0.1, 0.5, f64::INFINITY]),
        ) {
            let ranges: Vec<Range<u64>> = raw.iter().map(|&(s, n)| s..s + n).collect();
            let policy = Coalesce { max_gap, max_overread };
            let merged = merge_ranges(&ranges, policy);
            prop_assert!(merged.len() <= ranges.len());
            let mut seen = vec![0; ranges.len()];
            for m in &merged {
                for &i in &m.parts {
                    seen[i] += 1;
                    prop_assert!(m.range.start <= ranges[i].start && ranges[i].end <= m.range.end);
                }
                // Each merged range is the hull of its parts.
                prop_assert_eq!(m.parts.iter().map(|&i| ranges[i].start).min(), Some(m.range.start));
                prop_assert_eq!(m.parts.iter().map(|&i| ranges[i].end).max(), Some(m.range.end));
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
            for w in merged.windows(2) {
                prop_assert!(w[0].range.end < w[1].range.start);
                prop_assert!(w[0].range.end + max_gap < w[1].range.start || max_overread < f64::INFINITY);
            }
            // Bytes read through stay within the budget.
            let mut union = vec![false; 400];
            for r in &ranges {
                union[r.start as usize..r.end as usize].fill(true);
            }
            let needed = union.iter().filter(|&&b| b).count() as f64;
            let read: u64 = merged.iter().map(|m| m.range.end - m.range.start).sum();
            if max_overread.is_finite() {
                prop_assert!((read as f64 - needed) <= needed * max_overread + 1e-9);
            }
        }
    }
}
