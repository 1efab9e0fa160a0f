"""Millimetres and BIDS from Python: x, y, z equal nibabel's apply_affine through datafusion-python (a voxel table
over the FFI) and through voxelscan.sql; the table options world, affine and grid; voxel_to_mm / mm_to_voxel;
BIDS entity columns on a glob over a dataset."""

import datafusion
import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

import voxelscan


def oblique_image(path, shape=(5, 4, 3, 2)):
    """A float32 NIfTI-1 with a rotated, scaled, shifted sform (code mni) and, when 4-d, TR 1.5 s."""
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array(
        [[2.0 * c, -2.5 * s, 0.1, -40.25], [2.0 * s, 2.5 * c, 0.0, 12.5], [0.0, 0.2, 3.0, -7.75], [0, 0, 0, 1]]
    )
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=4)
    if len(shape) == 4:
        img.header.set_zooms(img.header.get_zooms()[:3] + (1.5,))
    nib.save(img, str(path))
    return nib.load(str(path))


def expected_xyz(img):
    ijk = np.array([(i, j, k) for i in range(img.shape[0]) for j in range(img.shape[1]) for k in range(img.shape[2])])
    return ijk, apply_affine(img.affine, ijk)


def check_xyz(table, img):
    ijk, want = expected_xyz(img)
    got_ijk = np.column_stack([table.column(c).to_numpy() for c in ("i", "j", "k")])
    np.testing.assert_array_equal(got_ijk, ijk)
    got = np.column_stack([table.column(c).to_numpy() for c in ("x", "y", "z")])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


QUERY = "SELECT i, j, k, x, y, z, world_space, tr FROM img WHERE t = 0 ORDER BY i, j, k"


def test_xyz_through_datafusion_python(tmp_path):
    img = oblique_image(tmp_path / "img.nii")
    ctx = datafusion.SessionContext()
    ctx.register_table("img", voxelscan.table(tmp_path / "img.nii"))
    table = ctx.sql(QUERY).to_arrow_table()
    check_xyz(table, img)
    assert set(table.column("world_space").to_pylist()) == {"mni"}
    assert set(table.column("tr").to_pylist()) == {1.5}
    # world=False: no millimetre columns.
    ctx.register_table("plain", voxelscan.table(tmp_path / "img.nii", world=False))
    names = ctx.sql("SELECT * FROM plain LIMIT 1").to_arrow_table().column_names
    assert names == ["i", "j", "k", "t", "value"]


def test_xyz_and_functions_through_voxelscan_sql(tmp_path):
    path = tmp_path / "img.nii"
    img = oblique_image(path)
    check_xyz(voxelscan.sql(QUERY, img=path), img)
    p = str(path)
    table = voxelscan.sql(
        f"SELECT i, j, k, voxel_to_mm('{p}', i, j, k)['x'] AS x, voxel_to_mm('{p}', i, j, k)['y'] AS y, "
        f"voxel_to_mm('{p}', i, j, k)['z'] AS z, mm_to_voxel('{p}', x, y, z) AS back "
        "FROM img WHERE t = 0 ORDER BY i, j, k",
        img=path,
    )
    check_xyz(table, img)
    back = table.column("back").to_pylist()
    assert [(b["i"], b["j"], b["k"]) for b in back] == [tuple(v) for v in expected_xyz(img)[0].tolist()]
    # A point outside the grid maps to NULL.
    far = voxelscan.sql(f"SELECT mm_to_voxel('{p}', 1000, 0, 0) AS v")
    assert far.column("v").to_pylist() == [None]


