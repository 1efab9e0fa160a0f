"""Images with known affines and nibabel's answers for the x, y, z columns (tests/world.rs).

Usage: world_oracle.py DIR. Writes NIfTI-1/2 (sform only, qform only, both, neither, oblique, flipped), MGH and
Analyze images with random affines into DIR and prints one JSON object per image:
  {"name", "shape", "space" (the name of the xform code nibabel's img.affine comes from; null for none),
   "tr" (seconds, or null), "xyz" (apply_affine(img.affine, ijk) for every voxel of the first volume, in
   (i, j, k) C order), "queries": [{"sql", "count", "sum", "box_bytes"}]}
Each query is a predicate on x, y, z evaluated by numpy over the whole grid (count and sum of the scaled values
of the voxels that pass); box_bytes is the bytes of the voxel box a scan needs at most: the voxels inside the
bounding box, in voxel space, of the predicate's millimetre box.
"""
import json
import os
import sys

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine

rng = np.random.default_rng(20261207)


def rotation(angle_scale):
    """A random rotation (angle_scale 0 gives the identity)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-1, 1) * angle_scale
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def affine_of(m, t):
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = t
    return a


def random_oblique():
    zooms = rng.uniform(0.8, 3.5, size=3)
    return affine_of(rotation(0.6) @ np.diag(zooms), rng.uniform(-90, 90, size=3))


def random_flipped():
    """Axis-aligned: a permutation of the axes with some flipped."""
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    m = np.zeros((3, 3))
    for r in range(3):
        m[r, perm[r]] = signs[r] * rng.choice([1.0, 1.5, 2.0, 3.0])
    return affine_of(m, rng.uniform(-80, 80, size=3).round(2) + 0.25)


def nifti(cls, data, sform=None, scode=0, qform=None, qcode=0, tr=None):
    img = cls(data, None)
    h = img.header
    if qform is not None:
        h.set_qform(qform, code=qcode)
    else:
        h.set_qform(None, code=0)
    if sform is not None:
        h.set_sform(sform, code=scode)
    else:
        h.set_sform(None, code=0)
    h.set_zooms(h.get_zooms()[:3] + ((tr,) if data.ndim == 4 else ()))
    if tr is not None:
        h.set_xyzt_units("mm", "msec")
    return cls(data, None, h)


def data(shape):
    return rng.integers(-300, 300, size=shape).astype(np.int16)


def make(d):
    shape = (7, 6, 5)
    cases = {
        "n1_sform.nii": nifti(nib.Nifti1Image, data(shape), sform=random_oblique(), scode=4),
        "n1_qform.nii": nifti(nib.Nifti1Image, data(shape), qform=random_oblique(), qcode=1),
        "n1_both.nii": nifti(
            nib.Nifti1Image, data(shape), sform=random_flipped(), scode=2, qform=random_oblique(), qcode=1
        ),
        "n1_neither.nii": nifti(nib.Nifti1Image, data(shape)),
        "four_d_oblique.nii": nifti(
            nib.Nifti1Image, data(shape + (3,)), sform=random_oblique(), scode=3, tr=2500.0
        ),
        "n1_flipped.nii": nifti(nib.Nifti1Image, data((9, 8, 7)), sform=random_flipped(), scode=4),
        "n2_flipped.nii": nifti(nib.Nifti2Image, data((8, 9, 6)), sform=random_flipped(), scode=1),
        "n2_qform.nii": nifti(nib.Nifti2Image, data(shape), qform=random_oblique(), qcode=2),
        "mgh_oblique.mgh": nib.MGHImage(data(shape).astype(np.int32), random_oblique()),
        "analyze.img": nib.AnalyzeImage(data(shape), random_flipped()),
        "n1_big_flipped.nii.gz": nifti(nib.Nifti1Image, data((40, 36, 30)), sform=random_flipped(), scode=4),
        "n1_big_flipped.nii": nifti(nib.Nifti1Image, data((40, 36, 30)), sform=random_flipped(), scode=4),
    }
    out = []
    for name, img in cases.items():
        path = os.path.join(d, name)
        nib.save(img, path)
        out.append(answer(name, path))
    return out


def space_of(img):
    if isinstance(img, nib.MGHImage):
        return "scanner"
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        return "unknown"
    h = img.header
    sform, scode = h.get_sform(coded=True)
    qform, qcode = h.get_qform(coded=True)
    code = int(scode) if sform is not None else (int(qcode) if qform is not None else 0)
    return nib.nifti1.xform_codes.label[code]


def tr_of(img):
    zooms = img.header.get_zooms()
    if len(zooms) < 4:
        return None
    if isinstance(img, nib.MGHImage):
        return float(zooms[3]) / 1000.0
    unit = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}.get(unit)
    return None if scale is None else float(zooms[3]) * scale


def answer(name, path):
    img = nib.load(path)
    values = np.asarray(img.dataobj).astype(np.float64)
    shape3 = values.shape[:3]
    ijk = np.indices(shape3).reshape(3, -1).T
    xyz = apply_affine(img.affine, ijk)
    grid = apply_affine(img.affine, np.indices(shape3).transpose(1, 2, 3, 0))
    x, y, z = grid[..., 0], grid[..., 1], grid[..., 2]
    centre = apply_affine(img.affine, (np.array(shape3) - 1) / 2.0) + 0.37
    cx, cy, cz = centre
    r = 0.3 * float(np.abs(img.affine[:3, :3]).sum(axis=0).max()) * max(shape3) / 2 + 0.11
    # (SQL, numpy mask, millimetre box [lo, hi] per axis)
    inf = np.inf
    preds = [
        (
            f"(x - {cx})*(x - {cx}) + (y - {cy})*(y - {cy}) + (z - {cz})*(z - {cz}) <= {r * r}",
            (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r,
            [[cx - r, cx + r], [cy - r, cy + r], [cz - r, cz + r]],
        ),
        (
            f"power(x - {cx}, 2) + power(y - {cy}, 2) + power(z - {cz}, 2) < {r * r}",
            (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < r * r,
            [[cx - r, cx + r], [cy - r, cy + r], [cz - r, cz + r]],
        ),
        (f"x < {cx}", x < cx, [[-inf, cx], [-inf, inf], [-inf, inf]]),
        (
            f"y BETWEEN {cy - 3.1} AND {cy + 4.2}",
            (y >= cy - 3.1) & (y <= cy + 4.2),
            [[-inf, inf], [cy - 3.1, cy + 4.2], [-inf, inf]],
        ),
        (
            f"z >= {cz - 2.3} AND x > {cx - 4.4}",
            (z >= cz - 2.3) & (x > cx - 4.4),
            [[cx - 4.4, inf], [-inf, inf], [cz - 2.3, inf]],
        ),
    ]
    queries = []
    volumes = int(np.prod(values.shape[3:]))
    for sql, mask, box in preds:
        full = np.broadcast_to(mask.reshape(shape3 + (1,) * (values.ndim - 3)), values.shape)
        queries.append(
            {
                "sql": sql,
                "count": int(full.sum()),
                "sum": float(values[full].sum()),
                "box_bytes": box_voxels(img.affine, shape3, box) * volumes * img.get_data_dtype().itemsize,
            }
        )
    return {
        "name": name,
        "shape": list(values.shape),
        "space": space_of(img),
        "tr": tr_of(img),
        "xyz": xyz.tolist(),
        "queries": queries,
    }


def box_voxels(affine, shape3, box):
    """Voxels in the voxel-space bounding box of the millimetre box (clipped to the grid's extent), padded by
    one voxel on each side for rounding."""
    lo_grid = np.full(3, -0.5)
    hi_grid = np.array(shape3) - 0.5
    corners = np.array([[lo_grid[d] if (c >> d) & 1 == 0 else hi_grid[d] for d in range(3)] for c in range(8)])
    mm = apply_affine(affine, corners)
    lo = np.maximum(mm.min(axis=0), [b[0] for b in box])
    hi = np.minimum(mm.max(axis=0), [b[1] for b in box])
    if np.any(lo > hi):
        return 0
    mm_corners = np.array([[lo[d] if (c >> d) & 1 == 0 else hi[d] for d in range(3)] for c in range(8)])
    vox = apply_affine(np.linalg.inv(affine), mm_corners)
    vlo = np.clip(np.ceil(vox.min(axis=0)) - 1, 0, np.array(shape3))
    vhi = np.clip(np.floor(vox.max(axis=0)) + 2, 0, np.array(shape3))
    return int(np.prod(np.maximum(vhi - vlo, 0)))


if __name__ == "__main__":
    print(json.dumps(make(sys.argv[1])))
