"""numpy + nibabel's side of benches/nifti_write.rs: the tSNR map of a 4-D image, written with nib.save.

Usage: nifti_write.py SRC OUT        -> prints JSON {"load_compute_s", "save_s", "versions"}
       nifti_write.py --compare A B  -> prints JSON {"max_rel": float, "shape_a", "shape_b"} (two maps)

The map is what a numpy user writes: mean / std (ddof=1, as SQL's stddev) over the last axis in float64, saved as
float64 with the source's affine and header (nibabel's default gzip level, 1).
"""
import json
import sys
import time

import nibabel as nib
import numpy as np


def tsnr(src, out):
    t0 = time.perf_counter()
    img = nib.load(src)
    data = np.asarray(img.dataobj)
    mean = data.mean(axis=-1, dtype=np.float64)
    std = data.std(axis=-1, dtype=np.float64, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = mean / std
    t1 = time.perf_counter()
    new = nib.Nifti1Image(m, img.affine, img.header)
    new.set_data_dtype(np.float64)
    nib.save(new, out)
    t2 = time.perf_counter()
    print(json.dumps({"load_compute_s": t1 - t0, "save_s": t2 - t1,
                      "versions": {"nibabel": nib.__version__, "numpy": np.__version__}}))


def compare(a, b):
    x = np.asarray(nib.load(a).dataobj, dtype=np.float64)
    y = np.asarray(nib.load(b).dataobj, dtype=np.float64)
    out = {"shape_a": list(x.shape), "shape_b": list(y.shape), "max_rel": None}
    if x.shape == y.shape:
        finite = np.isfinite(x) & np.isfinite(y)
        rel = np.abs(x[finite] - y[finite]) / np.maximum(np.abs(x[finite]), 1e-300)
        same_nonfinite = bool(np.array_equal(np.isfinite(x), np.isfinite(y)))
        out["max_rel"] = float(rel.max()) if rel.size else 0.0
        out["same_nonfinite"] = same_nonfinite
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        tsnr(sys.argv[1], sys.argv[2])
