"""Cross-grid joins (tests/world.rs): a 2 mm label atlas and a 3 mm run, and nilearn's answer.

Usage: grid_oracle.py DIR. Writes DIR/atlas_2mm.nii (int16 labels 0..5; its box is smaller than the run's field of
view, labels kept off its border) and DIR/run_3mm.nii (4-d int16, TR 2 s), and prints JSON
  {"labels": [...], "signals": [[...per label...] per volume]} from
  NiftiLabelsMasker(atlas, resampling_target="data", dtype="float64").fit_transform(run).
The run's origin is offset by 0.37 mm so that no run voxel centre falls half-way between atlas voxels.
Also writes DIR/atlas_small_2mm.nii (same grid, labels only in a small box) and adds its answer as "small":
  {"labels", "signals", "box_bytes"}, box_bytes being the bytes of the run's voxel box (padded by one voxel) around
  the run voxels whose nearest atlas voxel lies in the small atlas's non-zero box: what a join may read at most.
"""
import json
import os
import sys
import warnings

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from nilearn.maskers import NiftiLabelsMasker

warnings.filterwarnings("ignore")


def main(d):
    rng = np.random.default_rng(7)
    atlas = np.zeros((20, 18, 16), dtype=np.int16)
    core = rng.integers(0, 6, size=(16, 14, 12)).astype(np.int16)
    atlas[2:18, 2:16, 2:14] = core
    atlas_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    atlas_affine[:3, 3] = [-10.0, -12.0, -6.0]
    nib.save(nib.Nifti1Image(atlas, atlas_affine), os.path.join(d, "atlas_2mm.nii"))
    run = rng.integers(0, 1000, size=(22, 20, 14, 5)).astype(np.int16)
    run_affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    run_affine[:3, 3] = [40.37, -25.63, -12.63]
    img = nib.Nifti1Image(run, run_affine)
    img.header.set_zooms((3.0, 3.0, 3.0, 2.0))
    nib.save(img, os.path.join(d, "run_3mm.nii"))
    masker = NiftiLabelsMasker(nib.load(os.path.join(d, "atlas_2mm.nii")), resampling_target="data", dtype="float64")
    signals = masker.fit_transform(nib.load(os.path.join(d, "run_3mm.nii")))
    labels = [int(v) for v in masker.labels_ if v != 0] if hasattr(masker, "labels_") else None
    small = np.zeros_like(atlas)
    small[8:12, 7:11, 6:10] = rng.integers(0, 4, size=(4, 4, 4)).astype(np.int16)
    small[8, 7, 6] = 1
    nib.save(nib.Nifti1Image(small, atlas_affine), os.path.join(d, "atlas_small_2mm.nii"))
    masker = NiftiLabelsMasker(nib.load(os.path.join(d, "atlas_small_2mm.nii")), resampling_target="data",
                               dtype="float64")
    small_signals = masker.fit_transform(nib.load(os.path.join(d, "run_3mm.nii")))
    small_labels = [int(v) for v in masker.labels_ if v != 0]
    # Run voxels whose nearest atlas voxel (halves up) lies in the small atlas's non-zero box.
    ijk = np.indices(run.shape[:3]).reshape(3, -1).T
    grid = np.floor(apply_affine(np.linalg.inv(atlas_affine) @ run_affine, ijk) + 0.5)
    nz = np.argwhere(small != 0)
    inside = np.all((grid >= nz.min(axis=0)) & (grid <= nz.max(axis=0)), axis=1)
    lo = np.maximum(ijk[inside].min(axis=0) - 1, 0)
    hi = np.minimum(ijk[inside].max(axis=0) + 1, np.array(run.shape[:3]) - 1)
    box_bytes = int(np.prod(hi - lo + 1)) * run.shape[3] * 2
    print(json.dumps({"labels": labels, "signals": np.asarray(signals).tolist(),
                      "small": {"labels": small_labels, "signals": np.asarray(small_signals).tolist(),
                                "box_bytes": box_bytes}}))


if __name__ == "__main__":
    main(sys.argv[1])
