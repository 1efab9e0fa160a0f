use super::gather::*;
use super::slicers::*;
use super::*;
use crate::slicer::{SliceSpec, canonical_slice};
use proptest::prelude::*;

const ALWAYS: Heuristic<'static> = &|_, _, _| Some(Action::Full);
const NEVER: Heuristic<'static> = &|_, _, _| None;
const PARTIAL: Heuristic<'static> = &|_, _, _| Some(Action::Contiguous);

/// A filled nibabel slice.
fn fs(start: u64, stop: Option<u64>, step: i128) -> Filled {
    Filled::new(start, stop, step)
}

fn ws(start: u64, stop: Option<u64>, step: i128) -> Want {
    Want::Slice(fs(start, stop, step))
}

fn rs(start: u64, stop: u64, step: i128) -> ReadSel {
    ReadSel::Slice(fs(start, Some(stop), step))
}

fn range(start: usize, step: isize, len: usize) -> AxisSel {
    AxisSel::Range { start, step, len }
}

fn all(len: usize) -> AxisSel {
    range(0, 1, len)
}

fn plan(
    spec: &str,
    shape: &[usize],
    itemsize: usize,
    offset: u64,
    order: Order,
    skip: u64,
) -> ReadPlan {
    let slice = canonical_slice(&SliceSpec::parse(spec).unwrap(), shape).unwrap();
    ReadPlan::new(&slice, shape, itemsize, offset, order, skip).unwrap()
}

fn segs(p: &ReadPlan) -> Vec<(u64, u64)> {
    p.segments().iter().map(|s| (s.offset, s.len)).collect()
}

