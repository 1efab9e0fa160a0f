"""A small BIDS tree and what bids2table says of each file's name (tests/bids.rs).

Usage: bids_oracle.py DIR. Writes DIR/ds: subjects with sessions, runs, echoes, extra entities (acq, ce, rec, dir,
and derivatives-like space/desc), plus stray images whose names are not BIDS. Prints one JSON object:
  {"files": [{"path", "bids" (named by BIDS rules: starts with sub-), "entities" (bids2table's validated
   entities, datatype and suffix), "sum" (sum of the scaled values), "nbytes" (data bytes)}],
   "columns": the entity columns a table over all of them has, in bids2table's schema order}
"""
import json
import os
import sys
import warnings

import nibabel as nib
import numpy as np
from bids2table import get_arrow_schema, parse_bids_entities, validate_bids_entities

NAMES = [
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii",
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz",
    "sub-01/ses-2/func/sub-01_ses-2_task-nback_acq-fast_run-1_echo-1_bold.nii",
    "sub-01/ses-2/func/sub-01_ses-2_task-nback_acq-fast_run-1_echo-2_bold.nii",
    "sub-02/ses-1/func/sub-02_ses-1_task-rest_dir-AP_run-01_bold.nii",
    "sub-02/ses-1/anat/sub-02_ses-1_ce-gad_rec-norm_T1w.nii",
    "sub-02/ses-1/fmap/sub-02_ses-1_dir-PA_run-3_epi.nii",
    "sub-03/func/sub-03_task-rest_bold.nii.gz",
    "derivatives/prep/sub-03/func/sub-03_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii",
    "derivatives/prep/sub-03/func/sub-03_task-rest_run-x_foo-bar_mt-maybe_bold.nii",
    # Not BIDS-named: no entity values.
    "sub-01/ses-1/func/notes.nii",
    "extra/scan_final_v2.nii",
]


def main(d):
    root = os.path.join(d, "ds")
    rng = np.random.default_rng(13)
    files = []
    for n, rel in enumerate(NAMES):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = rng.integers(0, 100, size=(3, 2, 2, 2 + n % 3)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        name = os.path.basename(rel)
        is_bids = name.startswith("sub-") and "_" in name
        entities = {}
        if is_bids:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                valid, _extra = validate_bids_entities(parse_bids_entities(path))
            entities = {k: v for k, v in valid.items() if k != "ext"}
        files.append(
            {
                "path": path,
                "bids": is_bids,
                "entities": entities,
                "sum": float(np.asarray(nib.load(path).dataobj).astype(np.float64).sum()),
                "nbytes": int(data.nbytes),
            }
        )
    present = {k for f in files for k in f["entities"]}
    columns = [f.name for f in get_arrow_schema() if f.name in present and f.name not in ("datatype", "suffix")]
    columns += [c for c in ("datatype", "suffix") if c in present]
    print(json.dumps({"files": files, "columns": columns}))


if __name__ == "__main__":
    main(sys.argv[1])
