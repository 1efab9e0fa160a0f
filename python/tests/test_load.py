"""`voxelscan.load` against `nibabel.load`: the same image class, header, affine and arrays; nilearn's maskers and
`index_img` give the same answers; pickling and copying work as nibabel images need."""

import copy
import pickle

import nibabel as nib
import numpy as np
import pytest

import voxelscan


def random_image(path, shape=(9, 8, 7, 12), dtype="<i2", slope=0.25, inter=-3.0, cls=nib.Nifti1Image, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(-500, 500, size=shape).astype(dtype)
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-9, -10, -11]
    img = cls(data, affine)
    img.header.set_data_dtype(dtype)
    if hasattr(img.header, "set_slope_inter") and cls is not nib.MGHImage:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


IMAGES = [
    ("nifti1.nii", nib.Nifti1Image, "<i2"),
    ("nifti1.nii.gz", nib.Nifti1Image, ">f4"),
    ("nifti2.nii.gz", nib.Nifti2Image, "<u2"),
    ("pair.img", nib.Nifti1Pair, "<i4"),
    ("image.mgz", nib.MGHImage, ">f4"),
]


@pytest.fixture(params=IMAGES, ids=[name for name, _, _ in IMAGES])
def image(request, tmp_path):
    name, cls, dtype = request.param
    return random_image(tmp_path / name, cls=cls, dtype=dtype)


def test_load_matches_nibabel(image):
    ours, theirs = voxelscan.load(image), nib.load(image)
    assert type(ours) is type(theirs)
    assert isinstance(ours.dataobj, voxelscan.VoxelProxy)
    assert ours.header.binaryblock == theirs.header.binaryblock
    assert np.array_equal(ours.affine, theirs.affine)
    for attr in ("shape", "ndim", "dtype", "offset", "slope", "inter", "is_proxy"):
        assert getattr(ours.dataobj, attr) == getattr(theirs.dataobj, attr), attr
    assert type(ours.dataobj.slope) is type(theirs.dataobj.slope)
    want = theirs.get_fdata()
    got = ours.get_fdata()
    assert got.dtype == want.dtype and np.array_equal(got, want)
    for key in [(..., 5), (slice(1, 7, 2), 3, None, slice(None, None, -1)), (-1, -2, 0, 0), ()]:
        a, b = ours.dataobj[key], theirs.dataobj[key]
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b), key
    assert np.array_equal(ours.dataobj.get_unscaled(), theirs.dataobj.get_unscaled())
    assert ours.dataobj.get_unscaled().dtype == theirs.dataobj.get_unscaled().dtype


@pytest.mark.parametrize("dtype", [None, np.float32, "float64", np.int64, ">f8", np.complex64])
def test_asarray_dtype_rules(tmp_path, dtype):
    path = random_image(tmp_path / "a.nii")
    ours, theirs = voxelscan.load(path).dataobj, nib.load(path).dataobj
    got, want = np.asarray(ours, dtype=dtype), np.asarray(theirs, dtype=dtype)
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()
    # numpy 2's copy keyword: every read is a fresh array, so both values are honoured.
    assert np.array_equal(np.array(ours, copy=True), want if dtype is None else np.asarray(theirs))
    assert np.array_equal(np.asarray(ours, copy=False), np.asarray(theirs))


def test_arrays_own_rust_memory_without_copies(tmp_path):
    path = random_image(tmp_path / "a.nii")
    arr = voxelscan.load(path).dataobj[..., 2]
    # The array's memory is the Rust buffer (its base), not a copy made in Python; it is writable as nibabel's are.
    assert arr.base is not None and type(arr.base).__name__ == "Buffer"
    assert arr.flags.writeable
    arr[0, 0, 0] = 42.0
    assert arr[0, 0, 0] == 42.0


def test_reshape_and_copies(tmp_path):
    path = random_image(tmp_path / "a.nii", shape=(4, 5, 6, 2))
    ours, theirs = voxelscan.load(path).dataobj, nib.load(path).dataobj
    r = ours.reshape((20, -1, 2))
    assert isinstance(r, voxelscan.VoxelProxy) and r.shape == (20, 6, 2)
    assert np.array_equal(np.asarray(r), np.asarray(theirs.reshape((20, -1, 2))))
    assert np.array_equal(nib.arrayproxy.reshape_dataobj(ours, (240,)), np.asarray(theirs).reshape(240, order="F"))
    for clone in (copy.copy(ours), copy.deepcopy(ours), ours.copy(), pickle.loads(pickle.dumps(ours))):
        assert isinstance(clone, voxelscan.VoxelProxy)
        assert np.array_equal(np.asarray(clone), np.asarray(theirs))
    reshaped = pickle.loads(pickle.dumps(r))
    assert reshaped.shape == (20, 6, 2)


