"""Issue 15's measurement: `voxelscan.load(p).dataobj[...]` against `nibabel.load(p).dataobj[...]` in one Python
process, on the slicing bench's images, and nilearn's `NiftiLabelsMasker` on the `.nii.gz` BOLD through both loaders.

Run by `cargo bench --bench python` (benches/python.rs generates the images with the slicing bench's generator and
passes them here); by hand, once those images exist:

    python benches/python_proxy.py [--quick] [--json OUT] t1=PATH t1.gz=PATH bold=PATH bold.gz=PATH

The `voxelscan` package must be importable (a release wheel for figures that mean anything: README "Python").

* nibabel is timed without indexed_gzip (``nibabel._compression.HAVE_INDEXED_GZIP`` switched off around the load and
  its reads: nibabel then opens ``.gz`` files with ``gzip.GzipFile``, as it does when indexed_gzip is not installed)
  and, when ``indexed_gzip`` can be imported (e.g. ``pip install --target DIR indexed_gzip`` and ``PYTHONPATH=DIR``,
  leaving the project's venv as it is), with it, as nibabel uses it by default (one ``IndexedGzipFile`` kept per
  image), its index warmed first by a read at the end of the file.
* voxelscan's gzip index is warm (built by a read at the end of the file; it is also a sidecar file, so later
  processes find it). Both loaders run as users get them: voxelscan with its cache of decompressed data
  (``VOXELSCAN_GZIP_CACHE``, 256 MiB by default), indexed_gzip with its read buffer. So the rows that repeat the
  same slice show what a repeated read costs (for ``.gz`` files mostly a cache hit on both sides), and the
  "random" rows, which read a different slice each time (seeded; none read before), show what decompressing a new
  slice costs: the median of the single reads.
* Every answer is compared with nibabel's (values and dtype); a difference fails the run (exit status 1).
"""

import json
import os
import statistics
import sys
import time
import warnings

import nibabel as nib  # noqa: E402
import nibabel._compression as nib_compression  # noqa: E402
import numpy as np  # noqa: E402

import voxelscan  # noqa: E402
from voxelscan import _voxelscan  # noqa: E402

try:
    import indexed_gzip
except ImportError:
    indexed_gzip = None

# The slicing bench's cases (benches/slicing.rs), with the full read skipped for bold.gz as there.
CASES = {
    "t1": [
        ("axial [:, :, 88]", np.s_[:, :, 88]),
        ("sagittal [128]", np.s_[128]),
        ("coronal [:, 128]", np.s_[:, 128]),
        ("full, scaled", None),
    ],
    "bold": [
        ("one volume [..., 150]", np.s_[..., 150]),
        ("time series [48, 48, 30, :]", np.s_[48, 48, 30, :]),
    ],
}
# Random reads into the .gz files: a different axial slice / volume each time.
RANDOM = {"t1": ("random axial slice [:, :, k]", 176, lambda k: np.s_[:, :, k]),
          "bold": ("random volume [..., t]", 300, lambda t: np.s_[..., t])}
END = {"t1": np.s_[:, :, -1], "bold": np.s_[..., -1]}


class Plain:
    """nibabel as it behaves without indexed_gzip installed, for the loads and reads inside the block."""

    def __enter__(self):
        self.saved = nib_compression.HAVE_INDEXED_GZIP
        nib_compression.HAVE_INDEXED_GZIP = False

    def __exit__(self, *exc):
        nib_compression.HAVE_INDEXED_GZIP = self.saved


class Default:
    """nibabel as installed (with indexed_gzip when it can be imported)."""

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


def read(img, key):
    return np.asarray(img.dataobj) if key is None else np.asarray(img.dataobj[key])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median_ms(fn, reps):
    """Median of `reps` timed calls after one untimed (warming) call; and the last answer."""
    out = fn()
    times = []
    for _ in range(reps):
        t, out = timed(fn)
        times.append(t)
    return 1000 * statistics.median(times), out


class Mismatch(list):
    def check(self, what, got, want):
        got, want = np.asarray(got), np.asarray(want)
        if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
            self.append(f"{what}: voxelscan {got.dtype}{got.shape} differs from nibabel {want.dtype}{want.shape}")


def loaders(gz):
    """(column, context, load) for each loader timed on a file."""
    out = [("voxelscan", Default, voxelscan.load), ("nibabel", Plain, nib.load)]
    if gz and indexed_gzip is not None:
        out.append(("nibabel+indexed_gzip", Default, nib.load))
    return out


def reps_for(column, gz, quick):
    if column == "nibabel" and gz:
        return 1 if quick else 3  # each read inflates from the start of the file: seconds
    if gz:
        return 3 if quick else 7
    return 5 if quick else 25


def slice_rows(files, quick, bad):
    rows = []
    for name, path in files.items():
        base, gz = name.split(".")[0], name.endswith(".gz")
        images = {}
        for column, ctx, load in loaders(gz):
            with ctx():
                images[column] = load(path)
                if gz:
                    read(images[column], END[base])  # builds (or loads) the gzip index
        # The random reads first: later cases (a sagittal slice, a full read) would leave their data in the cache.
        fresh_row = random_row(name, base, path, images, quick, bad) if gz else None
        for label, key in CASES[base]:
            if gz and base == "bold" and key is None:
                continue
            row = {"file": os.path.basename(path), "read": label}
            answers = {}
            for column, ctx, _ in loaders(gz):
                with ctx():
                    row[column], answers[column] = median_ms(
                        lambda: read(images[column], key), reps_for(column, gz, quick)
                    )
            for column in answers:
                if column != "nibabel":
                    bad.check(f"{name} {label} ({column})", answers[column], answers["nibabel"])
            rows.append(row)
        if fresh_row:
            rows.append(fresh_row)
    return rows


