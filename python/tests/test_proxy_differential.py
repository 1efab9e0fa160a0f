"""The nibabel differential through the Python proxy: tests/py/gen_cases.py writes random images (formats ×
dtypes × byte orders × scaling × compression) and nibabel's answers for random slice specs; every case is read
again through `voxelscan.VoxelProxy` and must be bit-identical (values, dtype with byte order, shape)."""

import json
import os

import numpy as np
import pytest

import gen_cases
import voxelscan

SEEDS = [int(s) for s in os.environ.get("VOXELSCAN_PY_DIFF_SEEDS", "1,2,3").split(",")]
COUNT = int(os.environ.get("VOXELSCAN_PY_DIFF_COUNT", "60"))


def cli_options(args):
    """`voxelscan slice FILE SPEC -o OUT [options]` → (spec, options)."""
    spec, rest = args[2], args[3:]
    opts = {"mmap": True, "keep_file_open": False, "raw": None, "dtype": None, "unscaled": False}
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag == "-o":
            i += 2
        elif flag == "--mmap":
            opts["mmap"] = {"off": False, "true": True, "false": False}.get(rest[i + 1].lower(), rest[i + 1])
            i += 2
        elif flag == "--keep-file-open":
            opts["keep_file_open"] = True
            i += 1
        elif flag == "--unscaled":
            opts["unscaled"] = True
            i += 1
        elif flag in ("--raw", "--dtype"):
            opts[flag[2:]] = rest[i + 1]
            i += 2
        else:
            raise AssertionError(f"unknown option {flag} in {args}")
    return spec, opts


def read(path, spec, opts):
    """What the case asks for, through the proxy protocol only."""
    proxy = voxelscan.VoxelProxy(path, mmap=opts["mmap"], keep_file_open=opts["keep_file_open"], raw=opts["raw"])
    key = gen_cases.spec_items_from_text(spec)
    if opts["unscaled"]:
        return proxy.get_unscaled()[key]
    if opts["dtype"] is not None:
        return np.asarray(proxy, dtype=opts["dtype"])[key]
    return proxy[key]


def same_bits(got, want):
    got, want = np.asarray(got), np.asarray(want)
    return (
        got.dtype == want.dtype
        and got.shape == want.shape
        and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()
    )


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def cases(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"diff{request.param}")
    gen_cases.main(["--seed", str(request.param), "--count", str(COUNT), "--out", str(out)])
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    return out, [c for c in manifest["cases"] if c["args"][0] == "slice"]


def test_slices_are_bit_identical_to_nibabel(cases):
    out, slice_cases = cases
    checked, failures = 0, []
    for case in slice_cases:
        expect = case["expect"]
        spec, opts = cli_options(case["args"])
        path = str(out / case["args"][1])
        if expect["kind"] != "npy":
            continue
        want = np.load(out / expect["npy"])
        try:
            got = read(path, spec, opts)
        except Exception as e:  # noqa: BLE001 — reported with the case below
            failures.append(f"{case['id']} {case['desc']}: raised {type(e).__name__}: {e}")
            continue
        if not same_bits(got, want):
            failures.append(
                f"{case['id']} {case['desc']} {opts}: got {np.asarray(got).dtype}{np.shape(got)}, "
                f"want {want.dtype}{want.shape}"
            )
        checked += 1
    assert checked > COUNT, f"only {checked} slice cases checked"
    assert not failures, f"{len(failures)} of {checked} differ:\n" + "\n".join(failures[:20])


def test_bad_slices_and_files_raise_python_errors(cases):
    out, slice_cases = cases
    errors = [c for c in slice_cases if c["expect"]["kind"] == "error"]
    assert errors, "the generator should include error cases"
    checked = 0
    for case in errors:
        spec, opts = cli_options(case["args"])
        try:
            gen_cases.spec_items_from_text(spec)
        except Exception:  # noqa: BLE001
            continue  # a subscript Python cannot even write: the CLI's parser is tested by the Rust suite
        checked += 1
        with pytest.raises((ValueError, IndexError, OSError, TypeError, MemoryError, OverflowError)):
            read(str(out / case["args"][1]), spec, opts)
    assert checked, "no error case reached the proxy"
