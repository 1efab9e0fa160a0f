"""Oracle for tests/atlas_joins.rs: writes random BOLD runs, atlases and masks into DIR and prints what nilearn
answers for them, as JSON on stdout.

Usage: atlas_oracle.py DIR SEED CASES

Each case: a 4-D run (random shape, dtype, scaling, .nii or .nii.gz), an atlas (labels 0..R on the same grid, some
labels absent, background 0) and a mask (random voxels). Answers:
  labels[strategy]: NiftiLabelsMasker(atlas, strategy=S).fit_transform(run) as rows (label, t, value) with
    labels in nilearn's order (sorted, background excluded);
  mask: NiftiMasker(mask).fit_transform(run), shape (T, voxels), voxels in C order of (i, j, k).
A multi-run case (several runs of one grid against one atlas) gives the labels mean per run.
"""

import json
import sys
import warnings

import nibabel as nib
import numpy as np
from nilearn.maskers import NiftiLabelsMasker, NiftiMasker

STRATEGIES = ["mean", "median", "sum", "minimum", "maximum", "variance", "standard_deviation"]
DTYPES = ["int16", "uint8", "int32", "float32", "float64"]


def write_run(path, data, rng, dtype):
    img = nib.Nifti1Image(data.astype(dtype), np.diag([2.0, 2.0, 2.0, 1.0]))
    if np.dtype(dtype).kind in "iu" and rng.random() < 0.6:
        img.header.set_slope_inter(float(rng.choice([0.5, 2.0, 0.25])), float(rng.choice([0.0, 10.0, -3.5])))
    nib.save(img, path)
    return nib.load(path)


def random_data(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.normal(100.0, 20.0, size=shape)
    info = np.iinfo(dtype)
    hi = min(info.max, 1000)
    return rng.integers(0, hi, size=shape)


def labels_answers(atlas_img, img):
    out = {}
    for s in STRATEGIES:
        masker = NiftiLabelsMasker(atlas_img, strategy=s)
        series = masker.fit_transform(img)
        out[s] = series
    return out


def present_labels(atlas):
    return [int(x) for x in np.unique(atlas) if x != 0]


def rows(labels, series):
    return [[lab, t, float(series[t, n])] for n, lab in enumerate(labels) for t in range(series.shape[0])]


def one_case(dir_, rng, n):
    shape = tuple(int(x) for x in rng.integers([5, 4, 3], [11, 9, 7])) + (int(rng.integers(2, 6)),)
    dtype = str(rng.choice(DTYPES))
    ext = ".nii.gz" if rng.random() < 0.4 else ".nii"
    run_path = f"{dir_}/run{n}{ext}"
    img = write_run(run_path, random_data(rng, shape, dtype), rng, dtype)
    regions = int(rng.integers(1, 9))
    atlas = rng.integers(0, regions + 1, size=shape[:3]).astype(np.int16)
    atlas[atlas == regions // 2 + 1] = 0  # a label number left unused
    if not (atlas > 0).any():
        atlas.flat[0] = 1
    atlas_path = f"{dir_}/atlas{n}.nii"
    nib.save(nib.Nifti1Image(atlas, img.affine), atlas_path)
    mask = (rng.random(shape[:3]) < 0.3).astype(np.uint8)
    mask.flat[-1] = 1
    mask_path = f"{dir_}/mask{n}.nii"
    nib.save(nib.Nifti1Image(mask, img.affine), mask_path)
    atlas_img, mask_img = nib.load(atlas_path), nib.load(mask_path)
    labels = present_labels(atlas)
    answers = labels_answers(atlas_img, img)
    masked = NiftiMasker(mask_img).fit_transform(img)
    return {
        "run": run_path,
        "atlas": atlas_path,
        "mask": mask_path,
        "shape": list(shape),
        "dtype": dtype,
        "labels": {s: rows(labels, a) for s, a in answers.items()},
        "mask_values": masked.tolist(),
    }


def multi_case(dir_, rng):
    """Three runs of one grid (different lengths) against one atlas: mean per run, label and t."""
    shape = (6, 5, 4)
    import os

    os.makedirs(f"{dir_}/runs", exist_ok=True)
    atlas = rng.integers(0, 4, size=shape).astype(np.int16)
    atlas.flat[0] = 1
    # Region 2 is a small box (the one-region test reads only its bounding box).
    atlas[atlas == 2] = 0
    atlas[1:3, 2:4, 1:3] = 2
    atlas_path = f"{dir_}/runs_atlas.nii"
    nib.save(nib.Nifti1Image(atlas, np.diag([2.0, 2.0, 2.0, 1.0])), atlas_path)
    atlas_img = nib.load(atlas_path)
    labels = present_labels(atlas)
    per_strategy = {s: [] for s in STRATEGIES}
    for r, t in enumerate([3, 5, 2]):
        path = f"{dir_}/runs/sub-{r + 1:02d}_bold.nii"
        img = write_run(path, random_data(rng, shape + (t,), "int16"), rng, "int16")
        for s, series in labels_answers(atlas_img, img).items():
            per_strategy[s] += [[f"sub-{r + 1:02d}_bold.nii"] + row for row in rows(labels, series)]
    return {
        "atlas": atlas_path,
        "runs": f"{dir_}/runs/",
        "strategies": per_strategy,
        "bids": bids_case(dir_, rng, atlas),
    }


def bids_case(dir_, rng, atlas):
    """BIDS-named runs against the multi-run atlas: two runs of sub-01 (one gzipped, lengths differ), one of sub-02,
    one of sub-03 on a smaller grid (j < 2: no voxel of region 2's box) and one not BIDS-named (its `sub` NULL: a
    group of its own, last in SQL's ascending order). Means by numpy over get_fdata:
    per file, label and t, and per subject, label and t (the voxels of all the subject's runs having that t)."""
    import os

    os.makedirs(f"{dir_}/bids", exist_ok=True)
    runs = [
        ("sub-01", "sub-01_task-rest_run-1_bold.nii", (6, 5, 4, 3)),
        ("sub-01", "sub-01_task-rest_run-2_bold.nii.gz", (6, 5, 4, 4)),
        ("sub-02", "sub-02_task-rest_run-1_bold.nii", (6, 5, 4, 2)),
        ("sub-03", "sub-03_task-rest_run-1_bold.nii", (6, 2, 4, 3)),
        (None, "extra_bold.nii", (6, 5, 4, 2)),
    ]
    by_file, sums = [], {}
    for sub, name, shape in runs:
        img = write_run(f"{dir_}/bids/{name}", random_data(rng, shape, "int16"), rng, "int16")
        data = img.get_fdata()
        labels_here = atlas[: shape[0], : shape[1], : shape[2]]
        for lab in present_labels(labels_here):
            voxels = data[labels_here == lab]
            for t in range(shape[3]):
                by_file.append([name, lab, t, float(voxels[:, t].mean())])
                s, n = sums.get((sub, lab, t), (0.0, 0))
                sums[(sub, lab, t)] = (s + float(voxels[:, t].sum()), n + voxels.shape[0])
    order = sorted(sums.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or "", kv[0][1], kv[0][2]))
    by_sub = [[sub and sub[4:], lab, t, s / n] for (sub, lab, t), (s, n) in order]
    return {"dir": f"{dir_}/bids/", "by_file": sorted(by_file), "by_sub": by_sub}


def main():
    dir_, seed, cases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(seed)
    result = {"cases": [one_case(dir_, rng, n) for n in range(cases)], "multi": multi_case(dir_, rng)}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