def random_row(name, base, path, images, quick, bad):
    label, n, key_of = RANDOM[base]
    # Never a slice read before (the cases' 88 and 150, the last one read to warm the index): a cache cannot help.
    fresh = np.setdiff1d(np.arange(n - 1), [88, 150])
    picks = np.random.default_rng(15).choice(fresh, size=3 if quick else 5, replace=False)
    row = {"file": os.path.basename(path), "read": label}
    answers = {}
    for column, ctx, _ in loaders(True):
        times, answers[column] = [], []
        with ctx():
            for k in picks:
                t, out = timed(lambda: read(images[column], key_of(int(k))))
                times.append(t)
                answers[column].append(out)
        row[column] = 1000 * statistics.median(times)
    for column in answers:
        for k, got, want in zip(picks, answers[column], answers["nibabel"]):
            bad.check(f"{name} {label} k={k} ({column})", got, want)
    row["picks"] = [int(k) for k in picks]
    return row


def labels_image(bold_path):
    """An int16 atlas on the BOLD grid: 48 boxes, label 0 where i < 8."""
    ref = nib.load(bold_path)
    i, j, k = np.indices(ref.shape[:3])
    labels = (1 + i // 24 + 4 * (j // 24) + 16 * (k // 20)).astype(np.int16)
    labels[i < 8] = 0
    return nib.Nifti1Image(labels, ref.affine)


def masker_rows(path, quick, bad):
    from nilearn.maskers import NiftiLabelsMasker

    label_img = labels_image(path)
    out, answers = [], {}
    for column, ctx, load in loaders(True):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return NiftiLabelsMasker(labels_img=label_img).fit_transform(load(path))

        with ctx():
            times = []
            for _ in range(1 if quick else 3):
                t, answers[column] = timed(run)
                times.append(t)
        out.append({"loader": column, "ms": 1000 * statistics.median(times)})
    for column in answers:
        bad.check(f"NiftiLabelsMasker ({column})", answers[column], answers["nibabel"])
    return out


def table(result):
    igz = indexed_gzip is not None
    head = "| file | read | voxelscan.load | nibabel.load | " + ("nibabel.load + indexed_gzip | " if igz else "")
    head += "nibabel / voxelscan |" + (" nibabel+igz / voxelscan |" if igz else "")
    lines = [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for r in result["slices_ms"]:
        cells = [r["file"], r["read"], f"{r['voxelscan']:.3g} ms", f"{r['nibabel']:.3g} ms"]
        ratio = [f"{r['nibabel'] / r['voxelscan']:.1f}×"]
        if igz:
            has = "nibabel+indexed_gzip" in r
            cells.append(f"{r['nibabel+indexed_gzip']:.3g} ms" if has else "–")
            ratio.append(f"{r['nibabel+indexed_gzip'] / r['voxelscan']:.1f}×" if has else "–")
        lines.append("| " + " | ".join(cells + ratio) + " |")
    lines.append("")
    for m in result["NiftiLabelsMasker_ms"]:
        lines.append(f"NiftiLabelsMasker(...).fit_transform on bold.nii.gz via {m['loader']}: {m['ms']:.0f} ms")
    return "\n".join(lines)


def main(argv):
    quick = "--quick" in argv
    json_out = argv[argv.index("--json") + 1] if "--json" in argv else None
    files = dict(a.split("=", 1) for a in argv if "=" in a)
    missing = {"t1", "t1.gz", "bold", "bold.gz"} - set(files)
    if missing:
        sys.exit(f"python_proxy.py: give NAME=PATH for {sorted(missing)} (cargo bench --bench python does)")
    bad = Mismatch()
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = {
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "nibabel": nib.__version__,
            "voxelscan": voxelscan.__version__,
            "voxelscan_build": getattr(_voxelscan, "BUILD_PROFILE", "unknown"),
            "indexed_gzip": None if indexed_gzip is None else indexed_gzip.__version__,
        },
        "VOXELSCAN_GZIP_CACHE": os.environ.get("VOXELSCAN_GZIP_CACHE", "default (256M)"),
        "cpus": os.cpu_count(),
        "quick": quick,
    }
    result["slices_ms"] = slice_rows(files, quick, bad)
    result["NiftiLabelsMasker_ms"] = masker_rows(files["bold.gz"], quick, bad)
    result["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["mismatches"] = list(bad)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=1)
    v = result["versions"]
    print(f"voxelscan {v['voxelscan']} ({v['voxelscan_build']} build), nibabel {v['nibabel']}, numpy {v['numpy']}, "
          f"indexed_gzip {v['indexed_gzip'] or 'not importable'}; {result['cpus']} CPUs, load average "
          f"{result['loadavg_before_after'][0]} → {result['loadavg_before_after'][1]}; "
          f"VOXELSCAN_GZIP_CACHE={result['VOXELSCAN_GZIP_CACHE']}; {result['seconds']} s\n")
    print(table(result))
    for line in bad:
        print("MISMATCH:", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
