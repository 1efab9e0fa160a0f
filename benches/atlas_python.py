"""The Python side of benches/atlas.rs: an atlas's region means at every time point as nilearn computes them
(`NiftiLabelsMasker(atlas, strategy="mean").fit_transform(img)`) and as a numpy expert writes them
(`np.asarray(img.dataobj)`, voxels sorted by label, `np.add.reduceat`), for all regions or for one.

Usage: atlas_python.py BOLD ATLAS nilearn|numpy all|LABEL
  → prints JSON {"seconds": load + compute in process, "rows": (label, t) pairs, "checksum": sum of the means}
"""
import json
import sys
import time
import warnings

import nibabel as nib
import numpy as np


def numpy_all(bold, atlas_path):
    labels = np.asarray(nib.load(atlas_path).dataobj).ravel(order="F")
    d = np.asarray(bold.dataobj)
    d = d.reshape(-1, d.shape[-1], order="F")
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] > 0]
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums = np.add.reduceat(d[order], starts, axis=0, dtype=np.float64)
    counts = np.diff(np.r_[starts, sorted_labels.size])
    return sums / counts[:, None]


def numpy_one(bold, atlas_path, label):
    atlas = np.asarray(nib.load(atlas_path).dataobj)
    inside = atlas == label
    if not inside.any():
        return np.zeros((0, bold.shape[-1]))
    lo = [int(x.min()) for x in np.nonzero(inside)]
    hi = [int(x.max()) + 1 for x in np.nonzero(inside)]
    box = np.asarray(bold.dataobj[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], :])
    sel = inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return box[sel].astype(np.float64).mean(0)[None, :]


def nilearn_all(bold, atlas_path):
    from nilearn.maskers import NiftiLabelsMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NiftiLabelsMasker(nib.load(atlas_path), strategy="mean").fit_transform(bold).T


def main(bold_path, atlas_path, route, which):
    if route == "nilearn":
        # Import time is not nilearn's work on the image: leave it out of the in-process figure.
        import nilearn.maskers  # noqa: F401
    start = time.perf_counter()
    bold = nib.load(bold_path)
    if route == "numpy":
        series = numpy_all(bold, atlas_path) if which == "all" else numpy_one(bold, atlas_path, int(which))
    elif route == "nilearn" and which == "all":
        series = nilearn_all(bold, atlas_path)
    else:
        raise SystemExit(f"unknown route {route} {which}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": int(series.size), "checksum": float(np.sum(series, dtype=np.float64))}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
