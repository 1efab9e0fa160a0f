"""voxelscan's Python proxy against nibabel's, in one process (run by hand; build the wheel in release first):

    .venv/bin/maturin build --release -m python/Cargo.toml -o target/wheels   # CARGO_TARGET_DIR=target-rel
    .venv/bin/pip install --force-reinstall --no-deps target/wheels/voxelscan-*.whl
    .venv/bin/python benches/python_proxy.py [--quick]

Reads the slicing bench's slices (benches/slicing.rs) from target/bench-data/{t1,bold}.nii[.gz] (written here with
nibabel when absent: int16, t1 256×256×176 scaled 0.5/+10, bold 96×96×60×300), through
`voxelscan.load(p).dataobj[...]` and `nibabel.load(p).dataobj[...]`; for `.nii.gz` nibabel is timed without
indexed_gzip and, when installed, with it (index warmed first). Then `NiftiLabelsMasker.fit_transform` on
bold.nii.gz through both loaders. Medians in milliseconds, as JSON and as a table.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import nibabel._compression as compression
import numpy as np

import voxelscan

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "target" / "bench-data"
CASES = [
    ("t1", "axial [:, :, 88]", np.s_[:, :, 88]),
    ("t1", "sagittal [128]", np.s_[128]),
    ("t1", "coronal [:, 128]", np.s_[:, 128]),
    ("t1", "full scaled", None),
    ("bold", "one volume [..., 150]", np.s_[..., 150]),
    ("bold", "time series [48, 48, 30, :]", np.s_[48, 48, 30, :]),
]
IMAGES = {"t1": ((256, 256, 176), 0.5, 10.0), "bold": ((96, 96, 60, 300), 1.0, 0.0)}


def ensure(name, gz):
    path = DATA / (f"{name}.nii.gz" if gz else f"{name}.nii")
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        shape, slope, inter = IMAGES[name]
        data = np.random.default_rng(0).integers(-2000, 2000, size=shape, dtype=np.int16)
        img = nib.Nifti1Image(data, np.eye(4))
        img.header.set_data_dtype(np.int16)
        img.header.set_slope_inter(slope, inter)
        nib.save(img, str(path))
    return path


def median_ms(fn, reps):
    fn()  # warm: page cache, voxelscan's gzip index, indexed_gzip's index
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def read(img, key):
    return np.asarray(img.dataobj) if key is None else np.asarray(img.dataobj[key])


def slices(quick):
    reps = 3 if quick else 7
    have_igz = compression.HAVE_INDEXED_GZIP
    rows = []
    for gz in (False, True):
        for name, label, key in CASES:
            path = ensure(name, gz)
            row = {"file": path.name, "case": label}
            ours = voxelscan.load(path)
            row["voxelscan"] = median_ms(lambda: read(ours, key), reps)
            compression.HAVE_INDEXED_GZIP = False
            theirs = nib.load(path)
            slow = gz and key is not None and quick and name == "bold"
            row["nibabel"] = median_ms(lambda: read(theirs, key), 1 if (gz or slow) else reps)
            compression.HAVE_INDEXED_GZIP = have_igz
            if gz and have_igz:
                theirs = nib.load(path, keep_file_open=True)
                row["nibabel+indexed_gzip"] = median_ms(lambda: read(theirs, key), reps)
            rows.append(row)
    return rows


def masker(quick):
    from nilearn.maskers import NiftiLabelsMasker

    path = ensure("bold", True)
    shape = IMAGES["bold"][0][:3]
    labels = np.zeros(shape, dtype=np.int16)
    labels[10:40, 10:40, 10:30] = 1
    labels[50:90, 40:80, 20:50] = 2
    label_img = nib.Nifti1Image(labels, nib.load(path).affine)
    out = {}
    for loader_name, loader in (("voxelscan", voxelscan.load), ("nibabel", nib.load)):
        out[loader_name] = median_ms(
            lambda: NiftiLabelsMasker(labels_img=label_img).fit_transform(loader(path)), 1 if quick else 3
        )
    return out


def main(argv):
    quick = "--quick" in argv
    result = {
        "versions": {"nibabel": nib.__version__, "numpy": np.__version__, "voxelscan": voxelscan.__version__,
                     "indexed_gzip": compression.HAVE_INDEXED_GZIP},
        "slices_ms": slices(quick),
        "NiftiLabelsMasker_bold.nii.gz_ms": masker(quick),
    }
    print(json.dumps(result, indent=1))
    print(f"\n{'file':14} {'case':30} {'voxelscan':>10} {'nibabel':>10} {'nib+igz':>10} {'speed-up':>9}")
    for r in result["slices_ms"]:
        igz = r.get("nibabel+indexed_gzip")
        print(f"{r['file']:14} {r['case']:30} {r['voxelscan']:10.2f} {r['nibabel']:10.2f} "
              f"{'' if igz is None else f'{igz:10.2f}':>10} {r['nibabel'] / r['voxelscan']:8.1f}x")
    m = result["NiftiLabelsMasker_bold.nii.gz_ms"]
    print(f"NiftiLabelsMasker on bold.nii.gz: voxelscan.load {m['voxelscan']:.0f} ms, nibabel.load {m['nibabel']:.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
