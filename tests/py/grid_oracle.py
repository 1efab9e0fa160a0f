"""Cross-grid joins (tests/world.rs): a 2 mm label atlas and a 3 mm run, and nilearn's answer.

Usage: grid_oracle.py DIR. Writes DIR/atlas_2mm.nii (int16 labels 0..5; its box is smaller than the run's field of
view, labels kept off its border) and DIR/run_3mm.nii (4-d int16, TR 2 s), and prints JSON
  {"labels": [...], "signals": [[...per label...] per volume]} from
  NiftiLabelsMasker(atlas, resampling_target="data", dtype="float64").fit_transform(run).
The run's origin is offset by 0.37 mm so that no run voxel centre falls half-way between atlas voxels.
"""
import json
import os
import sys
import warnings

import nibabel as nib
import numpy as np
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
    print(json.dumps({"labels": labels, "signals": np.asarray(signals).tolist()}))


if __name__ == "__main__":
    main(sys.argv[1])