/// A file of `offset` junk bytes, then the array (every element's bytes derived from its storage index, so
/// that nearly all elements differ), then some junk.
fn simulated_file(shape: &[usize], itemsize: usize, offset: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut file = vec![0xEE; offset + n * itemsize + 7];
    for (e, chunk) in file[offset..offset + n * itemsize]
        .chunks_exact_mut(itemsize)
        .enumerate()
    {
        let v = ((e as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ e as u64).to_le_bytes();
        for (k, byte) in chunk.iter_mut().enumerate() {
            *byte = if k < 8 { v[k] } else { k as u8 ^ e as u8 };
        }
    }
    file
}

/// What a byte source does: the segments' bytes, concatenated.
fn read_segments(file: &[u8], p: &ReadPlan) -> Vec<u8> {
    let mut buf = Vec::new();
    for s in p.segments() {
        buf.extend_from_slice(&file[s.offset as usize..(s.offset + s.len) as usize]);
    }
    assert_eq!(buf.len() as u64, p.read_bytes());
    buf
}

/// numpy's answer, from the canonical slice by a plain walk over the result's coordinates.
fn expected(
    file: &[u8],
    (offset, itemsize): (usize, usize),
    slice: &CanonicalSlice,
    shape: &[usize],
    storage: Order,
    out: Order,
) -> Vec<u8> {
    let lists: Vec<(Vec<usize>, bool)> = slice
        .real_axes()
        .map(|sel| match *sel {
            AxisSel::Index(i) => (vec![i], false),
            AxisSel::Range { start, step, len } => (
                (0..len)
                    .map(|k| (start as isize + k as isize * step) as usize)
                    .collect(),
                true,
            ),
            AxisSel::NewAxis => unreachable!(),
        })
        .collect();
    let n = shape.len();
    let strides: Vec<usize> = (0..n)
        .map(|k| match storage {
            Order::F => shape[..k].iter().product(),
            Order::C => shape[k + 1..].iter().product(),
        })
        .collect();
    // Kept axes in the order the output walks them, fastest last.
    let mut walk: Vec<usize> = (0..n).filter(|&k| lists[k].1).collect();
    if out == Order::F {
        walk.reverse();
    }
    let fixed: usize = (0..n)
        .filter(|&k| !lists[k].1)
        .map(|k| lists[k].0[0] * strides[k])
        .sum();
    let mut flat = vec![fixed];
    for &k in &walk {
        let stride = strides[k];
        flat = flat
            .iter()
            .flat_map(|&f| lists[k].0.iter().map(move |&i| f + i * stride))
            .collect();
    }
    if lists.iter().any(|(l, _)| l.is_empty()) {
        flat.clear();
    }
    let mut bytes = Vec::with_capacity(flat.len() * itemsize);
    for e in flat {
        bytes.extend_from_slice(&file[offset + e * itemsize..][..itemsize]);
    }
    bytes
}

fn check_against_numpy(
    spec: &str,
    shape: &[usize],
    itemsize: usize,
    offset: usize,
    order: Order,
    skip: u64,
) {
    let slice = canonical_slice(&SliceSpec::parse(spec).unwrap(), shape).unwrap();
    let p = ReadPlan::new(&slice, shape, itemsize, offset as u64, order, skip).unwrap();
    type FileKey = (Vec<usize>, usize, usize);
    thread_local! {
        // Building the (64, 64, 30, 10) file once per test instead of once per spec keeps debug runs short.
        static FILES: std::cell::RefCell<Vec<(FileKey, std::rc::Rc<Vec<u8>>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let key = (shape.to_vec(), itemsize, offset);
    let file = FILES.with_borrow_mut(|files| {
        if let Some((_, f)) = files.iter().find(|(k, _)| *k == key) {
            return std::rc::Rc::clone(f);
        }
        let f = std::rc::Rc::new(simulated_file(shape, itemsize, offset));
        files.push((key, std::rc::Rc::clone(&f)));
        f
    });
    let buf = read_segments(&file, &p);
    for out in [Order::C, Order::F] {
        let got = p.gather(&buf, out).unwrap();
        assert_eq!(
            got,
            expected(&file, (offset, itemsize), &slice, shape, order, out),
            "{spec} on {shape:?} {order} -> {out}"
        );
    }
    assert_eq!(p.out_shape(), slice.out_shape().as_slice());
}

#[test]
fn order_parses_and_prints() {
    assert_eq!("F".parse::<Order>().unwrap(), Order::F);
    assert_eq!("f".parse::<Order>().unwrap(), Order::F);
    assert_eq!("C".parse::<Order>().unwrap(), Order::C);
    assert_eq!("c".parse::<Order>().unwrap(), Order::C);
    for bad in ["", "CF", "A", " C", "K"] {
        let err = bad.parse::<Order>().unwrap_err().to_string();
        assert!(err.contains("order should be one of 'C', 'F'"), "{err}");
    }
    assert_eq!(Order::F.to_string(), "F");
    assert_eq!(Order::C.to_string(), "C");
}

#[test]
fn slice_length_and_positive_form() {
    // §3.3 _full_slicer_len / slice2len on filled slices (n = 10).
    assert_eq!(fs(1, Some(10), 3).len(), 3);
    assert_eq!(fs(0, Some(10), 3).len(), 4);
    assert_eq!(fs(9, None, -3).len(), 4);
    assert_eq!(fs(9, Some(0), -3).len(), 3);
    assert_eq!(fs(9, Some(1), -1).len(), 8);
    assert_eq!(fs(9, Some(6), -1).len(), 3);
    assert_eq!(fs(3, Some(2), 1).len(), 0);
    assert_eq!(fs(2, Some(3), -1).len(), 0);
    // §3.3 _positive_slice.
    assert_eq!(fs(4, None, -2).positive(), fs(0, Some(5), 2));
    assert_eq!(fs(4, None, -1).positive(), fs(0, Some(5), 1));
    assert_eq!(fs(4, Some(1), -1).positive(), fs(2, Some(5), 1));
    assert_eq!(fs(4, Some(1), -2).positive(), fs(2, Some(5), 2));
    assert_eq!(fs(1, Some(5), 2).positive(), fs(1, Some(5), 2));
    // The canonical progression as a filled slice: tight end, None past zero.
    assert_eq!(Filled::from_range(0, 1, 10).unwrap(), fs(0, Some(10), 1));
    assert_eq!(Filled::from_range(9, -1, 10).unwrap(), fs(9, None, -1));
    assert_eq!(Filled::from_range(9, -1, 9).unwrap(), fs(9, Some(0), -1));
    assert_eq!(Filled::from_range(0, 3, 3).unwrap(), fs(0, Some(7), 3));
    assert_eq!(Filled::from_range(9, -3, 4).unwrap(), fs(9, None, -3));
}

#[test]
fn threshold_heuristic_vectors() {
    // §3.4.
    use Action::{Contiguous, Full};
    assert_eq!(threshold_heuristic(Want::Int(1), 9, 1, 8), Some(Full));
    assert_eq!(threshold_heuristic(Want::Int(1), 9, 1, 7), None);
    assert_eq!(threshold_heuristic(Want::Int(1), 9, 2, 16), Some(Full));
    assert_eq!(threshold_heuristic(Want::Int(1), 9, 2, 15), None);
    assert_eq!(threshold_heuristic(ws(0, Some(9), 1), 9, 2, 2), Some(Full));
    assert_eq!(threshold_heuristic(ws(0, Some(9), 1), 9, 2, 1), None);
    assert_eq!(threshold_heuristic(ws(0, Some(9), 2), 9, 2, 3), None);
    assert_eq!(threshold_heuristic(ws(8, None, -1), 9, 2, 2), Some(Full));
    assert_eq!(
        threshold_heuristic(ws(2, Some(9), 1), 9, 2, 2),
        Some(Contiguous)
    );
    assert_eq!(threshold_heuristic(ws(2, Some(9), 1), 9, 2, 1), None);
    assert_eq!(threshold_heuristic(ws(2, Some(9), 1), 9, 2, 4), Some(Full));
    assert_eq!(
        threshold_heuristic(ws(2, Some(9), 1), 9, 2, 3),
        Some(Contiguous)
    );
    // Absurd sizes saturate instead of overflowing.
    assert_eq!(
        threshold_heuristic(Want::Int(0), u64::MAX, u64::MAX, u64::MAX),
        None
    );
    assert_eq!(
        threshold_heuristic(ws(0, Some(1), i128::from(i64::MIN)), 10, u64::MAX, u64::MAX),
        None
    );
}

#[test]
fn optimize_slicer_vectors() {
    // §3.5: dim 10, stride 4.
    let opt = |w: Want, all_full: bool, slowest: bool, h: Heuristic| {
        optimize_slicer(w, 10, all_full, slowest, 4, h)
    };
    for h in [ALWAYS, NEVER, PARTIAL] {
        for (all_full, slowest) in [(false, false), (true, false), (true, true), (false, true)] {
            assert_eq!(
                opt(ws(0, Some(10), 1), all_full, slowest, h).unwrap(),
                (ReadSel::All, PostSel::All)
            );
            assert_eq!(
                opt(ws(9, None, -1), all_full, slowest, h).unwrap(),
                (ReadSel::All, PostSel::Step(-1))
            );
        }
    }
    let s9 = ws(0, Some(9), 1);
    assert_eq!(
        opt(s9, false, false, ALWAYS).unwrap(),
        (rs(0, 9, 1), PostSel::All)
    );
    assert_eq!(
        opt(s9, true, false, ALWAYS).unwrap(),
        (ReadSel::All, PostSel::Slice(fs(0, Some(9), 1)))
    );
    assert_eq!(
        opt(s9, true, true, ALWAYS).unwrap(),
        (rs(0, 9, 1), PostSel::All)
    );
    assert_eq!(
        opt(s9, true, false, NEVER).unwrap(),
        (rs(0, 9, 1), PostSel::All)
    );
    assert_eq!(
        opt(ws(1, Some(10), 1), true, false, NEVER).unwrap(),
        (rs(1, 10, 1), PostSel::All)
    );
    assert_eq!(
        opt(ws(8, None, -1), false, false, NEVER).unwrap(),
        (rs(0, 9, 1), PostSel::Step(-1))
    );
    assert_eq!(
        opt(ws(8, None, -1), true, false, ALWAYS).unwrap(),
        (ReadSel::All, PostSel::Slice(fs(8, None, -1)))
    );
    assert_eq!(
        opt(ws(9, Some(0), -1), false, false, NEVER).unwrap(),
        (rs(1, 10, 1), PostSel::Step(-1))
    );
    let s2 = ws(0, Some(10), 2);
    assert_eq!(
        opt(s2, false, false, NEVER).unwrap(),
        (rs(0, 10, 2), PostSel::All)
    );
    assert_eq!(
        opt(s2, true, false, NEVER).unwrap(),
        (rs(0, 10, 2), PostSel::All)
    );
    assert_eq!(
        opt(s2, true, false, ALWAYS).unwrap(),
        (ReadSel::All, PostSel::Slice(fs(0, Some(10), 2)))
    );
    assert_eq!(
        opt(s2, false, false, ALWAYS).unwrap(),
        (rs(0, 10, 2), PostSel::All)
    );
    assert_eq!(
        opt(s2, true, true, ALWAYS).unwrap(),
        (rs(0, 10, 1), PostSel::Step(2))
    );
    let back2 = ws(9, None, -2);
    assert_eq!(
        opt(back2, false, false, NEVER).unwrap(),
        (rs(1, 10, 2), PostSel::Step(-1))
    );
    assert_eq!(
        opt(back2, true, false, ALWAYS).unwrap(),
        (ReadSel::All, PostSel::Slice(fs(9, None, -2)))
    );
    assert_eq!(
        opt(ws(2, Some(8), 2), false, false, NEVER).unwrap(),
        (rs(2, 8, 2), PostSel::All)
    );
    assert_eq!(
        opt(ws(2, Some(8), 2), true, false, PARTIAL).unwrap(),
        (rs(2, 8, 1), PostSel::Step(2))
    );
    assert_eq!(
        opt(Want::Int(0), true, false, NEVER).unwrap(),
        (ReadSel::Int(0), PostSel::Dropped)
    );
    assert_eq!(
        opt(Want::Int(9), true, false, NEVER).unwrap(),
        (ReadSel::Int(9), PostSel::Dropped)
    );
    assert!(
        opt(Want::Int(0), true, false, PARTIAL)
            .unwrap_err()
            .to_string()
            .contains("int index cannot be contiguous")
    );
    assert_eq!(
        opt(Want::Int(0), true, false, ALWAYS).unwrap(),
        (ReadSel::All, PostSel::Int(0))
    );
    assert_eq!(
        opt(Want::Int(0), true, true, ALWAYS).unwrap(),
        (ReadSel::Int(0), PostSel::Dropped)
    );
    // A reversed step-2 slice read contiguously: forwards, then stepped backwards.
    assert_eq!(
        opt(ws(8, Some(1), -3), true, false, PARTIAL).unwrap(),
        (rs(2, 9, 1), PostSel::Step(-3))
    );
}

#[test]
fn optimize_read_slicers_vectors() {
    // §3.6, itemsize 4; axes fastest first (F order).
    let ors = |wants: &[Want], dims: &[u64], h: Heuristic| {
        optimize_read_slicers(wants, dims, 4, h).unwrap()
    };
    let full = |n: u64| ws(0, Some(n), 1);
    use PostSel as P;
    use ReadSel as R;
    assert_eq!(
        ors(&[Want::Int(1)], &[10], NEVER),
        (vec![R::Int(1)], vec![P::Dropped])
    );
    assert_eq!(
        ors(&[ws(0, Some(9), 1)], &[10], ALWAYS),
        (vec![rs(0, 9, 1)], vec![P::All])
    );
    assert_eq!(
        ors(&[ws(0, Some(9), 2)], &[10], ALWAYS),
        (vec![rs(0, 9, 1)], vec![P::Step(2)])
    );
    assert_eq!(
        ors(&[ws(0, Some(9), 1), full(6)], &[10, 6], ALWAYS),
        (
            vec![R::All, R::All],
            vec![P::Slice(fs(0, Some(9), 1)), P::All]
        )
    );
    assert_eq!(
        ors(&[full(10), ws(0, Some(5), 1)], &[10, 6], ALWAYS),
        (vec![R::All, rs(0, 5, 1)], vec![P::All, P::All])
    );
    assert_eq!(
        ors(&[ws(0, Some(9), 3), full(6)], &[10, 6], ALWAYS),
        (
            vec![R::All, R::All],
            vec![P::Slice(fs(0, Some(9), 3)), P::All]
        )
    );
    assert_eq!(
        ors(&[ws(0, Some(9), 3), full(6)], &[10, 6], PARTIAL),
        (vec![rs(0, 9, 1), R::All], vec![P::Step(3), P::All])
    );
    assert_eq!(
        ors(&[full(10), ws(0, Some(5), 2)], &[10, 6], ALWAYS),
        (vec![R::All, rs(0, 5, 1)], vec![P::All, P::Step(2)])
    );
    assert_eq!(
        ors(&[full(10), Want::Int(1)], &[10, 6], ALWAYS),
        (vec![R::All, R::Int(1)], vec![P::All, P::Dropped])
    );
    assert_eq!(
        ors(
            &[Want::Int(1), Want::Int(2), Want::Int(3)],
            &[2, 3, 4],
            ALWAYS
        ),
        (
            vec![R::All, R::All, R::Int(3)],
            vec![P::Int(1), P::Int(2), P::Dropped]
        )
    );
}

#[test]
fn slicers2segments_vectors() {
    // §3.7, offset 7, itemsize 4.
    let s2s = |reads: &[ReadSel], dims: &[u64]| -> Vec<(u64, u64)> {
        slicers2segments(reads, dims, 7, 4)
            .unwrap()
            .iter()
            .map(|s| (s.offset, s.len))
            .collect()
    };
    use ReadSel::{All, Int};
    assert_eq!(s2s(&[Int(0)], &[10]), vec![(7, 4)]);
    assert_eq!(s2s(&[Int(0), Int(1)], &[10, 6]), vec![(47, 4)]);
    // The reference prints 7 + 40 + 960 here; nibabel 5.4.2 itself returns 527 (2 * 240 for the third axis).
    assert_eq!(
        s2s(&[Int(0), Int(1), Int(2)], &[10, 6, 4]),
        vec![(7 + 40 + 480, 4)]
    );
    assert_eq!(s2s(&[All], &[10]), vec![(7, 40)]);
    assert_eq!(
        s2s(&[Int(0), All], &[10, 6]),
        (0..6).map(|i| (7 + 40 * i, 4)).collect::<Vec<_>>()
    );
    assert_eq!(s2s(&[All, Int(0)], &[10, 6]), vec![(7, 40)]);
    assert_eq!(s2s(&[All, All], &[10, 6]), vec![(7, 240)]);
    assert_eq!(s2s(&[All, All, Int(2)], &[10, 6, 4]), vec![(7 + 480, 240)]);
    // A strided fast axis, then a contiguous slow one: one copy per slow index.
    assert_eq!(
        s2s(&[rs(1, 6, 2), rs(2, 4, 1)], &[10, 6]),
        vec![(91, 4), (99, 4), (107, 4), (131, 4), (139, 4), (147, 4)]
    );
    assert!(slicers2segments(&[Int(3)], &[10], u64::MAX - 8, 4).is_err());
}

#[test]
fn calc_slicedefs_vectors() {
    // §3.8, itemsize 4, offset 7; `_never` is threshold 0 and `_always` the largest threshold here.
    let (never, always) = (0, u64::MAX);
    let p = plan("1", &[10], 4, 7, Order::F, never);
    assert_eq!(
        (segs(&p), p.read_shape(), p.post.clone()),
        (vec![(11, 4)], &[][..], vec![])
    );
    let p = plan(":", &[10], 4, 7, Order::F, never);
    assert_eq!(
        (segs(&p), p.read_shape(), p.post.clone()),
        (vec![(7, 40)], &[10][..], vec![all(10)])
    );
    let p = plan(":9", &[10], 4, 7, Order::F, never);
    assert_eq!((segs(&p), p.read_shape()), (vec![(7, 36)], &[9][..]));
    let p = plan("1:9", &[10], 4, 7, Order::F, never);
    assert_eq!((segs(&p), p.read_shape()), (vec![(11, 32)], &[8][..]));
    let p = plan("0", &[10, 6], 4, 7, Order::F, never);
    assert_eq!(
        segs(&p),
        (0..6).map(|i| (7 + 40 * i, 4)).collect::<Vec<_>>()
    );
    assert_eq!(p.read_shape(), &[6]);
    let p = plan("0", &[10, 6], 4, 7, Order::C, never);
    assert_eq!((segs(&p), p.read_shape()), (vec![(7, 24)], &[6][..]));
    let p = plan("1, 1:5", &[10, 6], 4, 7, Order::F, never);
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(51, 4), (91, 4), (131, 4), (171, 4)], &[4][..])
    );
    let p = plan("1, 1:5", &[10, 6], 4, 7, Order::C, never);
    assert_eq!((segs(&p), p.read_shape()), (vec![(35, 16)], &[4][..]));
    let p = plan(":, 1:5", &[10, 6], 4, 7, Order::F, never);
    assert_eq!((segs(&p), p.read_shape()), (vec![(47, 160)], &[10, 4][..]));
    let p = plan("1, :", &[10, 6], 4, 7, Order::F, always);
    assert_eq!((segs(&p), p.read_shape()), (vec![(7, 240)], &[10, 6][..]));
    assert_eq!(p.post, vec![AxisSel::Index(1), all(6)]);
    let p = plan(":, 1", &[10, 6], 4, 7, Order::F, always);
    assert_eq!(
        (segs(&p), p.read_shape(), p.post.clone()),
        (vec![(47, 40)], &[10][..], vec![all(10)])
    );
    // §3.6 with the threshold heuristic: 39 vs 40 bytes on (10, 6, 2).
    let p = plan(":9, :, :", &[10, 6, 2], 4, 0, Order::F, 39);
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(0, 480)], &[10, 6, 2][..])
    );
    assert_eq!(p.post, vec![range(0, 1, 9), all(6), all(2)]);
    let p = plan(":, :5, :", &[10, 6, 2], 4, 0, Order::F, 39);
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(0, 200), (240, 200)], &[10, 5, 2][..])
    );
    let p = plan(":, :5, :", &[10, 6, 2], 4, 0, Order::F, 40);
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(0, 480)], &[10, 6, 2][..])
    );
    assert_eq!(p.post, vec![all(10), range(0, 1, 5), all(2)]);
}

