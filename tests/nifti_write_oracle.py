"""Oracle for tests/nifti_write.rs: random source images written with nibabel, and checks of the images that
`COPY … STORED AS NIFTI` wrote, against numpy and against what nibabel itself would write.

    make DIR SEED COUNT          -> JSON list of {"path", "shape", "dtype"} (sources written into DIR)
    check MODE SRC OUT [ARGS]    -> JSON {"ok": bool, "problems": [...], ...}
      MODE same                  OUT holds np.asarray(SRC.dataobj), same grid
      MODE mean | tsnr           OUT is the mean / tSNR (mean / std ddof=1) over t of SRC (rtol 1e-6)
      MODE demean                OUT is SRC minus its mean over t (a window query)
      MODE sparse THR FILL       OUT[..] = SRC[..., 0] where it is > THR, else FILL
      MODE scaled DTYPE          OUT is SRC[..., 0] (float) stored as DTYPE with nibabel's slope/inter
"""
import json
import sys

import nibabel as nib
import numpy as np

# Header fields that nibabel keeps from a template when saving a new image (Nifti1Image(data, like.affine,
# like.header), set_data_dtype) and that the writer must match.
FIELDS = ["dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
          "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "descrip", "intent_code",
          "intent_p1", "cal_min", "cal_max", "toffset", "slice_code", "slice_duration", "dim_info", "aux_file"]


