"""Whole-process `SELECT avg(value)` over a warm NIfTI in several page-cache states (issue 17).

How fast a mapped scan of a cached file runs depends on the size of the page-cache folios holding it, which depends
on how the file got into the cache: one large write or a large read leaves 2 MiB folios, `cp` or 64 KiB writes leave
64 KiB folios, and 4 KiB writes leave 4 KiB pages, each of which the kernel maps and unmaps one at a time. This
script writes copies of an image in each of those ways, times whole `voxelscan sql` processes over each (page cache
warm, answers compared), and numpy's `fromfile(...).mean()` over the same bytes in the same run as the anchor.

    .venv/bin/python benches/page_cache.py target/release/voxelscan target/bench-data/bold_96x96x60x300.nii [RUNS]

The image is the one the Rust benches generate (`synth::bench_image`); when the path does not exist, a
96×96×60×300 int16 image of seeded random values is written there with nibabel. A measurement, not a test: it prints figures and fails only when an answer differs. Needs numpy; reading folio sizes
needs root (`/proc/kpageflags`) and is skipped otherwise.
"""

import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

QUERY = "SELECT avg(value) FROM bold"


def vox_offset(path):
    """The NIfTI-1 header's data offset."""
    with open(path, "rb") as f:
        header = f.read(112)
    return int(struct.unpack("<f", header[108:112])[0])


def write_copy(src, dst, chunk):
    """`src` copied to `dst` in writes of `chunk` bytes (None: the header, then the data in one write)."""
    data = open(src, "rb").read()
    with open(dst, "wb", buffering=0) as f:
        if chunk is None:
            at = vox_offset(src)
            f.write(data[:at])
            f.write(data[at:])
        else:
            for at in range(0, len(data), chunk):
                f.write(data[at : at + chunk])
        os.fsync(f.fileno())


def reread(path):
    """Drops `path`'s (clean) cached pages and reads it back in 1 MiB reads, as `cat` would."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def folio_share(path, min_pages=16, sample=64 << 20):
    """Share of the pages in `sample` bytes from the middle of `path` that sit in folios of at least `min_pages`
    pages, or None without access to /proc/kpageflags."""
    try:
        kflags = open("/proc/kpageflags", "rb")
        pagemap = open("/proc/self/pagemap", "rb")
    except OSError:
        return None
    size = os.path.getsize(path)
    offset = max(0, (size // 2 - sample // 2)) // mmap.PAGESIZE * mmap.PAGESIZE
    n = min(sample, size - offset)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), n, prot=mmap.PROT_READ, offset=offset)
        for at in range(0, n, mmap.PAGESIZE):
            m[at]
        base = next(
            int(line.split("-")[0], 16)
            for line in open("/proc/self/maps")
            if line.rstrip().endswith(os.path.realpath(path))
        )
        pages, runs = 0, []
        for i in range(n // mmap.PAGESIZE):
            pagemap.seek((base // mmap.PAGESIZE + i) * 8)
            entry = struct.unpack("Q", pagemap.read(8))[0]
            if not entry >> 63 & 1:
                continue
            kflags.seek((entry & ((1 << 55) - 1)) * 8)
            flags = struct.unpack("Q", kflags.read(8))[0]
            pages += 1
            if flags >> 16 & 1 and runs:  # a compound tail continues its head's folio
                runs[-1] += 1
            else:
                runs.append(1)
        m.close()
        in_large = sum(r for r in runs if r >= min_pages)
        return in_large / max(pages, 1)


def time_process(cmd, runs):
    """Wall seconds of `runs` whole processes of `cmd` (after one unrecorded run) and the last stdout."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        times.append(time.perf_counter() - start)
    return times, out


def numpy_mean(path, runs):
    """numpy's in-process `fromfile(...).mean()` seconds over `path`'s int16 values (an unscaled little-endian
    int16 image, as `synth::bench_image` writes), and the mean."""
    times, mean = [], None
    for _ in range(runs + 1):
        start = time.perf_counter()
        mean = float(np.fromfile(path, dtype="<i2", offset=vox_offset(path)).mean())
        times.append(time.perf_counter() - start)
    return times[1:], mean


def answer(stdout):
    return float(stdout.strip().splitlines()[-1])


def make_image(path, shape=(96, 96, 60, 300)):
    """A NIfTI-1 int16 image of seeded random values at `path` (no scaling), written with nibabel."""
    import nibabel as nib

    rng = np.random.default_rng(17)
    data = rng.integers(0, 4096, size=shape, dtype=np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(1.0, 0.0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.to_filename(path)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    exe, src = sys.argv[1], sys.argv[2]
    if not os.path.exists(src):
        make_image(src)
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    states = [
        ("one write", None, False),
        ("64 KiB writes", 64 << 10, False),
        ("4 KiB writes", 4 << 10, False),
        ("4 KiB writes, then dropped and read back (as `cat`)", 4 << 10, True),
    ]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(src))) as tmp:
        one, _ = time_process([exe, "sql", "SELECT 1"], runs)
        for name, chunk, read_back in states:
            path = os.path.join(tmp, "bold.nii")
            write_copy(src, path, chunk)
            if read_back:
                reread(path)
            cmd = [exe, "sql", "--format", "csv", "-t", f"bold={path}", QUERY]
            times, out = time_process(cmd, runs)
            np_times, np_mean = numpy_mean(path, runs)
            ours = answer(out)
            if abs(ours - np_mean) > 1e-9 * max(1.0, abs(np_mean)):
                sys.exit(f"{name}: voxelscan {ours} != numpy {np_mean}")
            rows.append(
                {
                    "state": name,
                    "large_folio_share": folio_share(path),
                    "voxelscan_median_s": statistics.median(times),
                    "voxelscan_min_s": min(times),
                    "numpy_in_process_median_s": statistics.median(np_times),
                    "ratio": statistics.median(times) / statistics.median(np_times),
                    "mean": ours,
                }
            )
            os.remove(path)
    load = os.getloadavg()
    print(
        json.dumps(
            {"select_1_median_s": statistics.median(one), "load": load, "runs": runs, "rows": rows},
            indent=1,
        )
    )
    print(f"\nSELECT 1: {statistics.median(one) * 1e3:.1f} ms; load {load[0]:.2f}")
    print("| page cache filled by | share in ≥64 KiB folios | voxelscan whole process | numpy in process | ratio |")
    for r in rows:
        share = "—" if r["large_folio_share"] is None else f"{r['large_folio_share']:.0%}"
        print(
            f"| {r['state']} | {share} | {r['voxelscan_median_s'] * 1e3:.1f} ms (min {r['voxelscan_min_s'] * 1e3:.1f})"
            f" | {r['numpy_in_process_median_s'] * 1e3:.1f} ms | {r['ratio']:.2f}× |"
        )


if __name__ == "__main__":
    main()