#[test]
fn default_heuristic_vectors_4d() {
    // §3.8 "additional vectors": (64, 64, 30, 10) int16 at 352.
    let shape = [64, 64, 30, 10];
    let f = |spec: &str| plan(spec, &shape, 2, 352, Order::F, SKIP_THRESHOLD);
    let p = f("..., 0");
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(352, 245_760)], &[64, 64, 30][..])
    );
    let p = f(":, :, 15, :");
    assert_eq!(
        segs(&p),
        (0..10)
            .map(|t| (123_232 + 245_760 * t, 8192))
            .collect::<Vec<_>>()
    );
    let p = f("32, 32, 15, :");
    let want: Vec<(u64, u64)> = (0..10)
        .map(|t| (352 + 32 * 128 + 15 * 8192 + 245_760 * t, 128))
        .collect();
    assert_eq!((segs(&p), p.read_shape()), (want, &[64, 10][..]));
    assert_eq!(p.post, vec![AxisSel::Index(32), all(10)]);
    let p = f("10:20, 10:12, 5, 0");
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(42_592, 256)], &[64, 2][..])
    );
    assert_eq!(p.post, vec![range(10, 1, 10), all(2)]);
    let p = f("::2, :, 0, 0");
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(352, 8192)], &[64, 64][..])
    );
    assert_eq!(p.post, vec![range(0, 2, 32), all(64)]);
    let p = f("0:64:200");
    assert_eq!(p.segments().len(), 19_200);
    assert!(p.segments().iter().all(|s| s.len == 2));
    assert_eq!(p.out_shape(), &[1, 64, 30, 10]);
    // The same array in C order.
    let c = |spec: &str| plan(spec, &shape, 2, 352, Order::C, SKIP_THRESHOLD);
    let p = c("..., 0");
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(352, 2_457_600)], &shape[..])
    );
    assert_eq!(p.post, vec![all(64), all(64), all(30), AxisSel::Index(0)]);
    let p = c("0");
    assert_eq!(
        (segs(&p), p.read_shape()),
        (vec![(352, 38_400)], &[64, 30, 10][..])
    );
    // (256, 156, 256) float32 F, the issue #558 shapes.
    let shape = [256, 156, 256];
    let f = |spec: &str| plan(spec, &shape, 4, 352, Order::F, SKIP_THRESHOLD);
    let p = f("0");
    assert_eq!(p.segments().len(), 39_936);
    assert!(p.segments().iter().all(|s| s.len == 4));
    let p = f(":, 0");
    assert_eq!(p.segments().len(), 256);
    assert!(p.segments().iter().all(|s| s.len == 1024));
    assert_eq!(segs(&f("..., 0")), vec![(352, 256 * 156 * 4)]);
    let p = f("::2");
    assert_eq!(segs(&p), vec![(352, 256 * 156 * 256 * 4)]);
    assert_eq!(p.post, vec![range(0, 2, 128), all(156), all(256)]);
}

