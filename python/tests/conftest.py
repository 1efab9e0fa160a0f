"""Shared fixtures: the repository's paths and the pattern images of the Rust query tests."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "py"))


def pattern_image(path, shape, seed=0):
    """tests/common's `pattern_image`: NIfTI-1, int16, slope 0.5, intercept 10, stored value
    (7i + 3j + 5k + 11t + seed) % 101. Written byte by byte (nibabel's writer would choose its own scaling)."""
    i, j, k, t = np.indices(shape)
    write_int16_nifti1(path, (7 * i + 3 * j + 5 * k + 11 * t + seed) % 101, 0.5, 10.0)


def write_int16_nifti1(path, values, slope, inter):
    """A single-file int16 NIfTI-1 of `values` (Fortran order, vox_offset 352, identity qform) with `slope`, `inter`."""
    data = np.asarray(values).astype("<i2")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype("<i2")
    hdr.set_slope_inter(slope, inter)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    Path(path).write_bytes(hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F"))


def label_image(path, shape, label):
    """tests/common's `label_image`: int16 NIfTI-1 (slope 1, intercept 0) whose voxel (i, j, k) is label(i, j, k)."""
    write_int16_nifti1(path, label(*np.indices(shape)), 1.0, 0.0)


def atlas_fixtures(root):
    """tests/common's `atlas_fixtures`: atlas.nii, mask.nii and peaks.csv on the 8x8x4 grid of bold.nii."""
    label_image(root / "atlas.nii", (8, 8, 4), lambda i, j, k: i // 3 + 3 * (j // 4))
    label_image(root / "mask.nii", (8, 8, 4), lambda i, j, k: ((i + 2 * j + k) % 3 == 0).astype(int))
    (root / "peaks.csv").write_text("name,i,j,k\nmotor,6,2,1\nvisual,1,7,3\nprecuneus,4,4,2\n")


def bids_fixture(root):
    """tests/common's `bids_fixture`: three subjects' func/sub-0N_task-faces_bold.nii (pattern seeds 0, 1, 2; TR
    2000 ms), participants.tsv (one age n/a) and sub-01's events.tsv."""
    for n, shape in enumerate([(8, 8, 4, 10), (8, 8, 4, 10), (6, 6, 4, 10)]):
        func = root / f"bids/sub-0{n + 1}/func"
        func.mkdir(parents=True)
        path = func / f"sub-0{n + 1}_task-faces_bold.nii"
        pattern_image(path, shape, n)
        raw = bytearray(path.read_bytes())
        raw[92:96] = np.float32(2000).astype("<f4").tobytes()
        raw[123] = 2 | 16
        path.write_bytes(bytes(raw))
    (root / "bids/participants.tsv").write_text(
        "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\tn/a\tM\nsub-03\t27\tn/a\n"
    )
    (root / "bids/sub-01/func/sub-01_task-faces_events.tsv").write_text(
        "onset\tduration\ttrial_type\n0.0\t4.0\tface\n5.0\t2.0\thouse\n10.5\t4.0\tface\n"
    )


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture()
def query_dir(tmp_path, monkeypatch):
    """The fixtures of tests/queries.rs, with the temporary directory as working directory."""
    pattern_image(tmp_path / "bold.nii", (8, 8, 4, 6))
    (tmp_path / "runs").mkdir()
    pattern_image(tmp_path / "runs" / "run-01.nii", (8, 8, 4, 6))
    pattern_image(tmp_path / "runs" / "run-02.nii", (6, 6, 4, 3))
    pattern_image(tmp_path / "runs" / "run-03.nii", (8, 8, 4, 2))
    atlas_fixtures(tmp_path)
    bids_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path
