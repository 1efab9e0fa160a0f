//! Sets of indices along one axis, kept as sorted, disjoint, non-adjacent half-open ranges. A predicate on one
//! coordinate column becomes one of these (see [`super::predicate`]), and the scan reads the Cartesian product of
//! the per-axis sets.

use std::fmt;
use std::ops::Range;

/// A set of indices in `0..u64::MAX`, normalised: ranges sorted, non-empty, neither overlapping nor touching.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct IndexSet {
    ranges: Vec<Range<u64>>,
}

impl IndexSet {
    /// No index at all.
    pub fn empty() -> IndexSet {
        IndexSet::default()
    }

    /// Every index of an axis of length `n`.
    pub fn full(n: u64) -> IndexSet {
        IndexSet::range(0..n)
    }

    /// The indices in `r` (nothing when it is empty or reversed).
    pub fn range(r: Range<u64>) -> IndexSet {
        let ranges = if r.start < r.end { vec![r] } else { Vec::new() };
        IndexSet { ranges }
    }

    /// Any ranges, in any order, overlapping or not.
    pub fn from_ranges(mut ranges: Vec<Range<u64>>) -> IndexSet {
        ranges.retain(|r| r.start < r.end);
        ranges.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        IndexSet { ranges: out }
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    pub fn min(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.start)
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.end - 1)
    }

    pub fn contains(&self, x: u64) -> bool {
        let k = self.ranges.partition_point(|r| r.end <= x);
        self.ranges.get(k).is_some_and(|r| r.start <= x)
    }

    /// True when this is the whole axis `0..n`.
    pub fn is_full(&self, n: u64) -> bool {
        n == 0 || (self.ranges.len() == 1 && self.ranges[0] == (0..n))
    }

    pub fn union(&self, other: &IndexSet) -> IndexSet {
        IndexSet::from_ranges(self.ranges.iter().chain(&other.ranges).cloned().collect())
    }

    pub fn intersect(&self, other: &IndexSet) -> IndexSet {
        let (mut a, mut b) = (0, 0);
        let mut out = Vec::new();
        while let (Some(x), Some(y)) = (self.ranges.get(a), other.ranges.get(b)) {
            let (start, end) = (x.start.max(y.start), x.end.min(y.end));
            if start < end {
                out.push(start..end);
            }
            if x.end <= y.end {
                a += 1;
            } else {
                b += 1;
            }
        }
        IndexSet { ranges: out }
    }

    /// The indices of `0..n` not in this set.
    pub fn complement(&self, n: u64) -> IndexSet {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut next = 0;
        for r in &self.ranges {
            if r.start >= n {
                break;
            }
            if r.start > next {
                out.push(next..r.start);
            }
            next = r.end;
        }
        if next < n {
            out.push(next..n);
        }
        IndexSet { ranges: out }
    }

    /// Only the indices below `n`.
    pub fn clamp(&self, n: u64) -> IndexSet {
        self.intersect(&IndexSet::full(n))
    }
}

/// numpy-style: `3`, `2:5`, `0:2|7:9` for several ranges, `[]` for none.
impl fmt::Display for IndexSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("[]");
        }
        for (k, r) in self.ranges.iter().enumerate() {
            if k > 0 {
                f.write_str("|")?;
            }
            if r.end == r.start + 1 {
                write!(f, "{}", r.start)?;
            } else {
                write!(f, "{}:{}", r.start, r.end)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(s: &IndexSet, n: u64) -> Vec<bool> {
        (0..n).map(|x| s.contains(x)).collect()
    }

    fn arb_set() -> impl Strategy<Value = IndexSet> {
        prop::collection::vec((0u64..40, 0u64..10), 0..5)
            .prop_map(|v| IndexSet::from_ranges(v.into_iter().map(|(a, l)| a..a + l).collect()))
    }

    #[test]
    fn normalises_overlapping_and_touching_ranges() {
        let s = IndexSet::from_ranges(vec![5..7, 0..2, 2..3, 6..9, 4..4]);
        assert_eq!(s.ranges(), &[0..3, 5..9]);
        assert_eq!(s.count(), 7);
        assert_eq!((s.min(), s.max()), (Some(0), Some(8)));
        assert_eq!(s.to_string(), "0:3|5:9");
        assert_eq!(IndexSet::range(3..4).to_string(), "3");
        assert_eq!(IndexSet::empty().to_string(), "[]");
    }

    proptest! {
        #[test]
        fn set_operations_match_membership(a in arb_set(), b in arb_set()) {
            let n = 50;
            let (ma, mb) = (members(&a, n), members(&b, n));
            let u = members(&a.union(&b), n);
            let i = members(&a.intersect(&b), n);
            let c = members(&a.complement(n), n);
            for x in 0..n as usize {
                prop_assert_eq!(u[x], ma[x] || mb[x]);
                prop_assert_eq!(i[x], ma[x] && mb[x]);
                prop_assert_eq!(c[x], !ma[x]);
            }
            prop_assert_eq!(a.clamp(n).count(), ma.iter().filter(|&&m| m).count() as u64);
            let inter = a.intersect(&b);
            prop_assert!(inter.ranges().windows(2).all(|w| w[0].end < w[1].start));
        }
    }
}
