"""Answers for tests/sql_numpy.rs: for each case, load the image with nibabel and evaluate the query with numpy.

Input (argv[1]): a JSON list of cases {path, mode ('scaled'|'unscaled'|'float32'), pred (numpy expression over the
index grids I[0..] and the values A), group (axis or null)}. Output (stdout): a JSON list of answers
{count, sum, min, max, mean} or, with a group axis, {groups: [[index, count, sum], ...]}.
"""
import json
import sys

import nibabel as nib
import numpy as np


def values(img, mode):
    if mode == "unscaled":
        return np.asarray(img.dataobj.get_unscaled())
    if mode == "float32":
        return np.asarray(img.dataobj, dtype=np.float32)
    return np.asarray(img.dataobj)


def number(x):
    if isinstance(x, (np.integer, int)):
        return int(x)
    return float(x)


def answer(case):
    img = nib.load(case["path"])
    A = values(img, case["mode"])
    I = np.indices(A.shape)
    mask = np.broadcast_to(eval(case["pred"]), A.shape)
    sel = A[mask]
    wide = sel.astype(np.float64) if sel.dtype.kind == "f" else sel.astype(np.int64)
    if case["group"] is not None:
        axis = I[case["group"]][mask]
        groups = []
        for g in np.unique(axis):
            part = wide[axis == g]
            groups.append([int(g), int(part.size), number(part.sum())])
        return {"groups": groups}
    if sel.size == 0:
        return {"count": 0, "sum": None, "min": None, "max": None, "mean": None}
    return {
        "count": int(sel.size),
        "sum": number(wide.sum()),
        "min": number(sel.min()),
        "max": number(sel.max()),
        "mean": float(sel.astype(np.float64).mean()),
        "dtype": str(A.dtype),
    }


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    json.dump([answer(c) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()