def test_affine_and_grid_options(tmp_path):
    arr = np.arange(24, dtype="<i2").reshape(3, 4, 2)
    np.save(tmp_path / "a.npy", arr)
    ctx = datafusion.SessionContext()
    ctx.register_table("a", voxelscan.table(tmp_path / "a.npy", affine="2 0 0 -10, 0 3 0 5, 0 0 -1 7"))
    t = ctx.sql("SELECT i, j, k, x, y, z FROM a ORDER BY i, j, k").to_arrow_table()
    i, j, k = (t.column(c).to_numpy() for c in ("i", "j", "k"))
    np.testing.assert_array_equal(t.column("x").to_numpy(), 2.0 * i - 10)
    np.testing.assert_array_equal(t.column("y").to_numpy(), 3.0 * j + 5)
    np.testing.assert_array_equal(t.column("z").to_numpy(), 7.0 - k)
    # Without an affine an npy table has no x column, and world=True says why.
    ctx.register_table("n", voxelscan.table(tmp_path / "a.npy"))
    assert "x" not in ctx.sql("SELECT * FROM n LIMIT 1").to_arrow_table().column_names
    with pytest.raises(Exception, match="no affine"):
        voxelscan.table(tmp_path / "a.npy", world=True)
    # grid: each voxel's nearest voxel of another image (a 2x coarser grid shifted by 0.3 voxels, so that no
    # voxel centre falls half-way between two of its voxels).
    img = oblique_image(tmp_path / "img.nii", shape=(6, 4, 2))
    shift = np.diag([2.0, 2.0, 2.0, 1.0])
    shift[:3, 3] = 0.3
    coarse = img.affine @ shift
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 1), np.int16), coarse), str(tmp_path / "coarse.nii"))
    ctx.register_table("g", voxelscan.table(tmp_path / "img.nii", grid=str(tmp_path / "coarse.nii")))
    g = ctx.sql("SELECT i, j, k, grid_i, grid_j, grid_k FROM g ORDER BY i, j, k").to_arrow_table()
    ijk = np.column_stack([g.column(c).to_numpy() for c in ("i", "j", "k")])
    cont = apply_affine(np.linalg.inv(coarse) @ img.affine, ijk)
    want = np.floor(cont + 0.5)
    inside = np.all((want >= 0) & (want < np.array([2, 2, 1])), axis=1)
    for axis, name in enumerate(("grid_i", "grid_j", "grid_k")):
        got = g.column(name).to_pylist()
        assert [v is not None for v in got] == inside.tolist()
        assert 0 < sum(inside) < len(inside)
        assert [v for v in got if v is not None] == want[inside, axis].astype(int).tolist()


def test_bids_entities_through_a_glob(tmp_path):
    for sub, runs in (("01", (1, 2)), ("02", (1,))):
        func = tmp_path / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        for run in runs:
            data = np.full((2, 2, 2, 3), int(sub) * 10 + run, dtype=np.int16)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(func / f"sub-{sub}_task-rest_run-{run}_bold.nii.gz"))
    ctx = datafusion.SessionContext()
    ctx.register_table("bold", voxelscan.table(str(tmp_path / "sub-*/func/*_bold.nii.gz")))
    t = ctx.sql(
        "SELECT sub, task, run, datatype, suffix, avg(value) AS v, count(*) AS n FROM bold "
        "GROUP BY sub, task, run, datatype, suffix ORDER BY sub, run"
    ).to_arrow_table()
    assert t.column("sub").to_pylist() == ["01", "01", "02"]
    assert t.column("task").to_pylist() == ["rest"] * 3
    assert t.column("run").to_pylist() == [1, 2, 1]
    assert t.column("datatype").to_pylist() == ["func"] * 3
    assert t.column("suffix").to_pylist() == ["bold"] * 3
    assert t.column("v").to_pylist() == [11.0, 12.0, 21.0]
    assert t.column("n").to_pylist() == [24, 24, 24]
    # An entity filter drops files before reading; the same answer through voxelscan.sql.
    one = voxelscan.sql(
        "SELECT count(*) AS n, min(value) AS v FROM bold WHERE sub = '02'",
        bold=str(tmp_path / "sub-*/func/*_bold.nii.gz"),
    )
    assert one.column("n").to_pylist() == [24]
    assert one.column("v").to_pylist() == [21]
