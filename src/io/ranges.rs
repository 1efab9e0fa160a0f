//! The one range merger: byte ranges a read needs → the ranges a source asks its medium for, each with the input
//! ranges it serves. Pure; every source that coalesces (object stores across gaps, remote gzip across the ranges its
//! decompression runs read, local positional reads across gaps below a page) calls it with its own [`Coalesce`]
//! policy.
//!
//! Requests to a store cost a round trip each and bytes cost transfer time, so a store's policy carries a
//! [`CostModel`]: gaps are read through, smallest first, as long as that lowers the modelled time of the whole read
//! (fewer round trips for more bytes), within the optional hard bounds of the policy (largest gap, over-read
//! budget, largest request).

use std::ops::Range;

/// The modelled time of a read made of `requests` GETs fetching `bytes` in all, at most `concurrency` in flight:
///
/// ```text
/// ceil(requests / concurrency) × rtt  +  requests × per_request  +  bytes / bandwidth
/// ```
///
/// Round trips overlap within a wave of requests in flight; `bandwidth` is what the read receives as a whole (a
/// client's link, not each stream, is taken as the limit: a conservative figure against reading through large gaps);
/// `per_request` is the client's own work per GET (building and signing it, parsing its response), which does not
/// overlap on a few cores and makes a plan with fewer GETs win when the round trips are the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Seconds from sending a GET to its first byte.
    pub rtt: f64,
    /// Bytes per second a read receives.
    pub bandwidth: f64,
    /// GETs in flight at once (at least 1).
    pub concurrency: u64,
    /// Seconds of client work per GET.
    pub per_request: f64,
}

impl CostModel {
    /// Modelled seconds for `requests` GETs of `bytes` in all (0 for no request).
    pub fn cost(&self, requests: u64, bytes: u64) -> f64 {
        if requests == 0 {
            return 0.0;
        }
        let waves = requests.div_ceil(self.concurrency.max(1)) as f64;
        waves * self.rtt.max(0.0)
            + requests as f64 * self.per_request.max(0.0)
            + bytes as f64 / self.bandwidth.max(f64::MIN_POSITIVE)
    }

    /// Modelled seconds for one GET per range of `ranges`.
    pub fn cost_of(&self, ranges: impl IntoIterator<Item = Range<u64>>) -> f64 {
        let (mut requests, mut bytes) = (0u64, 0u64);
        for r in ranges {
            requests += 1;
            bytes = bytes.saturating_add(r.end.saturating_sub(r.start));
        }
        self.cost(requests, bytes)
    }
}

/// How a source trades bytes read through gaps for fewer requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coalesce {
    /// Largest gap read through between two needed ranges (overlapping and touching ranges always merge).
    pub max_gap: u64,
    /// Most bytes read through gaps in all, as a fraction of the bytes needed (the union of the input ranges);
    /// `f64::INFINITY`: no bound. Gaps are spent smallest first.
    pub max_overread: f64,
    /// Largest merged range that reads through a gap (`u64::MAX`: no bound). Ranges that overlap or touch join
    /// whatever their size: they are needed bytes, not bytes read through.
    pub max_request: u64,
    /// `Some`: read through gaps (smallest first, within the bounds) only as far as the modelled time falls —
    /// the cheapest of the plans that merge the k smallest allowed gaps. `None`: every gap the bounds allow.
    pub cost: Option<CostModel>,
}

impl Coalesce {
    /// Merge only ranges that overlap or touch.
    pub const TOUCHING: Coalesce = Coalesce {
        max_gap: 0,
        max_overread: 0.0,
        max_request: u64::MAX,
        cost: None,
    };

    /// Merge across every gap of at most `max_gap` bytes, however much that reads through.
    pub fn gap(max_gap: u64) -> Coalesce {
        Coalesce {
            max_gap,
            max_overread: f64::INFINITY,
            max_request: u64::MAX,
            cost: None,
        }
    }

