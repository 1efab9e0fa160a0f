"""Answers for tests/sql_tables.rs (a table over files of different dtypes and scale factors).

Usage: mixed_oracle.py DIR. For every .nii / .nii.gz in DIR (sorted by name), nibabel + numpy only:
{name: {"dtype": str(np.asarray(img.dataobj).dtype), "voxels": [[i, j, k, value], ...], "count", "sum", "min",
"max", "mean"}}, values widened to float64 as the table's Float64 `value` column must hold them.
"""
import json
import os
import sys

import nibabel as nib
import numpy as np


def answer(path):
    scaled = np.asarray(nib.load(path).dataobj)
    wide = scaled.astype(np.float64)
    voxels = [[*map(int, idx), float(wide[idx])] for idx in np.ndindex(wide.shape)]
    return {
        "dtype": str(scaled.dtype),
        "voxels": voxels,
        "count": int(wide.size),
        "sum": float(wide.sum()),
        "min": float(wide.min()),
        "max": float(wide.max()),
        "mean": float(wide.mean()),
    }


def main():
    d = sys.argv[1]
    names = sorted(n for n in os.listdir(d) if n.endswith((".nii", ".nii.gz")))
    json.dump({n: answer(os.path.join(d, n)) for n in names}, sys.stdout)


if __name__ == "__main__":
    main()