def test_images_pickle_and_copy(tmp_path):
    path = random_image(tmp_path / "a.nii.gz")
    img = voxelscan.load(path)
    for clone in (pickle.loads(pickle.dumps(img)), copy.deepcopy(img), copy.copy(img)):
        assert isinstance(clone.dataobj, voxelscan.VoxelProxy)
        assert np.array_equal(clone.get_fdata(), nib.load(path).get_fdata())
    # nibabel's own slicer and in-memory copies work on our images.
    assert np.array_equal(img.slicer[1:3, ..., 4:6].get_fdata(), nib.load(path).slicer[1:3, ..., 4:6].get_fdata())


def _worker_read(pickled, key):
    """In another process: unpickle a voxelscan image and read from it (what joblib / multiprocessing workers do)."""
    img = pickle.loads(pickled)
    return type(img.dataobj).__name__, np.asarray(img.dataobj[key]), img.get_fdata()


def test_pickled_images_read_in_other_processes(tmp_path):
    # nilearn's n_jobs paths (joblib) and multiprocessing pools send images to workers by pickle: the proxy travels
    # as its location and options (no data), and the worker opens the file itself.
    import concurrent.futures
    import multiprocessing

    path = random_image(tmp_path / "bold.nii.gz", shape=(6, 7, 5, 9))
    img = voxelscan.load(path)
    np.asarray(img.dataobj[..., 3])  # a proxy that has read already pickles the same way
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this one
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        kind, part, full = pool.submit(_worker_read, pickle.dumps(img), (slice(1, 5), 2, ..., 4)).result()
    theirs = nib.load(path)
    assert kind == "VoxelProxy"
    assert np.array_equal(part, theirs.dataobj[1:5, 2, ..., 4]) and part.dtype == theirs.dataobj[1:5, 2, ..., 4].dtype
    assert np.array_equal(full, theirs.get_fdata())
    # A pickle names the file, as nibabel's proxy does; unpickling reopens it (its header), so once the file is
    # gone the unpickling says so.
    pickled = pickle.dumps(img)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="bold.nii.gz"):
        pickle.loads(pickled)


def test_nilearn_maskers_and_index_img(tmp_path):
    from nilearn.image import index_img, mean_img
    from nilearn.maskers import NiftiLabelsMasker, NiftiMasker

    path = random_image(tmp_path / "bold.nii.gz", shape=(10, 11, 9, 20), dtype="<i2")
    labels = np.zeros((10, 11, 9), dtype="<i2")
    labels[2:5, 2:6, 1:4] = 1
    labels[6:9, 4:9, 3:8] = 2
    label_path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, nib.load(path).affine), str(label_path))
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image((labels > 0).astype("u1"), nib.load(path).affine), str(mask_path))

    ours, theirs = voxelscan.load(path), nib.load(path)
    got = NiftiMasker(mask_img=str(mask_path)).fit_transform(ours)
    want = NiftiMasker(mask_img=str(mask_path)).fit_transform(theirs)
    assert np.array_equal(got, want)
    got = NiftiLabelsMasker(labels_img=voxelscan.load(label_path)).fit_transform(ours)
    want = NiftiLabelsMasker(labels_img=str(label_path)).fit_transform(theirs)
    assert np.array_equal(got, want)
    assert np.array_equal(index_img(ours, 7).get_fdata(), index_img(theirs, 7).get_fdata())
    assert np.array_equal(mean_img(ours, copy_header=True).get_fdata(), mean_img(theirs, copy_header=True).get_fdata())


def test_missing_file_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope.nii"
    with pytest.raises(FileNotFoundError, match="nope.nii"):
        voxelscan.load(missing)
    with pytest.raises(FileNotFoundError, match="nope.nii"):
        voxelscan.VoxelProxy(missing)


def test_bad_input_raises_value_error(tmp_path):
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"this is not a nifti header" * 20)
    with pytest.raises(ValueError, match="junk.nii"):
        voxelscan.VoxelProxy(junk)
    truncated = random_image(tmp_path / "t.nii")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    proxy = voxelscan.VoxelProxy(truncated) if _opens(truncated) else None
    if proxy is not None:
        with pytest.raises((ValueError, OSError), match="t.nii"):
            np.asarray(proxy)
    good = voxelscan.load(random_image(tmp_path / "g.nii"))
    with pytest.raises(IndexError):
        good.dataobj[100]
    with pytest.raises(IndexError):
        good.dataobj[0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="fancy"):
        good.dataobj[[0, 1]]
    with pytest.raises(ValueError):
        good.dataobj.reshape((7, 7))
    with pytest.raises(ValueError, match="mmap"):
        voxelscan.VoxelProxy(tmp_path / "g.nii", mmap="w")
    with pytest.raises(TypeError):
        np.asarray(good.dataobj, dtype="not-a-dtype")


def _opens(path):
    try:
        voxelscan.VoxelProxy(path)
        return True
    except ValueError as e:
        assert str(path.name) in str(e)
        return False