    /// Merge as far as `model` says it pays, across gaps of at most `max_gap` bytes, into requests of at most
    /// `max_request` bytes.
    pub fn by_cost(model: CostModel, max_gap: u64, max_request: u64) -> Coalesce {
        Coalesce {
            max_gap,
            max_overread: f64::INFINITY,
            max_request,
            cost: Some(model),
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
/// nothing; every input index appears in exactly one `parts`. Never more merged ranges than input ranges; with a
/// cost model, never a higher modelled cost than merging only ranges that overlap or touch.
pub fn merge_ranges(ranges: &[Range<u64>], policy: Coalesce) -> Vec<Merged> {
    let runs = touching_runs(ranges);
    let joined = gaps_to_join(&runs, policy);
    let mut out: Vec<Merged> = Vec::with_capacity(runs.len());
    for (k, run) in runs.into_iter().enumerate() {
        match out.last_mut() {
            Some(m) if joined[k - 1] => {
                m.range.end = m.range.end.max(run.range.end);
                m.parts.extend(run.parts);
            }
            _ => out.push(run),
        }
    }
    for m in &mut out {
        m.parts.sort_unstable();
    }
    out
}

/// The input sorted and grouped into runs of ranges that overlap or touch (each run's range is their hull).
fn touching_runs(ranges: &[Range<u64>]) -> Vec<Merged> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| (ranges[i].start, ranges[i].end));
    let mut runs: Vec<Merged> = Vec::new();
    for i in order {
        let (start, end) = (ranges[i].start, ranges[i].end.max(ranges[i].start));
        match runs.last_mut() {
            Some(m) if start <= m.range.end => {
                m.range.end = m.range.end.max(end);
                m.parts.push(i);
            }
            _ => runs.push(Merged {
                range: start..end,
                parts: vec![i],
            }),
        }
    }
    runs
}

/// Which gaps between neighbouring runs to read through (`joined[k]`: run k and run k + 1 become one request).
/// Gaps are taken smallest first, skipping those over `max_gap` or that would make a request longer than
/// `max_request`, until the over-read budget is spent. With a cost model, only the cheapest prefix of those merges
/// is kept: for a given number of requests the smallest gaps read the fewest bytes, so (without the size bound)
/// that prefix is the cheapest plan of all.
fn gaps_to_join(runs: &[Merged], policy: Coalesce) -> Vec<bool> {
    let mut joined = vec![false; runs.len().saturating_sub(1)];
    let needed: u64 = runs.iter().map(|m| m.range.end - m.range.start).sum();
    let mut gaps: Vec<(u64, usize)> = runs
        .windows(2)
        .enumerate()
        .map(|(k, w)| (w[1].range.start - w[0].range.end, k))
        .filter(|&(gap, _)| gap <= policy.max_gap)
        .collect();
    gaps.sort_unstable();
    let budget = match policy.max_overread {
        f if f.is_infinite() => f64::INFINITY,
        f => needed as f64 * f.max(0.0),
    };
    // Each cluster of joined runs is known by its ends: `first_of[last]` and `last_of[first]`.
    let mut first_of: Vec<usize> = (0..runs.len()).collect();
    let mut last_of: Vec<usize> = (0..runs.len()).collect();
    let mut taken: Vec<usize> = Vec::new();
    let mut spent = 0u64;
    let (mut best, mut best_cost) = (
        0usize,
        policy.cost.map(|c| c.cost(runs.len() as u64, needed)),
    );
    for (gap, k) in gaps {
        if spent.saturating_add(gap) as f64 > budget {
            break;
        }
        let (first, last) = (first_of[k], last_of[k + 1]);
        if runs[last].range.end - runs[first].range.start > policy.max_request {
            continue;
        }
        last_of[first] = last;
        first_of[last] = first;
        spent += gap;
        taken.push(k);
        if let (Some(model), Some(c)) = (policy.cost, best_cost) {
            let cost = model.cost((runs.len() - taken.len()) as u64, needed + spent);
            // On a tie, the plan with fewer requests (each costs money as well as time).
            if cost <= c {
                (best, best_cost) = (taken.len(), Some(cost));
            }
        }
    }
    if policy.cost.is_none() {
        best = taken.len();
    }
    for &k in &taken[..best] {
        joined[k] = true;
    }
    joined
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
            vec![0..100]
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
                max_overread: 0.25,
                ..Coalesce::gap(1 << 20)
            },
        );
        assert_eq!(hulls(&m), [0..26, 46..51]);
        // A 4 % budget (1.2 bytes) buys only the gap of 1.
        let m = merge_ranges(
            &r,
            Coalesce {
                max_overread: 0.04,
                ..Coalesce::gap(1 << 20)
            },
        );
        assert_eq!(hulls(&m), [0..10, 15..26, 46..51]);
        // Gaps above max_gap are never read through, whatever the budget.
        let m = merge_ranges(
            &r,
            Coalesce {
                max_overread: 10.0,
                ..Coalesce::gap(4)
            },
        );
        assert_eq!(hulls(&m), [0..10, 15..26, 46..51]);
    }

    /// 3 s per round trip, 1 byte/s: a gap of g bytes costs g seconds.
    fn model(concurrency: u64) -> CostModel {
        CostModel {
            rtt: 3.0,
            bandwidth: 1.0,
            concurrency,
            per_request: 0.0,
        }
    }

    #[test]
    fn the_model_counts_waves_of_round_trips_and_streams() {
        let m = CostModel {
            rtt: 0.025,
            bandwidth: 1e6,
            concurrency: 4,
            per_request: 0.001,
        };
        assert_eq!(m.cost(0, 0), 0.0);
        // 9 requests in flight 4 at a time: 3 waves, 9 ms of client work, 8 MB at 1 MB/s.
        assert!((m.cost(9, 8_000_000) - (0.075 + 0.009 + 8.0)).abs() < 1e-9);
        assert!((m.cost(1, 1_000_000) - 1.026).abs() < 1e-9);
        assert_eq!(m.cost_of([0..10, 20..30]), m.cost(2, 20));
    }

    #[test]
    fn merges_go_as_far_as_the_model_says_they_pay() {
        // Four 10-byte ranges, gaps 1, 2 and 50; one GET at a time: each merge saves 3 s and costs its gap's bytes.
        let r = [0..10, 11..21, 23..33, 83..93];
        let m = merge_ranges(&r, Coalesce::by_cost(model(1), u64::MAX, u64::MAX));
        assert_eq!(hulls(&m), [0..33, 83..93]);
        // Two in flight, 4 s round trips: 4 and 3 requests are 2 waves (48 s, 49 s), 2 requests 1 wave (47 s), 1
        // request 97 s. The first merge alone does not pay; with the second it does.
        let two = CostModel {
            rtt: 4.0,
            ..model(2)
        };
        let m = merge_ranges(&r, Coalesce::by_cost(two, u64::MAX, u64::MAX));
        assert_eq!(hulls(&m), [0..33, 83..93]);
        assert_eq!(
            (two.cost(4, 40), two.cost(3, 41), two.cost(2, 43)),
            (48.0, 49.0, 47.0)
        );
        // In one wave, only the client's work per request pays for merges: 1.5 s buys the gap of 1 byte, not 2.
        let work = CostModel {
            rtt: 4.0,
            per_request: 1.5,
            ..model(8)
        };
        let m = merge_ranges(&r, Coalesce::by_cost(work, u64::MAX, u64::MAX));
        assert_eq!(hulls(&m), [0..21, 23..33, 83..93]);
        // Round trips for free: nothing is worth reading through.
        let free = CostModel {
            rtt: 0.0,
            ..model(1)
        };
        assert_eq!(
            merge_ranges(&r, Coalesce::by_cost(free, u64::MAX, u64::MAX)).len(),
            4
        );
        // A round trip worth 100 bytes: everything in one GET.
        let slow = CostModel {
            rtt: 100.0,
            ..model(1)
        };
        let m = merge_ranges(&r, Coalesce::by_cost(slow, u64::MAX, u64::MAX));
        assert_eq!(hulls(&m), vec![0..93]);
        // ... unless the gap bound, the size bound or the over-read budget says otherwise.
        let m = merge_ranges(&r, Coalesce::by_cost(slow, 10, u64::MAX));
        assert_eq!(hulls(&m), [0..33, 83..93]);
        let m = merge_ranges(&r, Coalesce::by_cost(slow, u64::MAX, 21));
        assert_eq!(hulls(&m), [0..21, 23..33, 83..93]);
        let budget = Coalesce {
            max_overread: 0.1,
            ..Coalesce::by_cost(slow, u64::MAX, u64::MAX)
        };
        assert_eq!(hulls(&merge_ranges(&r, budget)), [0..33, 83..93]);
        // Touching ranges join whatever the size bound.
        let m = merge_ranges(&[0..10, 10..20], Coalesce::by_cost(slow, u64::MAX, 5));
        assert_eq!(hulls(&m), vec![0..20]);
    }

    #[test]
    fn a_size_bound_skips_a_merge_and_takes_later_ones() {
        // Gaps 1 (between the two long ranges) and 2, 3 (short ones): the first would make a 41-byte request.
        let r = [0..20, 21..41, 100..105, 107..112, 115..120];
        let m = merge_ranges(
            &r,
            Coalesce::by_cost(
                CostModel {
                    rtt: 100.0,
                    ..model(1)
                },
                10,
                30,
            ),
        );
        assert_eq!(hulls(&m), [0..20, 21..41, 100..120]);
    }

    proptest! {
        #[test]
        fn merged_ranges_serve_every_input_within_the_policy(
            raw in prop::collection::vec((0u64..300, 0u64..30), 0..30),
            max_gap in prop::sample::select(vec![0u64, 1, 5, 30, 1 << 20]),
            max_overread in prop::sample::select(vec![0.0, 0.1, 0.5, f64::INFINITY]),
            max_request in prop::sample::select(vec![1u64, 20, 64, u64::MAX]),
            cost in prop::option::of((0.0f64..50.0, 0.1f64..10.0, 1u64..8, 0.0f64..3.0)),
        ) {
            let ranges: Vec<Range<u64>> = raw.iter().map(|&(s, n)| s..s + n).collect();
            let cost = cost.map(|(rtt, bandwidth, concurrency, per_request)| CostModel {
                rtt,
                bandwidth,
                concurrency,
                per_request,
            });
            let policy = Coalesce { max_gap, max_overread, max_request, cost };
            let merged = merge_ranges(&ranges, policy);
            prop_assert!(merged.len() <= ranges.len());
            let mut seen = vec![0; ranges.len()];
            let mut union = vec![false; 400];
            for r in &ranges {
                union[r.start as usize..r.end as usize].fill(true);
            }
            for m in &merged {
                for &i in &m.parts {
                    seen[i] += 1;
                    prop_assert!(m.range.start <= ranges[i].start && ranges[i].end <= m.range.end);
                }
                // Each merged range is the hull of its parts.
                prop_assert_eq!(m.parts.iter().map(|&i| ranges[i].start).min(), Some(m.range.start));
                prop_assert_eq!(m.parts.iter().map(|&i| ranges[i].end).max(), Some(m.range.end));
                // Longer than the size bound only when it reads through no gap (needed bytes only).
                let through = (m.range.start..m.range.end).filter(|&b| !union[b as usize]).count();
                prop_assert!(m.range.end - m.range.start <= max_request || through == 0);
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
            for w in merged.windows(2) {
                prop_assert!(w[0].range.end < w[1].range.start);
                let bounded = max_overread < f64::INFINITY || max_request < u64::MAX || cost.is_some();
                prop_assert!(w[0].range.end + max_gap < w[1].range.start || bounded);
            }
            // Bytes read through stay within the budget.
            let needed = union.iter().filter(|&&b| b).count() as f64;
            let read: u64 = merged.iter().map(|m| m.range.end - m.range.start).sum();
            if max_overread.is_finite() {
                prop_assert!((read as f64 - needed) <= needed * max_overread + 1e-9);
            }
            // The chosen plan never costs more, in the model, than merging only what touches.
            if let Some(model) = cost {
                let touching = merge_ranges(&ranges, Coalesce::TOUCHING);
                let chosen = model.cost_of(merged.iter().map(|m| m.range.clone()));
                let plain = model.cost_of(touching.iter().map(|m| m.range.clone()));
                prop_assert!(chosen <= plain, "{} > {}", chosen, plain);
            }
        }

        /// Without bounds, no plan that merges the same number of gaps reads fewer bytes, and the chosen number of
        /// requests is the cheapest: checked against every plan over up to 8 runs.
        #[test]
        fn without_bounds_the_cost_model_finds_the_cheapest_plan(
            raw in prop::collection::vec((0u64..200, 1u64..20), 1..9),
            rtt in 0.0f64..40.0,
            concurrency in 1u64..5,
            per_request in 0.0f64..5.0,
        ) {
            let ranges: Vec<Range<u64>> = raw.iter().map(|&(s, n)| s..s + n).collect();
            let model = CostModel { rtt, bandwidth: 1.0, concurrency, per_request };
            let runs: Vec<Range<u64>> =
                merge_ranges(&ranges, Coalesce::TOUCHING).into_iter().map(|m| m.range).collect();
            let chosen = model.cost_of(
                merge_ranges(&ranges, Coalesce::by_cost(model, u64::MAX, u64::MAX)).into_iter().map(|m| m.range),
            );
            // Every subset of the gaps between runs, as a bit mask.
            let gaps = runs.len().saturating_sub(1);
            for mask in 0u32..(1 << gaps) {
                let mut plan: Vec<Range<u64>> = vec![runs[0].clone()];
                for k in 0..gaps {
                    if mask & (1 << k) != 0 {
                        if let Some(last) = plan.last_mut() {
                            last.end = runs[k + 1].end;
                        }
                    } else {
                        plan.push(runs[k + 1].clone());
                    }
                }
                prop_assert!(chosen <= model.cost_of(plan) + 1e-9);
            }
        }
    }
}