#[test]
fn vectors_give_numpy_results() {
    for order in [Order::F, Order::C] {
        for skip in [0, SKIP_THRESHOLD, u64::MAX] {
            for spec in [
                "1", ":", ":9", "1:9", "::-1", "8::-3", "0", "1, 1:5", ":, 1:5", "1, :", ":, 1",
                "-1, ::-2",
            ] {
                let shape: &[usize] = if spec.contains(',') || spec == "0" {
                    &[10, 6]
                } else {
                    &[10]
                };
                check_against_numpy(spec, shape, 4, 7, order, skip);
            }
            for spec in [
                "..., 0",
                ":, :, 15, :",
                "32, 32, 15, :",
                "10:20, 10:12, 5, 0",
                "::2, :, 0, 0",
                "0:64:200",
            ] {
                check_against_numpy(spec, &[64, 64, 30, 10], 2, 352, order, skip);
            }
        }
    }
}

#[test]
fn zero_size_selections_read_nothing() {
    // Q8: nibabel fails with mmap(-1, 0) here.
    let p = plan("0:0, ::2", &[1000, 5], 8, 0, Order::F, SKIP_THRESHOLD);
    assert!(p.segments().is_empty());
    assert_eq!(p.read_bytes(), 0);
    assert_eq!(p.out_shape(), &[0, 3]);
    assert_eq!(p.read_shape(), &[0, 3]);
    assert_eq!(p.gather(&[], Order::C).unwrap(), Vec::<u8>::new());
    // Q6: zero-size arrays keep their shape; out-of-range integers still fail first.
    for (spec, shape, out) in [
        ("", &[0usize, 3][..], &[0usize, 3][..]),
        ("None, ..., 1", &[4, 0, 2], &[1, 4, 0]),
        ("5:, 0", &[3, 2], &[0]),
        ("::-1, 3:1", &[3, 4], &[3, 0]),
    ] {
        for order in [Order::F, Order::C] {
            let p = plan(spec, shape, 2, 9, order, SKIP_THRESHOLD);
            assert!(p.segments().is_empty() && p.read_bytes() == 0, "{spec}");
            assert_eq!(p.out_shape(), out, "{spec}");
            assert_eq!(p.gather(&[], Order::F).unwrap(), Vec::<u8>::new());
        }
    }
    let slice = CanonicalSlice {
        items: vec![AxisSel::Index(3), range(0, 1, 0)],
    };
    assert!(ReadPlan::new(&slice, &[3, 0], 2, 0, Order::F, 0).is_err());
}

