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
    data = ((7 * i + 3 * j + 5 * k + 11 * t + seed) % 101).astype("<i2")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype("<i2")
    hdr.set_slope_inter(0.5, 10.0)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    Path(path).write_bytes(hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F"))


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
    monkeypatch.chdir(tmp_path)
    return tmp_path
