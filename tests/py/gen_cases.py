#!/usr/bin/env python3
"""Generate randomized images and nibabel's answers for voxelscan's differential test.

    python tests/py/gen_cases.py --seed 1 --count 200 --out DIR

writes image files into DIR, the expected arrays into DIR/expected/, and DIR/manifest.json:

    {"seed": 1, "numpy": "2.4.6", "nibabel": "5.4.2", "cases": [
        {"id": "1/007/3", "desc": "...", "args": ["slice", "007.nii", "1:3, None", "-o", "{out}", "--mmap", "r"],
         "expect": {"kind": "npy", "npy": "expected/007_3.npy", "dtype": "<f8", "shape": [2, 1, 4]}},
        {"id": ..., "args": ["info", "007.nii"], "expect": {"kind": "info", "info": {...}}},
        {"id": ..., "args": [...], "expect": {"kind": "error", "why": "..."}}]}

Arguments are relative to DIR (the runner starts the CLI with DIR as its working directory) and `{out}` stands for
the output file the runner chooses. Expected values come from nibabel and numpy only:

* slices: `np.asarray(img.dataobj)[SPEC]`, `img.dataobj.get_unscaled()[SPEC]` and
  `np.asarray(img.dataobj, dtype=DT)[SPEC]` (numpy slicing of nibabel's full array: the same as
  `np.asarray(img.dataobj[SPEC])` for valid specs, and numpy-correct where nibabel's slicer has the bugs the
  project does not copy — reference §8 Q1, Q2, Q3, Q6, Q8). `--self-check` (on by default) also asks nibabel's own
  slicer for every spec outside those quirks and fails if the two answers differ.
* raw files: `ArrayProxy(path, (shape, dtype, offset, slope, inter), order=...)`; `.npy`: numpy's own reader.
* where nibabel would fall back to longdouble, the project's contract is a clear error: expected = error.
* one more nibabel bug is corrected, not copied: `volumeutils._ftype4scaled_finite` keeps the factors it cast
  for a failed float32 trial, so a float32 slope with an intercept beyond float32 makes nibabel raise
  'Overflow using highest floating point type' where float64 scaling works (see `_ftype4scaled_finite_fixed`).

Coverage: every (format, dtype, byte order, compression, variant) combination is enumerated in one fixed order;
seed s with count n takes combinations [s*n, s*n + n) cyclically, and draws everything else (shape, scaling,
offset, padding, affine, slice specs, CLI options) at random from the seed.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import warnings

import numpy as np
import nibabel as nib
import nibabel.volumeutils as volumeutils
from nibabel.arrayproxy import ArrayProxy
from nibabel.freesurfer.mghformat import MGHImage

# ----------------------------------------------------------------------------------------------- dtype tables

RGB24 = np.dtype([('R', 'u1'), ('G', 'u1'), ('B', 'u1')])
RGBA32 = np.dtype([('R', 'u1'), ('G', 'u1'), ('B', 'u1'), ('A', 'u1')])

# NIfTI datatype codes (reference §4.4); float128/complex256 are excluded (x86-64 has no binary128).
NIFTI_CODES = {
    'u1': 2, 'i2': 4, 'i4': 8, 'f4': 16, 'c8': 32, 'f8': 64, 'rgb24': 128, 'i1': 256,
    'u2': 512, 'u4': 768, 'i8': 1024, 'u8': 1280, 'c16': 1792, 'rgba32': 2304,
}
ANALYZE_CODES = {'u1': 2, 'i2': 4, 'i4': 8, 'f4': 16, 'c8': 32, 'f8': 64, 'rgb24': 128}
MGH_DTYPES = ['u1', 'i4', 'f4', 'i2', 'u2']
NUMERIC = ['u1', 'i1', 'u2', 'i2', 'u4', 'i4', 'u8', 'i8', 'f2', 'f4', 'f8', 'c8', 'c16']

# Targets for --dtype: names as numpy spells them, with and without an explicit byte order.
DTYPE_TARGETS = ['float32', 'float64', '<f4', '>f8', '>f4', 'float16', 'int16', 'int32', 'int64', 'uint8',
                 'uint16', '>i2', '<u4', 'int8', 'uint64', 'complex64', 'complex128', '>c8']


def np_dtype(name, order='<'):
    """numpy dtype for a table name in the given byte order ('|' kept for 1-byte and record types)."""
    if name == 'rgb24':
        return RGB24
    if name == 'rgba32':
        return RGBA32
    dt = np.dtype(name)
    return dt if dt.itemsize == 1 else dt.newbyteorder(order)


def byte_orders(name):
    """Both orders where byte order means something, else one."""
    return ['<'] if name in ('u1', 'i1', 'rgb24', 'rgba32') else ['<', '>']


# ---------------------------------------------------------------------------------------------- combinations


def all_combos():
    """Every (format, variant, dtype, byte order, gzip) combination, in one fixed, seed-independent order."""
    combos = []
    for fmt in ('nifti1', 'nifti1pair', 'nifti2', 'nifti2pair'):
        for dt in NIFTI_CODES:
            for bo in byte_orders(dt):
                for gz in (False, True):
                    combos.append((fmt, '', dt, bo, gz))
    for variant in ('analyze', 'spm99', 'spm2'):
        for dt in ANALYZE_CODES:
            for bo in byte_orders(dt):
                for gz in (False, True):
                    combos.append(('analyze', variant, dt, bo, gz))
    for dt in MGH_DTYPES:
        for gz in (False, True):
            combos.append(('mgh', '', dt, '>', gz))
    for dt in NUMERIC:
        for bo in byte_orders(dt):
            for order in ('C', 'F'):
                for version in ('1', '2'):
                    combos.append(('npy', order + version, dt, bo, False))
    for dt in NUMERIC:
        for bo in byte_orders(dt):
            for order in ('C', 'F'):
                for gz in (False, True):
                    combos.append(('raw', order, dt, bo, gz))
    # A fixed shuffle so that consecutive windows mix formats; seeds pick windows (see module docstring).
    perm = np.random.default_rng(20240601).permutation(len(combos))
    return [combos[i] for i in perm]


# ---------------------------------------------------------------------------------------------------- values


def random_shape(rng, max_ndim=5, min_ndim=1, allow_zero=True):
    ndim = int(rng.integers(min_ndim, max_ndim + 1))
    big = rng.random() < 0.1  # now and then an image large enough for the gap heuristic to matter
    limit = 40 if big else 7
    shape = [int(rng.integers(1, limit + 1)) for _ in range(ndim)]
    for k in range(ndim):
        r = rng.random()
        if r < 0.15:
            shape[k] = 1
        elif allow_zero and r < 0.18:
            shape[k] = 0
    # Keep files small: at most ~60k elements.
    while math.prod(shape) > 60000:
        k = int(np.argmax(shape))
        shape[k] = max(1, shape[k] // 2)
    return tuple(shape)


def random_values(rng, dt, n):
    """n random values of dtype dt (any byte order), with extremes and IEEE specials mixed in."""
    native = dt.newbyteorder('=') if dt.fields is None else dt
    if dt.fields is not None:
        return np.frombuffer(rng.bytes(n * dt.itemsize), dtype=dt).copy()
    if dt.kind in 'iu':
        info = np.iinfo(native)
        mode = rng.random()
        if mode < 0.4:
            vals = rng.integers(info.min, info.max, n, endpoint=True, dtype=native)
        else:
            lo, hi = max(info.min, -300), min(info.max, 300)
            vals = rng.integers(lo, hi, n, endpoint=True, dtype=native)
        if n and rng.random() < 0.5:
            idx = rng.integers(0, n, size=min(n, 3))
            vals[idx] = rng.choice([info.min, info.max], size=len(idx))
        return vals.astype(dt)
    if dt.kind == 'f':
        return random_floats(rng, native, n).astype(dt)
    if dt.kind == 'c':
        part = np.dtype('f%d' % (dt.itemsize // 2))
        vals = random_floats(rng, part, n) + 1j * random_floats(rng, part, n)
        return vals.astype(dt)
    raise ValueError(dt)


def random_floats(rng, dt, n):
    with np.errstate(all='ignore'):
        vals = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 4, n)).astype(dt)
        if n and rng.random() < 0.5:
            info = np.finfo(dt)
            specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, float(info.max), float(info.tiny) / 4,
                                 -float(info.max)], dtype=dt)
            idx = rng.integers(0, n, size=min(n, 4))
            vals[idx] = rng.choice(specials, size=len(idx))
    return vals


def f32(x):
    return float(np.float32(x))


def header_factor_pair(rng, dt_name, float64_fields=False):
    """(scl_slope, scl_inter) for a NIfTI/SPM header: no scaling, identity, exact and inexact factors, large ones."""
    r = rng.random()
    if r < 0.2:
        return 1.0, 0.0
    if r < 0.27:
        return 0.0, float(rng.choice([0.0, 5.0]))  # slope 0 = no scaling, intercept ignored
    if r < 0.32:
        return float(rng.choice([np.nan, np.inf, -np.inf])), float(rng.choice([0.0, 3.0]))
    if r < 0.55:
        slope = float(rng.choice([2.0, 0.5, -1.5, 0.25, 3.0517578125e-05, 1.0, -1.0, 4096.0]))
        return slope, float(rng.choice([0.0, 1.0, -1024.0, 0.5]))
    if r < 0.8:
        slope = float(rng.uniform(-3, 3)) * 10.0 ** float(rng.uniform(-4, 4))
        inter = float(rng.choice([0.0, float(rng.uniform(-5000, 5000))]))
        return slope, inter
    if r < 0.9:
        big = float(rng.choice([1e30, -3e38, 1e20, 3.4e38]))
        if float64_fields and rng.random() < 0.5:
            big = float(rng.choice([1e300, 1e200, -1e305]))
        return big, float(rng.choice([0.0, 7.0]))
    return 1.0, float(rng.choice([10.0, -0.5, 3.14]))


# ---------------------------------------------------------------------------------------------- file writing


def write_bytes(path, data, gz, rng):
    if gz:
        data = gzip.compress(data, compresslevel=int(rng.integers(1, 10)), mtime=0)
    with open(path, 'wb') as f:
        f.write(data)


def data_bytes(arr, order):
    return arr.tobytes(order=order)


def random_affine(rng):
    aff = np.eye(4)
    aff[:3, :3] = rng.uniform(-3, 3, (3, 3))
    aff[:3, 3] = rng.uniform(-100, 100, 3)
    return aff


def random_rotation_affine(rng, zooms):
    """An affine that is a rotation (maybe with a flip) times zooms: representable by a qform."""
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    aff = np.eye(4)
    aff[:3, :3] = q @ np.diag(zooms[:3])
    aff[:3, 3] = rng.uniform(-100, 100, 3)
    return aff


def random_zooms(rng, ndim):
    zooms = []
    for _ in range(ndim):
        z = f32(rng.choice([1.0, 2.0, 0.5, rng.uniform(0.1, 4.0)]))
        zooms.append(z)
    return zooms


def set_nifti_geometry(rng, hdr, shape):
    ndim = len(shape)
    zooms = random_zooms(rng, ndim)
    if ndim:
        hdr.set_zooms(zooms)
    mode = rng.random()
    z3 = (zooms + [1.0, 1.0, 1.0])[:3]
    if mode < 0.25:
        hdr.set_qform(None, code=0)
        hdr.set_sform(None, code=0)
        return
    if mode < 0.6:
        hdr.set_qform(random_rotation_affine(rng, z3), code=int(rng.integers(1, 5)))
        hdr.set_sform(None, code=0)
        return
    hdr.set_sform(random_affine(rng), code=int(rng.integers(1, 5)))
    if rng.random() < 0.5:
        hdr.set_qform(random_rotation_affine(rng, z3), code=int(rng.integers(1, 5)))
    else:
        hdr.set_qform(None, code=0)


def nifti_extension_bytes(rng, endian, room):
    """One or two NIfTI extensions filling exactly `room` bytes (room a multiple of 16, >= 16)."""
    out = b''
    while room >= 16:
        esize = room if room < 64 or rng.random() < 0.5 else 16 * int(rng.integers(1, room // 16))
        ecode = int(rng.choice([6, 4, 14]))
        payload = bytes(rng.integers(32, 127, esize - 8, dtype=np.uint8))
        out += struct.pack(endian + 'ii', esize, ecode) + payload
        room -= esize
    return out


def write_nifti(rng, base, fmt, dt_name, bo, gz, shape, arr):
    """Write a NIfTI-1/2 single file or pair by hand (header from nibabel, layout under our control)."""
    two = fmt.startswith('nifti2')
    pair = fmt.endswith('pair')
    hdr = (nib.Nifti2Header if two else nib.Nifti1Header)(endianness=bo)
    hdr.set_data_dtype(NIFTI_CODES[dt_name])
    hdr.set_data_shape(shape)
    set_nifti_geometry(rng, hdr, shape)
    slope, inter = header_factor_pair(rng, dt_name, float64_fields=two)
    if dt_name.startswith('rgb') and rng.random() < 0.8:
        slope, inter = 1.0, 0.0  # scaled records only make numpy fail; test that now and then, not mostly
    hdr['scl_slope'] = slope
    hdr['scl_inter'] = inter
    hsize = 540 if two else 348
    min_off = hsize + 4
    notes = []
    ext = b''
    if pair:
        hdr['magic'] = b'ni2' if two else b'ni1'
        offset = int(rng.choice([0, 0, 7, 13, 16, 352, 1000]))
        hdr_blob = hdr.binaryblock + (b'\0\0\0\0' if rng.random() < 0.7 else b'')
        pad = bytes(rng.integers(0, 256, offset, dtype=np.uint8))
    else:
        hdr['magic'] = b'n+2' if two else b'n+1'
        r = rng.random()
        if r < 0.5:
            offset = min_off
            ext_flag = b'\0\0\0\0'
        elif r < 0.75:
            # Extensions: the flag's first byte is 1, extensions fill [hsize+4, vox_offset) exactly.
            room = 16 * int(rng.integers(1, 6))
            offset = min_off + room
            ext_flag = b'\x01\0\0\0'
            ext = nifti_extension_bytes(rng, bo, room)
            notes.append('ext')
        else:
            # Odd offset with garbage padding (no extensions announced).
            offset = min_off + int(rng.choice([1, 3, 13, 16, 100, 661]))
            ext_flag = b'\0\0\0\0'
        hdr_blob = None
        pad = ext_flag + ext
        pad += bytes(rng.integers(0, 256, offset - min_off - len(ext), dtype=np.uint8))
    hdr['vox_offset'] = offset
    body = data_bytes(arr, 'F')
    trailer = bytes(rng.integers(0, 256, int(rng.choice([0, 0, 0, 5, 64])), dtype=np.uint8))
    if pair and not (pad or body or trailer):
        trailer = b'\x00'  # nib.load refuses an empty file by name
    sfx = '.gz' if gz else ''
    if pair:
        hdr_blob = hdr.binaryblock + hdr_blob[hsize:]
        write_bytes(base + '.hdr' + sfx, hdr_blob, gz, rng)
        write_bytes(base + '.img' + sfx, pad + body + trailer, gz, rng)
        path = base + ('.hdr' if rng.random() < 0.75 else '.img') + sfx
    else:
        write_bytes(base + '.nii' + sfx, hdr.binaryblock + pad + body + trailer, gz, rng)
        path = base + '.nii' + sfx
    notes.append(f'slope={slope!r} inter={inter!r} off={offset}')
    return path, ' '.join(notes)


def write_analyze(rng, base, variant, dt_name, bo, gz, shape, arr):
    cls = {'analyze': nib.AnalyzeHeader, 'spm99': nib.Spm99AnalyzeHeader, 'spm2': nib.Spm2AnalyzeHeader}[variant]
    hdr = cls(endianness=bo)
    hdr.set_data_dtype(ANALYZE_CODES[dt_name])
    hdr.set_data_shape(shape)
    if shape:
        hdr.set_zooms(random_zooms(rng, len(shape)))
    notes = [variant]
    if variant in ('spm99', 'spm2'):
        slope, inter = header_factor_pair(rng, dt_name)
        if dt_name.startswith('rgb') and rng.random() < 0.8:
            slope, inter = 1.0, 0.0
        hdr['scl_slope'] = slope
        if variant == 'spm2':
            hdr['scl_inter'] = inter
        notes.append(f'slope={slope!r}' + (f' inter={inter!r}' if variant == 'spm2' else ''))
        if rng.random() < 0.5:
            # SPM99 origin (1-based voxel coordinates) moves the affine's translation.
            origin = [int(rng.integers(-2, 2 * max(d, 1) + 1)) for d in (list(shape) + [1, 1, 1])[:3]]
            hdr['origin'][:3] = origin
            notes.append(f'origin={origin}')
    if rng.random() < 0.2:
        # SPM2's fallback: slope/inter from glmax/glmin and cal_max/cal_min when scl_slope is unusable.
        if variant in ('spm99', 'spm2'):
            hdr['scl_slope'] = float(rng.choice([0.0, np.nan]))
        hdr['glmin'] = int(rng.integers(-100, 100))
        hdr['glmax'] = int(hdr['glmin']) + int(rng.integers(1, 5000))
        hdr['cal_min'] = f32(rng.uniform(-10, 10))
        hdr['cal_max'] = f32(float(hdr['cal_min']) + rng.uniform(0.01, 100))
        notes.append('glcal')
    offset = int(rng.choice([0, 0, 7, 13, 16, 352]))
    if rng.random() < 0.1:
        hdr['vox_offset'] = offset + 0.75  # float field: truncated toward zero
        notes.append('frac-off')
    else:
        hdr['vox_offset'] = offset
    pad = bytes(rng.integers(0, 256, offset, dtype=np.uint8))
    sfx = '.gz' if gz else ''
    write_bytes(base + '.hdr' + sfx, hdr.binaryblock, gz, rng)
    body = data_bytes(arr, 'F')
    # nib.load refuses an empty file by name: keep .img non-empty even for zero-size data at offset 0.
    trailer = b'' if pad or body else b'\x00'
    write_bytes(base + '.img' + sfx, pad + body + trailer, gz, rng)
    path = base + ('.hdr' if rng.random() < 0.75 else '.img') + sfx
    notes.append(f'off={offset}')
    return path, ' '.join(notes)


def write_mgh(rng, base, dt_name, gz, shape, arr):
    aff = random_affine(rng) if rng.random() < 0.7 else np.diag([-1.0, 1.0, 1.0, 1.0])
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr.reshape(arr.shape[:3], order='F')  # on disk the same; nibabel's writer wants it 3-D
    img = MGHImage(arr, aff)
    if len(shape) == 4:
        img.header['tr'] = f32(rng.uniform(100, 3000))
    tmp = base + '.tmp.mgh'
    img.to_filename(tmp)
    with open(tmp, 'rb') as f:
        blob = bytearray(f.read())
    os.remove(tmp)
    notes = []
    if rng.random() < 0.15:
        blob[28:30] = b'\0\0'  # goodRASFlag 0: nibabel substitutes a default geometry
        notes.append('goodRAS=0')
    path = base + ('.mgz' if gz else '.mgh')
    write_bytes(path, bytes(blob), gz, rng)
    return path, ' '.join(notes)


def write_npy(rng, base, variant, arr):
    order, version = variant[0], variant[1]
    # ascontiguousarray/asfortranarray turn a 0-d array into shape (1,): keep 0-d arrays as they are.
    if arr.ndim == 0:
        a = arr.copy()
    else:
        a = np.asfortranarray(arr) if order == 'F' else np.ascontiguousarray(arr)
    path = base + '.npy'
    with open(path, 'wb') as f:
        np.lib.format.write_array(f, a, version=(int(version), 0))
    with open(path, 'rb') as f:
        np.lib.format.read_magic(f)
        f.seek(0)
        major, _ = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if major == 1
                                 else np.lib.format.read_array_header_2_0(f))
        offset = f.tell()
    return path, f'v{version} order={"F" if fortran else "C"}', offset, fortran


def raw_factor(rng, storage):
    """A factor for a --raw spec: (text for the CLI, the value nibabel's tuple spec gets)."""
    r = rng.random()
    if r < 0.35:
        v = float(rng.choice([1.0, 2.0, 0.5, -3.0, 0.0, 2.5, 1e-3]))
    elif r < 0.55:
        v = float(rng.uniform(-4, 4)) * 10.0 ** float(rng.uniform(-3, 3))
    elif r < 0.7:
        v = float(rng.choice([1e30, 3e38, 1e36, 1e300, 6e4, 1e5]))
    elif r < 0.75:
        v = float(rng.choice([np.nan, np.inf, -np.inf]))
    else:
        v = float(rng.choice([1.0, 0.0]))
    if rng.random() < 0.4 and abs(v) <= 3.4e38:
        v32 = np.float32(v)
        return 'f4:' + fmt_float(float(v32)), v32
    return fmt_float(v), v


def fmt_float(v):
    if math.isnan(v):
        return 'nan'
    if math.isinf(v):
        return 'inf' if v > 0 else '-inf'
    return repr(float(v))


def write_raw(rng, base, variant, gz, arr, dt):
    order = variant
    offset = int(rng.choice([0, 0, 7, 13, 16, 100, 352]))
    pad = bytes(rng.integers(0, 256, offset, dtype=np.uint8))
    trailer = bytes(rng.integers(0, 256, int(rng.choice([0, 0, 3])), dtype=np.uint8))
    path = base + ('.raw.gz' if gz else '.raw')
    write_bytes(path, pad + data_bytes(arr, order) + trailer, gz, rng)
    parts = ['shape=' + ','.join(str(d) for d in arr.shape), 'dtype=' + dt.str]
    spec_vals = [offset, 1.0, 0.0]
    if offset or rng.random() < 0.5:
        parts.append(f'offset={offset}')
    if rng.random() < 0.7:
        text, val = raw_factor(rng, dt)
        parts.append('slope=' + text)
        spec_vals[1] = val
    if rng.random() < 0.5:
        text, val = raw_factor(rng, dt)
        parts.append('inter=' + text)
        spec_vals[2] = val
    if order == 'C' or rng.random() < 0.5:
        parts.append('order=' + order)
    first, rest = parts[:2], parts[2:]
    rng.shuffle(rest)
    raw_spec = ';'.join(first + rest)
    prox = ArrayProxy(path, (arr.shape, dt, spec_vals[0], spec_vals[1], spec_vals[2]), order=order)
    return path, raw_spec, prox


# ------------------------------------------------------------------------------------ a nibabel bug, fixed


def _ftype4scaled_finite_fixed(tst_arr, slope, inter, direction='read', default=np.float32):
    """nibabel's `volumeutils._ftype4scaled_finite` without its bug: nibabel re-assigns `slope`/`inter` to their
    cast in each trial, so once a factor overflowed float32 (e.g. a float32 slope with intercept 1e300: the
    search starts at float32) the float64 and longdouble trials see inf and it raises 'Overflow using highest
    floating point type' although float64 works. Each trial here casts the original factors afresh. Only the
    choice of float type changes; the arithmetic is nibabel's own."""
    from nibabel.volumeutils import OK_FLOATS
    if default not in OK_FLOATS and default is np.longdouble:
        return default
    tst_arr = np.atleast_1d(tst_arr)
    slope0, inter0 = np.atleast_1d(slope), np.atleast_1d(inter)
    for ftype in OK_FLOATS[OK_FLOATS.index(default):]:
        trans = tst_arr.copy()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # a factor cast to inf fails the finiteness test below
            s, i = slope0.astype(ftype), inter0.astype(ftype)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings('error', '.*overflow.*', RuntimeWarning)
                if direction == 'read':
                    if s != 1.0:
                        trans = trans * s
                    if i != 0.0:
                        trans = trans + i
                else:
                    if i != 0.0:
                        trans = trans - i
                    if s != 1.0:
                        trans = trans / s
            if np.all(np.isfinite(trans)):
                return ftype
        except RuntimeWarning:
            pass
    raise ValueError('Overflow using highest floating point type')


volumeutils._ftype4scaled_finite = _ftype4scaled_finite_fixed


# --------------------------------------------------------------------------------------------- slice specs


class Spec:
    """A slice spec as Python objects (`items`, for numpy) and as the CLI's text."""

    def __init__(self, items, text, quirky=False):
        self.items = items
        self.text = text
        self.quirky = quirky  # touches a nibabel slicing bug (§8 Q1/Q2/Q3/Q6/Q8): don't ask nibabel's slicer

    def key(self):
        return tuple(self.items)


def render_item(item, rng):
    if item is None:
        return 'None'
    if item is Ellipsis:
        return '...'
    if isinstance(item, int):
        return str(item)
    a = '' if item.start is None else str(item.start)
    b = '' if item.stop is None else str(item.stop)
    if item.step is None:
        return f'{a}:{b}' + (':' if rng.random() < 0.15 else '')
    return f'{a}:{b}:{item.step}'


def render(items, rng):
    if not items:
        return ''
    parts = [render_item(it, rng) for it in items]
    sep = ', ' if rng.random() < 0.7 else ','
    text = sep.join(parts)
    if len(parts) == 1 and rng.random() < 0.2:
        text += ','  # a one-element tuple, Python style
    if rng.random() < 0.1:
        text = ' ' + text + ' '
    return text


def random_slice(rng, n):
    lim = 2 * n + 2
    def bound():
        r = rng.random()
        if r < 0.3:
            return None
        if r < 0.85:
            return int(rng.integers(-n - 1, n + 2)) if n else int(rng.integers(-2, 3))
        return int(rng.integers(-lim, lim + 1))
    step = None
    r = rng.random()
    if r < 0.45:
        step = None
    elif r < 0.9:
        step = int(rng.choice([1, -1, 2, -2, 3, -3]))
    else:
        step = int(rng.choice([n + 1, -(n + 1), 7, -5]))
    return slice(bound(), bound(), step)


def is_quirky_slice(s, n):
    vals = [v for v in (s.start, s.stop) if v is not None]
    return any(v < -n for v in vals)


def random_spec(rng, shape):
    """A valid numpy basic index for `shape` (ints in range; any slices; one ... at most; any Nones)."""
    ndim = len(shape)
    r = rng.random()
    if r < 0.05:
        return Spec([], '')
    n_real = int(rng.integers(0, ndim + 1))
    use_ellipsis = rng.random() < 0.3
    if not use_ellipsis and rng.random() < 0.5:
        n_real = ndim
    items = []
    axes = list(range(n_real))
    quirky = any(d == 0 for d in shape)
    ell_at = int(rng.integers(0, n_real + 1)) if use_ellipsis else None
    # Axes consumed: before the ellipsis the first ones, after it the last ones.
    before = axes[:ell_at] if use_ellipsis else axes
    after_count = n_real - len(before)
    after_axes = list(range(ndim - after_count, ndim))
    for k in before:
        item = axis_item(rng, shape[k])
        quirky |= isinstance(item, slice) and is_quirky_slice(item, shape[k])
        items.append(item)
    if use_ellipsis:
        items.append(Ellipsis)
        for k in after_axes:
            item = axis_item(rng, shape[k])
            quirky |= isinstance(item, slice) and is_quirky_slice(item, shape[k])
            items.append(item)
    # Sprinkle Nones.
    for _ in range(int(rng.choice([0, 0, 0, 1, 1, 2]))):
        items.insert(int(rng.integers(0, len(items) + 1)), None)
    if len(items) == 1 and rng.random() < 0.1:
        pass
    return Spec(items, render(items, rng), quirky)


def axis_item(rng, n):
    if n > 0 and rng.random() < 0.35:
        return int(rng.integers(-n, n))
    return random_slice(rng, n)


def error_specs(rng, shape):
    """Specs that must fail (numpy raises; the CLI must exit 2)."""
    ndim = len(shape)
    out = [('two ellipses', '..., ...'), ('two ellipses', '0, ..., None, ...')]
    out.append(('too many indices', ', '.join(['0'] * (ndim + 1)) if all(shape) else ', '.join([':'] * (ndim + 1))))
    if ndim:
        k = int(rng.integers(0, ndim))
        n = shape[k]
        pre = [':'] * k
        out.append(('index out of range', ', '.join(pre + [str(n)])))
        out.append(('negative index out of range', ', '.join(pre + [str(-n - 1)])))
        out.append(('zero step', ', '.join(pre + ['::0'])))
        out.append(('zero step', ', '.join(pre + ['1:5:0'])))
    out.append(('fancy index', '[1, 2]'))
    out.append(('fancy index', '0, [0]' if ndim >= 2 else '[0]'))
    out.append(('malformed', '1:2:3:4'))
    out.append(('malformed', 'abc'))
    out.append(('malformed', '0,,1'))
    out.append(('malformed', '(1'))
    return out


def spec_items_from_text(text):
    """What Python makes of the text (for the generator's own self-check)."""
    if text.strip() == '':
        return ()
    obj = eval('np.s_[' + text + ']', {'np': np})  # noqa: S307 — our own generated text
    return obj if isinstance(obj, tuple) else (obj,)


def numpy_index(full, items):
    """`np.asarray(full[items])`: numpy's answer (an all-integer index gives a native-order scalar)."""
    return np.asarray(full[tuple(items)])


class Generator:
    def __init__(self, seed, outdir, self_check=True):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.outdir = outdir
        self.expdir = os.path.join(outdir, 'expected')
        os.makedirs(self.expdir, exist_ok=True)
        self.cases = []
        self.self_check = self_check
        self.checks = {'nibabel_slices_compared': 0, 'numpy_errors_confirmed': 0}

    # -- helpers

    def rel(self, path):
        return os.path.relpath(path, self.outdir)

    def cli_options(self):
        opts = []
        r = self.rng.random()
        if r < 0.3:
            opts += ['--mmap', str(self.rng.choice(['c', 'r', 'off']))]
        if self.rng.random() < 0.3:
            opts.append('--keep-file-open')
        return opts

    def add(self, cid, desc, args, expect):
        self.cases.append({'id': cid, 'desc': desc, 'args': args, 'expect': expect})

    def save_expected(self, name, arr):
        path = os.path.join(self.expdir, name)
        np.save(path, arr, allow_pickle=False)
        return {'kind': 'npy', 'npy': self.rel(path), 'dtype': arr.dtype.str, 'shape': list(arr.shape)}

    # -- one image

    def make_image(self, index, combo):
        fmt, variant, dt_name, bo, gz = combo
        rng = self.rng
        base = os.path.join(self.outdir, f'{index:03d}')
        dt = np_dtype(dt_name, bo)
        if fmt == 'mgh':
            # MGH stores 4 dims (nibabel writes 3-D or 4-D; a trailing 4th dim of 1 is dropped on load).
            shape = random_shape(rng, max_ndim=4, min_ndim=3, allow_zero=False)
        else:
            shape = random_shape(rng, max_ndim=5)
        if fmt == 'npy' and rng.random() < 0.03:
            shape = ()
        arr = random_values(rng, dt, math.prod(shape)).reshape(shape, order='F')
        open_args = []
        info_extra = {}
        if fmt.startswith('nifti'):
            path, notes = write_nifti(rng, base, fmt, dt_name, bo, gz, shape, arr)
        elif fmt == 'analyze':
            path, notes = write_analyze(rng, base, variant, dt_name, bo, gz, shape, arr)
        elif fmt == 'mgh':
            arr = arr.astype(dt)
            path, notes = write_mgh(rng, base, dt_name, gz, shape, arr)
        elif fmt == 'npy':
            path, notes, offset, fortran = write_npy(rng, base, variant, arr)
            prox = ArrayProxy(path, (shape, dt, offset), order='F' if fortran else 'C')
            info_extra = {'format': 'npy'}
        else:
            path, raw_spec, prox = write_raw(rng, base, variant, gz, arr, dt)
            open_args = ['--raw', raw_spec]
            notes = raw_spec
            info_extra = {'format': 'raw'}
        desc = f'{fmt}{"/" + variant if variant else ""} {dt.str} shape={shape} {"gz " if gz else ""}{notes}'
        rel = self.rel(path)
        if fmt in ('npy', 'raw'):
            img = None
        else:
            img = nib.load(path)
            prox = img.dataobj
        self.image_cases(index, rel, desc, open_args, img, prox, info_extra)

    def full_arrays(self, prox):
        """(unscaled, scaled-or-exception) full arrays with the proxy's true shape (nibabel's Q6 fixed)."""
        shape = tuple(int(d) for d in prox.shape)
        unscaled = np.asarray(prox.get_unscaled())
        if unscaled.shape != shape:
            unscaled = unscaled.reshape(shape)  # only zero-size/0-d arrays come back as shape (0,)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                scaled = np.asarray(prox)
            if scaled.shape != shape:
                scaled = scaled.reshape(shape)
        except Exception as e:  # noqa: BLE001 — nibabel's answer is the error
            scaled = e
        return unscaled, scaled

    def image_cases(self, index, rel, desc, open_args, img, prox, info_extra):
        rng = self.rng
        shape = tuple(int(d) for d in prox.shape)
        unscaled, scaled = self.full_arrays(prox)
        # No scaled answer: nibabel raises (e.g. records with a slope), or would need longdouble (the contract: error).
        if isinstance(scaled, Exception):
            overflow = f'nibabel raises {type(scaled).__name__}: {scaled}'[:200]
        elif scaled.dtype == np.longdouble:
            overflow = 'scaling overflows float64 (nibabel would use longdouble)'
        else:
            overflow = ''
        cid = f'{self.seed}/{index:03d}'
        n_case = 0

        def next_id():
            nonlocal n_case
            n_case += 1
            return f'{cid}/{n_case}'

        # info
        if not overflow:
            info = self.expected_info(img, prox, scaled, info_extra)
            self.add(next_id(), desc, ['info', rel] + open_args, {'kind': 'info', 'info': info})
        # scaled slices
        n_specs = int(rng.integers(2, 6))
        for k in range(n_specs):
            spec = random_spec(rng, shape) if k else (Spec([], '') if rng.random() < 0.5 else Spec([Ellipsis], '...'))
            args = ['slice', rel, spec.text, '-o', '{out}'] + open_args + self.cli_options()
            cur = next_id()
            if overflow:
                self.add(cur, desc + f' spec={spec.text!r}', args, {'kind': 'error', 'why': overflow})
                continue
            self.check_spec_text(spec)
            spec.quirky |= 0 in shape  # nibabel's Q6/Q8 zero-size bugs
            exp = self.scaled_expected(prox, scaled, spec)
            self.add(cur, desc + f' spec={spec.text!r}', args,
                     self.save_expected(cur.replace('/', '_') + '.npy', exp))
        # unscaled
        for _ in range(int(rng.integers(1, 3))):
            spec = random_spec(rng, shape)
            cur = next_id()
            self.check_spec_text(spec)
            exp = numpy_index(unscaled, spec.items)
            args = ['slice', rel, spec.text, '-o', '{out}', '--unscaled'] + open_args + self.cli_options()
            self.add(cur, desc + f' unscaled spec={spec.text!r}', args,
                     self.save_expected(cur.replace('/', '_') + '.npy', exp))
        # --dtype
        for _ in range(int(rng.integers(1, 3))):
            self.dtype_case(next_id(), rel, desc, open_args, prox, shape, overflow)
        # a few error specs per image, now and then
        if rng.random() < 0.15:
            choices = error_specs(rng, shape)
            why, text = choices[int(rng.integers(0, len(choices)))]
            self.confirm_numpy_error(unscaled, text, why, prox)
            args = ['slice', rel, text, '-o', '{out}'] + open_args
            self.add(next_id(), desc + f' bad spec {text!r}', args, {'kind': 'error', 'why': why})

    def dtype_case(self, cur, rel, desc, open_args, prox, shape, overflow):
        rng = self.rng
        target = str(rng.choice(DTYPE_TARGETS))
        spec = random_spec(rng, shape)
        args = ['slice', rel, spec.text, '-o', '{out}', '--dtype', target] + open_args + self.cli_options()
        label = desc + f' dtype={target} spec={spec.text!r}'
        if overflow:
            # np.asarray(prox, dtype=X) goes through the same scaling first.
            self.add(cur, label, args, {'kind': 'error', 'why': overflow})
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                full = np.asarray(prox, dtype=target)
        except Exception as e:  # noqa: BLE001 — e.g. a record dtype cannot be cast to numbers
            self.add(cur, label, args, {'kind': 'error', 'why': f'{type(e).__name__}: {e}'[:200]})
            return
        if full.shape != shape:
            full = full.reshape(shape)
        if not self.cast_is_defined(prox, target):
            return  # float -> int outside the target's range is platform-defined in numpy: not a test
        exp = numpy_index(full, spec.items)
        self.add(cur, label, args, self.save_expected(cur.replace('/', '_') + '.npy', exp))

    def cast_is_defined(self, prox, target):
        """False when np.asarray(prox, dtype=target) would cast a non-finite or out-of-range float to an integer.

        nibabel first converts the scaled array to promote_types(scaled, target) — a float for e.g. uint64 ->
        int64 or int64 -> uint64 — and only then to the target, so the check is on that intermediate."""
        tgt = np.dtype(target)
        if tgt.kind not in 'iu':
            return True
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            scaled = np.asarray(prox)
            if scaled.dtype.fields is not None or scaled.size == 0:
                return True
            mid = scaled.astype(np.promote_types(scaled.dtype, tgt))
        if mid.dtype.kind in 'iu':
            return True  # integer to integer: numpy wraps, defined
        vals = (mid.real if mid.dtype.kind == 'c' else mid).astype(np.float64)
        if not np.all(np.isfinite(vals)):
            return False
        info = np.iinfo(tgt)
        # Truncation toward zero must land inside the range (strict bounds dodge the rounding of the limits).
        t = np.trunc(vals)
        return bool(np.all(t > float(info.min) - 1) and np.all(t < float(info.max)) and np.all(t >= info.min))

    def expected_info(self, img, prox, scaled, extra):
        info = {
            'format': extra.get('format') or type(img).__name__,
            'shape': [int(d) for d in prox.shape],
            'dtype': prox.dtype.str,
            'scaled_dtype': scaled.dtype.str,
            'offset': int(prox.offset),
            'slope': json_float(float(np.asarray(prox.slope))),
            'inter': json_float(float(np.asarray(prox.inter))),
            'order': prox.order,
            'affine': None,
            'zooms': None,
        }
        if img is not None:
            info['affine'] = [[float(v) for v in row] for row in np.asarray(img.affine)]
            info['zooms'] = [float(z) for z in img.header.get_zooms()]
        return info

    # -- self-checks

    def check_spec_text(self, spec):
        if not self.self_check:
            return
        parsed = spec_items_from_text(spec.text)
        if tuple(parsed) != tuple(spec.items):
            raise AssertionError(f'spec text {spec.text!r} parses to {parsed!r}, not {spec.items!r}')

    def scaled_expected(self, prox, full, spec):
        """`np.asarray(img.dataobj[SPEC])`, computed as numpy slicing of nibabel's full scaled array.

        For specs outside nibabel's slicing bugs nibabel's own slicer is asked too: its values must agree (a
        self-check), and its dtype wins where the two differ only in byte order — nibabel returns a native-order
        numpy scalar for every all-integer index, also `0, 0, 0, ...`, where numpy keeps a 0-d array in the storage
        byte order."""
        exp = numpy_index(full, spec.items)
        if spec.quirky or exp.size == 0:
            # nibabel gets some empty results' shapes wrong (e.g. `0:2:-3` gives length 1): numpy's answer.
            return exp
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            got = np.asarray(prox[tuple(spec.items)])
        if got.dtype != exp.dtype and got.dtype == exp.dtype.newbyteorder():
            exp = exp.astype(got.dtype)
        if self.self_check:
            if got.dtype != exp.dtype or got.shape != exp.shape or not same_values(got, exp):
                raise AssertionError(f'nibabel {got.dtype}{got.shape} differs from numpy {exp.dtype}'
                                     f'{exp.shape} for spec {spec.text!r}')
            self.checks['nibabel_slices_compared'] += 1
        return exp

    def confirm_numpy_error(self, full, text, why, prox=None):
        """numpy (or, for fancy indices, which numpy allows, nibabel's proxy) must reject the spec."""
        if not self.self_check:
            return
        target = prox if why == 'fancy index' else full
        try:
            items = spec_items_from_text(text)
            with warnings.catch_warnings():
                warnings.simplefilter('error')
                _ = target[items]
        except Exception:  # noqa: BLE001 — any failure is what we want
            self.checks['numpy_errors_confirmed'] += 1
            return
        raise AssertionError(f'{type(target).__name__} accepts {text!r} ({why}) on shape {full.shape}')

    # -- whole-file error cases

    def error_cases(self):
        """Bad files: each must make the CLI exit 2 with one `error:` line."""
        rng = self.rng
        d = os.path.join(self.outdir, 'bad')
        os.makedirs(d, exist_ok=True)
        made = []

        def case(name, args_list, why, check):
            if self.self_check:
                check()  # nibabel / numpy must fail on it too
            for j, args in enumerate(args_list):
                self.add(f'{self.seed}/bad/{name}/{j}', f'bad file: {why}', args, {'kind': 'error', 'why': why})
            made.append(name)

        def fails(fn):
            def run():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter('ignore')
                        fn()
                except Exception:  # noqa: BLE001
                    return
                raise AssertionError('nibabel accepted a bad file')
            return run

        def good_nifti(name, gz=False, shape=(4, 5, 6), dt='<i2', two=False):
            hdr = (nib.Nifti2Header if two else nib.Nifti1Header)(endianness=dt[0] if dt[0] in '<>' else '<')
            hdr.set_data_dtype(np.dtype(dt))
            hdr.set_data_shape(shape)
            off = 544 if two else 352
            hdr['vox_offset'] = off
            arr = random_values(rng, np.dtype(dt), math.prod(shape))
            blob = hdr.binaryblock + b'\0' * (off - len(hdr.binaryblock)) + arr.tobytes()
            return blob

        def put(name, blob, gz=False):
            path = os.path.join(d, name)
            write_bytes(path, blob, gz, rng)
            return self.rel(path)

        def slice_all(rel, extra=()):
            return ['slice', rel, '', '-o', '{out}'] + list(extra)

        blob = good_nifti('t')
        # Truncated data (header intact): reading everything must fail.
        rel = put('trunc_data.nii', blob[:352 + 50])
        case('trunc_data', [slice_all(rel), slice_all(rel, ['--mmap', 'off'])], 'truncated data',
             fails(lambda: np.asarray(nib.load(os.path.join(self.outdir, rel)).dataobj)))
        # Truncated header.
        rel = put('trunc_hdr.nii', blob[:200])
        case('trunc_hdr', [['info', rel], slice_all(rel)], 'truncated header',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        rel = put('empty.nii', b'')
        case('empty', [['info', rel], slice_all(rel)], 'empty file',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # Wrong magic.
        bad = bytearray(blob)
        bad[344:348] = b'n+3\0'
        rel = put('bad_magic.nii', bytes(bad))
        case('bad_magic', [['info', rel], slice_all(rel)], 'wrong magic',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # Unknown datatype code.
        bad = bytearray(blob)
        bad[70:72] = struct.pack('<h', 1234)
        rel = put('bad_dtype.nii', bytes(bad))
        case('bad_dtype', [['info', rel], slice_all(rel)], 'unknown datatype',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # vox_offset below 352 in a single file.
        bad = bytearray(blob)
        bad[108:112] = struct.pack('<f', 100.0)
        rel = put('low_offset.nii', bytes(bad))
        case('low_offset', [['info', rel], slice_all(rel)], 'vox_offset too low for a single file',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # Offset past the end of the file.
        bad = bytearray(blob)
        bad[108:112] = struct.pack('<f', 100000.0)
        rel = put('offset_past_end.nii', bytes(bad))
        case('offset_past_end', [slice_all(rel)], 'data offset past the end of the file',
             fails(lambda: np.asarray(nib.load(os.path.join(self.outdir, rel)).dataobj)))
        # Valid slope with a NaN intercept (nibabel: HeaderDataError at load).
        bad = bytearray(blob)
        bad[112:120] = struct.pack('<ff', 2.0, float('nan'))
        rel = put('nan_inter.nii', bytes(bad))
        case('nan_inter', [['info', rel], slice_all(rel)], 'valid slope with invalid intercept',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # Truncated gzip stream.
        gzb = gzip.compress(blob, mtime=0)
        path = os.path.join(d, 'trunc.nii.gz')
        with open(path, 'wb') as f:
            f.write(gzb[: len(gzb) // 2])
        rel = self.rel(path)
        case('trunc_gz', [slice_all(rel)], 'truncated gzip stream',
             fails(lambda: np.asarray(nib.load(os.path.join(self.outdir, rel)).dataobj)))
        # Not gzip at all, with a .gz name.
        rel = put('not_gzip.nii.gz', blob)
        case('not_gzip', [['info', rel], slice_all(rel)], 'not a gzip stream',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # NIfTI-2 with a broken eol_check.
        b2 = bytearray(good_nifti('t2', two=True))
        b2[8:12] = b'\x01\x02\x03\x04'
        rel = put('bad_eol.nii', bytes(b2))
        case('bad_eol', [['info', rel], slice_all(rel)], 'NIfTI-2 eol_check corrupted',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        # Pair with its .img missing.
        hdr = nib.Nifti1Header()
        hdr['magic'] = b'ni1'
        hdr.set_data_shape((3, 4))
        rel = put('lonely.hdr', hdr.binaryblock)
        case('missing_img', [slice_all(rel)], 'pair without its .img',
             fails(lambda: np.asarray(nib.load(os.path.join(self.outdir, rel)).dataobj)))
        # MGH: a zero dimension, a wrong version, truncated data.
        img = MGHImage(np.arange(24, dtype='>f4').reshape(2, 3, 4), np.eye(4))
        tmp = os.path.join(d, 'tmp.mgh')
        img.to_filename(tmp)
        with open(tmp, 'rb') as f:
            mgh = bytearray(f.read())
        os.remove(tmp)
        bad = bytearray(mgh)
        bad[4:8] = struct.pack('>i', 0)
        rel = put('mgh_zero_dim.mgh', bytes(bad))
        case('mgh_zero_dim', [['info', rel], slice_all(rel)], 'MGH with a zero dimension',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        bad = bytearray(mgh)
        bad[0:4] = struct.pack('>i', 7)
        rel = put('mgh_version.mgh', bytes(bad))
        case('mgh_version', [['info', rel], slice_all(rel)], 'MGH version not 1',
             fails(lambda: nib.load(os.path.join(self.outdir, rel))))
        rel = put('mgh_trunc.mgz', bytes(mgh[:284 + 30]), gz=True)
        case('mgh_trunc', [slice_all(rel)], 'truncated MGZ data',
             fails(lambda: np.asarray(nib.load(os.path.join(self.outdir, rel)).dataobj)))
        # npy: bad magic, truncated data.
        path = os.path.join(d, 'good.npy')
        np.save(path, np.arange(60, dtype='<i4').reshape(3, 4, 5))
        with open(path, 'rb') as f:
            npy = f.read()
        os.remove(path)
        rel = put('npy_magic.npy', b'\x93NUMPX' + npy[6:])
        case('npy_magic', [['info', rel], slice_all(rel)], 'npy with wrong magic',
             fails(lambda: np.load(os.path.join(self.outdir, rel))))
        rel = put('npy_trunc.npy', npy[:-17])
        case('npy_trunc', [slice_all(rel)], 'truncated npy data',
             fails(lambda: np.load(os.path.join(self.outdir, rel))))
        # Raw: spec larger than the file; bad spec text.
        rel = put('small.raw', bytes(range(48)))
        big = 'shape=4,4,4;dtype=<i2;offset=0'
        case('raw_too_big', [slice_all(rel, ['--raw', big])], 'raw spec larger than the file',
             fails(lambda: np.asarray(ArrayProxy(os.path.join(self.outdir, rel), ((4, 4, 4), '<i2', 0)))))
        big = 'shape=2,3,4;dtype=<i2;offset=13'
        case('raw_offset', [slice_all(rel, ['--raw', big])], 'raw offset pushes data past the end',
             fails(lambda: np.asarray(ArrayProxy(os.path.join(self.outdir, rel), ((2, 3, 4), '<i2', 13)))))
        for j, bad_spec in enumerate(['shape=2,3;dtype=<q9', 'shape=2,x;dtype=<i2', 'dtype=<i2',
                                      'shape=2,3;dtype=<i2;order=Z', 'shape=2,3;dtype=<i2;slope=abc']):
            self.add(f'{self.seed}/bad/raw_spec/{j}', 'malformed --raw spec', slice_all(rel, ['--raw', bad_spec]),
                     {'kind': 'error', 'why': f'malformed raw spec {bad_spec!r}'})
        # Raw integer data with a NaN slope: nibabel refuses to scale (Overflow using highest float type).
        case('raw_nan_slope', [slice_all(rel, ['--raw', 'shape=2,3,4;dtype=<i2;slope=nan'])],
             'NaN slope on integer data',
             fails(lambda: np.asarray(ArrayProxy(os.path.join(self.outdir, rel), ((2, 3, 4), '<i2', 0, np.nan)))))
        # A file that does not exist.
        self.add(f'{self.seed}/bad/missing/0', 'missing file', ['info', 'bad/does_not_exist.nii'],
                 {'kind': 'error', 'why': 'no such file'})
        self.add(f'{self.seed}/bad/missing/1', 'missing file', slice_all('bad/does_not_exist.nii'),
                 {'kind': 'error', 'why': 'no such file'})
        # Slice-spec errors on a good file, each class.
        rel = put('good.nii', blob)
        good = nib.load(os.path.join(self.outdir, rel)).dataobj
        full = np.asarray(good)
        for j, (why, text) in enumerate(error_specs(rng, full.shape)):
            self.confirm_numpy_error(full, text, why, good)
            self.add(f'{self.seed}/bad/spec/{j}', f'bad spec: {why}', ['slice', rel, text, '-o', '{out}'],
                     {'kind': 'error', 'why': why})
        return made

    def write_manifest(self):
        manifest = {
            'seed': self.seed,
            'numpy': np.__version__,
            'nibabel': nib.__version__,
            'self_checks': self.checks,
            'cases': self.cases,
        }
        with open(os.path.join(self.outdir, 'manifest.json'), 'w') as f:
            json.dump(manifest, f, indent=1, allow_nan=False)


def json_float(v):
    """JSON has no NaN/inf: spell them as strings, as `voxelscan info` does (the comparer wants the same string)."""
    if math.isfinite(v):
        return v
    return fmt_float(v)


def same_values(a, b):
    """Equal bit for bit, except that any NaN equals any NaN (per float, or per complex half)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind not in 'fc':
        return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    native = a.dtype.newbyteorder('=')
    fa = np.ascontiguousarray(a.astype(native)).reshape(-1)
    fb = np.ascontiguousarray(b.astype(native)).reshape(-1)
    if a.dtype.kind == 'c':
        half = 'f%d' % (a.dtype.itemsize // 2)
        fa, fb = fa.view(half), fb.view(half)
    both_nan = np.isnan(fa) & np.isnan(fb)
    ints = 'u%d' % fa.dtype.itemsize
    return bool(np.all((fa.view(ints) == fb.view(ints)) | both_nan))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seed', type=int, required=True)
    p.add_argument('--count', type=int, default=150, help='images to generate (error files come on top)')
    p.add_argument('--out', required=True, help='output directory (created)')
    p.add_argument('--no-self-check', dest='self_check', action='store_false')
    p.add_argument('--no-errors', dest='errors', action='store_false', help='skip the bad-file cases')
    args = p.parse_args(argv)
    nib.imageglobals.logger.setLevel(50)  # header "fixes" are expected here, not news
    os.makedirs(args.out, exist_ok=True)
    gen = Generator(args.seed, args.out, args.self_check)
    combos = all_combos()
    start = args.seed * args.count
    with np.errstate(all='ignore'):
        for i in range(args.count):
            combo = combos[(start + i) % len(combos)]
            try:
                gen.make_image(i, combo)
            except Exception as e:
                raise RuntimeError(f'seed {args.seed} image {i} {combo}: {e}') from e
        if args.errors:
            gen.error_cases()
    gen.write_manifest()
    print(f'seed {args.seed}: {len(gen.cases)} cases from {args.count} images in {args.out} '
          f'(self-checks: {gen.checks})')


if __name__ == '__main__':
    sys.exit(main())