#[test]
fn zero_dimensional_arrays_hold_one_element() {
    for spec in ["", "...", "None", "None, ..., None"] {
        let p = plan(spec, &[], 8, 100, Order::F, SKIP_THRESHOLD);
        assert_eq!(segs(&p), vec![(100, 8)]);
        let bytes: Vec<u8> = (0..8).collect();
        assert_eq!(p.gather(&bytes, Order::C).unwrap(), bytes);
        check_against_numpy(spec, &[], 8, 3, Order::C, 0);
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let full = CanonicalSlice::full(&[10, 10]);
    let err = |r: Result<ReadPlan>| r.unwrap_err().to_string();
    assert!(
        err(ReadPlan::new(&full, &[10], 2, 0, Order::F, 0))
            .contains("2 axes but the array is 1-dimensional")
    );
    assert!(err(ReadPlan::new(&full, &[10, 10], 0, 0, Order::F, 0)).contains("element size"));
    let huge = [usize::MAX, 2];
    assert!(
        err(ReadPlan::new(
            &CanonicalSlice::full(&huge),
            &huge,
            1,
            0,
            Order::F,
            0
        ))
        .contains("does not fit")
    );
    assert!(
        err(ReadPlan::new(
            &full,
            &[10, 10],
            8,
            u64::MAX - 10,
            Order::F,
            0
        ))
        .contains("does not fit")
    );
    let big = [1usize << 40, 1 << 30];
    assert!(ReadPlan::new(&CanonicalSlice::full(&big), &big, 2, 0, Order::C, 0).is_err());
    // Hand-built selections outside the array.
    for items in [
        vec![AxisSel::Index(10), all(10)],
        vec![range(5, 1, 6), all(10)],
        vec![range(5, -1, 7), all(10)],
        vec![range(0, 0, 2), all(10)],
        vec![range(usize::MAX, isize::MAX, usize::MAX), all(10)],
    ] {
        let slice = CanonicalSlice { items };
        assert!(err(ReadPlan::new(&slice, &[10, 10], 2, 0, Order::F, 0)).contains("out of bounds"));
    }
    let from_ranges = CanonicalSlice::from_ranges(&[0..11, 0..10]);
    assert!(ReadPlan::new(&from_ranges, &[10, 10], 2, 0, Order::F, 0).is_err());
    // A buffer of the wrong size.
    let p = plan("1:3", &[10], 2, 0, Order::F, 0);
    assert!(
        p.gather(&[0; 3], Order::C)
            .unwrap_err()
            .to_string()
            .contains("read buffer holds 3 bytes")
    );
}

#[test]
fn from_ranges_boxes_read_like_slices() {
    let shape = [7, 5, 3];
    let slice = CanonicalSlice::from_ranges(&[2..6, 1..5, 0..3]);
    let p = ReadPlan::new(&slice, &shape, 4, 16, Order::F, SKIP_THRESHOLD).unwrap();
    let spec = canonical_slice(&SliceSpec::parse("2:6, 1:5, 0:3").unwrap(), &shape).unwrap();
    assert_eq!(
        p,
        ReadPlan::new(&spec, &shape, 4, 16, Order::F, SKIP_THRESHOLD).unwrap()
    );
    check_against_numpy("2:6, 1:5", &shape, 4, 16, Order::C, 0);
}

#[test]
fn identity_plans_need_no_gather() {
    let id = |spec: &str, shape: &[usize], order: Order, out: Order| {
        plan(spec, shape, 2, 352, order, SKIP_THRESHOLD).is_identity(out)
    };
    assert!(id("", &[4, 5, 6], Order::F, Order::F));
    assert!(id("..., 3", &[4, 5, 6], Order::F, Order::F));
    assert!(id("None, :, :, 1", &[4, 5, 6], Order::F, Order::F));
    assert!(!id("..., 3", &[4, 5, 6], Order::F, Order::C));
    assert!(!id("::-1", &[4, 5, 6], Order::F, Order::F));
    assert!(!id("1", &[4, 5, 6], Order::F, Order::F));
    assert!(id("1", &[4, 5, 6], Order::C, Order::C));
}

#[test]
fn gather_fuses_contiguous_runs() {
    // A whole array in storage order is one run; a row-wise box in C order has runs as long as its rows.
    let p = plan("", &[4, 5, 6], 2, 0, Order::C, SKIP_THRESHOLD);
    assert_eq!(fused_dims(&p.axes, Order::C), vec![(120, 2)]);
    assert_eq!(
        fused_dims(&p.axes, Order::F),
        vec![(4, 60), (5, 12), (6, 2)]
    );
    let p = plan("1:3, :, 2:5", &[4, 5, 6], 2, 0, Order::C, u64::MAX);
    assert_eq!(fused_dims(&p.axes, Order::C), vec![(3, 2), (10, 12)]);
    let p = plan("None, 1, ::-1", &[4, 5], 1, 0, Order::C, 0);
    assert_eq!(fused_dims(&p.axes, Order::C), vec![(5, -1)]);
}

#[test]
fn layout_changes_copy_in_tiles() {
    // F storage to C output (and back) goes through the tiled copy; check it on shapes larger than a tile.
    let p = plan("", &[70, 9, 65], 2, 0, Order::F, SKIP_THRESHOLD);
    let dims = fused_dims(&p.axes, Order::C);
    assert_eq!(dims, vec![(65, 1260), (9, 140), (70, 2)]);
    assert_eq!(transpose_axis(&dims, 2), Some(2));
    assert_eq!(transpose_axis(&fused_dims(&p.axes, Order::F), 2), None);
    for itemsize in [1, 2, 3, 4, 8, 16] {
        for order in [Order::F, Order::C] {
            for spec in [
                "",
                "::-1",
                "3:68:2, 4, ::-3",
                "None, 1:, ::-1, 7:",
                "..., ::-1, None",
                "-1, :, :",
            ] {
                check_against_numpy(spec, &[70, 9, 65], itemsize, 5, order, SKIP_THRESHOLD);
            }
        }
    }
}

fn spec_strategy() -> impl Strategy<Value = SliceSpec> {
    use crate::slicer::Index;
    let bound = prop_oneof![Just(None), (-8i64..8).prop_map(Some)];
    let step = prop_oneof![
        Just(None),
        (-4i64..5)
            .prop_filter("non-zero", |s| *s != 0)
            .prop_map(Some)
    ];
    let index = prop_oneof![
        3 => (-6i64..6).prop_map(Index::Int),
        6 => (bound.clone(), bound, step).prop_map(|(start, stop, step)| Index::Slice { start, stop, step }),
        1 => Just(Index::Ellipsis),
        1 => Just(Index::NewAxis),
    ];
    prop::collection::vec(index, 0..7).prop_map(SliceSpec)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn plans_give_numpy_results(
        shape in prop::collection::vec(0usize..7, 0..6),
        spec in spec_strategy(),
        itemsize in prop::sample::select(vec![1usize, 2, 3, 4, 8, 16]),
        offset in 0usize..40,
        order in prop::sample::select(vec![Order::F, Order::C]),
        skip in prop::sample::select(vec![0u64, 1, 3, 7, 16, 64, 256, 4096, u64::MAX]),
    ) {
        let Ok(slice) = canonical_slice(&spec, &shape) else { return Ok(()) };
        let p = ReadPlan::new(&slice, &shape, itemsize, offset as u64, order, skip).unwrap();
        // Segments: in file order, disjoint, inside the array, summing to the read buffer.
        let data = offset as u64..(offset + itemsize * shape.iter().product::<usize>()) as u64;
        for w in p.segments().windows(2) {
            prop_assert!(w[0].offset + w[0].len <= w[1].offset, "{:?}", p.segments());
        }
        for s in p.segments() {
            prop_assert!(s.len > 0 && data.start <= s.offset && s.offset + s.len <= data.end);
        }
        prop_assert_eq!(p.read_bytes(), (p.read_shape().iter().product::<usize>() * itemsize) as u64);
        let out_count: usize = slice.out_shape().iter().product();
        prop_assert!(p.read_bytes() >= (out_count * itemsize) as u64);
        if out_count == 0 {
            prop_assert!(p.segments().is_empty());
        }
        let file = simulated_file(&shape, itemsize, offset);
        let buf = read_segments(&file, &p);
        for out in [Order::C, Order::F] {
            let got = p.gather(&buf, out).unwrap();
            prop_assert_eq!(got, expected(&file, (offset, itemsize), &slice, &shape, order, out), "{} on {:?}", spec, shape);
        }
        prop_assert_eq!(p.out_shape().to_vec(), slice.out_shape());
    }

    #[test]
    fn larger_plans_give_numpy_results(
        shape in prop::collection::vec(0usize..40, 1..4),
        spec in spec_strategy(),
        itemsize in prop::sample::select(vec![1usize, 2, 3, 8]),
        order in prop::sample::select(vec![Order::F, Order::C]),
        skip in prop::sample::select(vec![0u64, 64, 256, u64::MAX]),
    ) {
        let Ok(slice) = canonical_slice(&spec, &shape) else { return Ok(()) };
        let p = ReadPlan::new(&slice, &shape, itemsize, 11, order, skip).unwrap();
        let file = simulated_file(&shape, itemsize, 11);
        let buf = read_segments(&file, &p);
        for out in [Order::C, Order::F] {
            let want = expected(&file, (11, itemsize), &slice, &shape, order, out);
            prop_assert_eq!(p.gather(&buf, out).unwrap(), want);
        }
    }

}