def make(out_dir, seed, count):
    rng = np.random.default_rng(seed)
    cases = []
    for n in range(count):
        ndim = int(rng.choice([3, 4]))
        shape = tuple(int(x) for x in rng.integers(2, 7, size=ndim))
        dtype = np.dtype(rng.choice(["uint8", "int8", "int16", "uint16", "int32", "float32", "float64"]))
        if dtype.kind == "f":
            data = rng.normal(100, 30, size=shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            lo, hi = max(int(info.min), -3000), min(int(info.max), 3000)
            data = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
        zooms = rng.uniform(0.5, 3.0, size=3)
        angle = rng.uniform(-0.5, 0.5)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        affine = np.eye(4)
        affine[:3, :3] = rot * zooms
        affine[:3, 3] = rng.uniform(-100, 100, size=3)
        header = nib.Nifti1Header()
        if rng.random() < 0.3:
            header = nib.Nifti1Header(endianness=">")
        img = nib.Nifti1Image(data, None, header)
        img.set_data_dtype(dtype)
        variant = int(rng.integers(0, 3))
        if variant == 0:  # sform only
            img.set_sform(affine, code=int(rng.choice([1, 2, 4])))
            img.set_qform(None, code=0)
        elif variant == 1:  # qform only
            img.set_qform(affine, code=int(rng.choice([1, 2])))
            img.set_sform(None, code=0)
        else:  # both, different codes
            img.set_qform(affine, code=1)
            other = affine.copy()
            other[:3, 3] += 5
            img.set_sform(other, code=2)
        h = img.header
        h.set_xyzt_units("mm", "sec" if rng.random() < 0.5 else "msec")
        h["descrip"] = f"case {n} seed {seed}".encode()
        h["intent_code"] = int(rng.choice([0, 2, 3]))
        h["cal_min"], h["cal_max"] = 0.0, 100.0
        if ndim == 4:
            h["pixdim"][4] = float(rng.uniform(0.5, 3.0))
            h["toffset"] = 1.5
        if dtype.kind in "iu" and rng.random() < 0.4:
            h.set_slope_inter(float(rng.uniform(0.1, 2.0)), float(rng.uniform(-10, 10)))
        ext = ".nii.gz" if rng.random() < 0.3 else ".nii"
        path = f"{out_dir}/src{n}{ext}"
        nib.save(img, path)
        cases.append({"path": path, "shape": list(shape), "dtype": dtype.str})
    return cases


def model_header(src, data, dtype):
    model = nib.Nifti1Image(data, src.affine, src.header)
    model.set_data_dtype(dtype)
    model.update_header()
    return model.header


def compare_header(problems, model, got):
    for f in FIELDS:
        a, b = np.asarray(model[f]), np.asarray(got[f])
        if a.dtype.kind == "f":
            same = np.array_equal(a, b, equal_nan=True)
        else:
            same = np.array_equal(a, b)
        if not same:
            problems.append(f"header field {f}: nibabel would write {a.tolist()!r}, got {b.tolist()!r}")


def check(mode, src_path, out_path, args):
    src, out = nib.load(src_path), nib.load(out_path)
    got = np.asarray(out.dataobj)
    problems = []
    info = {}
    a = np.asarray(src.dataobj)
    if mode == "same":
        want = a
    elif mode in ("mean", "tsnr"):
        x = a.astype(np.float64)
        mean = x.mean(axis=-1)
        want = mean if mode == "mean" else mean / x.std(axis=-1, ddof=1)
    elif mode == "demean":
        x = a.astype(np.float64)
        want = x - x.mean(axis=-1, keepdims=True)
    elif mode == "sparse":
        thr, fill = float(args[0]), float(args[1])
        x = a[..., 0]
        want = np.where(x > thr, x, fill).astype(np.float64)
        info["kept"] = int((x > thr).sum())
    elif mode == "scaled":
        dtype = np.dtype(args[0])
        x = a[..., 0].astype(np.float64)
        model = nib.Nifti1Image(x, src.affine, src.header)
        model.set_data_dtype(dtype)
        tmp = out_path + ".model.nii"
        nib.save(model, tmp)
        ref = nib.load(tmp)
        s1, i1 = ref.dataobj.slope, ref.dataobj.inter
        s2, i2 = out.dataobj.slope, out.dataobj.inter
        if np.float32(s1) != np.float32(s2) or np.float32(i1) != np.float32(i2):
            problems.append(f"slope/inter: nibabel {s1!r}/{i1!r}, got {s2!r}/{i2!r}")
        u1 = np.asarray(ref.dataobj.get_unscaled()).astype(np.int64)
        u2 = np.asarray(out.dataobj.get_unscaled()).astype(np.int64)
        if u1.shape != u2.shape:
            problems.append(f"shape {u2.shape}, nibabel {u1.shape}")
        else:
            diff = np.abs(u1 - u2)
            info["stored_differ"] = int((diff > 0).sum())
            info["stored_max_diff"] = int(diff.max())
            if diff.max() > 1:
                problems.append(f"stored values differ from nibabel's by up to {int(diff.max())}")
        if out.get_data_dtype() != dtype.newbyteorder("<") and out.get_data_dtype() != dtype:
            problems.append(f"dtype {out.get_data_dtype()}, wanted {dtype}")
        want = None
    else:
        raise SystemExit(f"unknown mode {mode}")
    # Differences of nearly equal numbers (demeaned values) are exact only to the rounding of their terms.
    atol = 1e-9 * float(np.nanmax(np.abs(a))) if mode == "demean" else 0.0
    if want is not None:
        if got.shape != want.shape:
            problems.append(f"shape {got.shape}, expected {want.shape}")
        elif mode == "same":
            # The writer is little-endian; nibabel keeps a big-endian source's byte order in np.asarray.
            if got.dtype.newbyteorder("=") != want.dtype.newbyteorder("="):
                problems.append(f"dtype {got.dtype}, expected {want.dtype}")
            if not np.array_equal(got, want, equal_nan=True):
                problems.append(f"{int((got != want).sum())} values differ")
        elif not np.allclose(got, want, rtol=1e-6, atol=atol, equal_nan=True):
            rel = np.nanmax(np.abs(got - want) / np.maximum(np.abs(want), 1e-300))
            problems.append(f"values differ: max relative error {rel:g}")
        compare_header(problems, model_header(src, want, got.dtype), out.header)
    if not np.array_equal(src.affine, out.affine):
        problems.append(f"affine {out.affine.tolist()}, expected {src.affine.tolist()}")
    if src.header.get_zooms()[:3] != out.header.get_zooms()[:3]:
        problems.append(f"zooms {out.header.get_zooms()}, expected {src.header.get_zooms()}")
    return {"ok": not problems, "problems": problems, **info}


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        print(json.dumps(make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    elif cmd == "check":
        print(json.dumps(check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
