"""nibabel's array-proxy protocol over voxelscan's Rust proxy."""

import operator

import numpy as np

from . import _voxelscan

_RGB = {
    "rgb24": np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]),
    "rgba32": np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")]),
}


def _np_dtype(text):
    return _RGB.get(text) or np.dtype(text)


def _factor(pair):
    """A scale factor with the type nibabel gives it (Python float, or a float32/float16 scalar)."""
    value, kind = pair
    return value if kind == "float64" else np.dtype(kind).type(value)


def _part(value):
    return "" if value is None else str(operator.index(value))


def spec_text(key):
    """numpy basic indexing → voxelscan's slice text (``"1:3, None, ..., -1"``). Fancy indexing is refused, as
    nibabel's proxy refuses it."""
    items = key if isinstance(key, tuple) else (key,)
    parts = []
    for item in items:
        if item is None:
            parts.append("None")
        elif item is Ellipsis:
            parts.append("...")
        elif isinstance(item, slice):
            parts.append(f"{_part(item.start)}:{_part(item.stop)}:{_part(item.step)}")
        elif isinstance(item, (bool, np.bool_)):
            raise ValueError("Cannot handle fancy indexing (a boolean index)")
        else:
            try:
                parts.append(str(operator.index(item)))
            except TypeError:
                raise ValueError(f"Cannot handle fancy indexing ({type(item).__name__} index)") from None
    return ", ".join(parts)


class VoxelProxy:
    """An array proxy with nibabel's protocol, reading through voxelscan.

    ``np.asarray(proxy)`` / ``proxy[...]`` give the same arrays as nibabel's ``ArrayProxy`` (values, dtype and
    byte order), read with voxelscan's planner: only the needed bytes, ``.gz`` through a seek-point index, URLs
    through ranged GETs. The arrays own memory filled by Rust, handed to numpy without a copy.

    Pickling and ``copy.copy``/``copy.deepcopy`` give a new proxy over the same file (as nibabel's proxies do:
    nothing is read). ``reshape`` returns a new proxy.
    """

    def __init__(self, location, *, mmap=True, keep_file_open=False, raw=None, store=None):
        if mmap not in (True, False, "c", "r"):
            raise ValueError("mmap should be one of {True, False, 'c', 'r'}")
        self._args = (str(location), mmap, bool(keep_file_open), raw, dict(store or {}))
        mode = {True: "c", False: "off"}.get(mmap, mmap)
        self._inner = _voxelscan.open(str(location), mode, bool(keep_file_open), raw, store)
        self._reshaped = None

    @classmethod
    def _from_inner(cls, args, inner, reshaped):
        obj = cls.__new__(cls)
        obj._args, obj._inner, obj._reshaped = args, inner, reshaped
        return obj

    # --- the protocol's attributes ------------------------------------------------------------------------------
    @property
    def is_proxy(self):
        return True

    @property
    def shape(self):
        return tuple(self._inner.shape)

    @property
    def ndim(self):
        return len(self._inner.shape)

    @property
    def dtype(self):
        """Storage dtype, byte order included (``>i2`` for a big-endian file)."""
        return _np_dtype(self._inner.dtype)

    @property
    def offset(self):
        return self._inner.offset

    @property
    def slope(self):
        return _factor(self._inner.slope)

    @property
    def inter(self):
        return _factor(self._inner.inter)

    @property
    def order(self):
        return self._inner.order

    @property
    def file_like(self):
        return self._inner.location

    # --- reads ---------------------------------------------------------------------------------------------------
    def _read(self, key=(), dtype=None, scaled=True):
        text = "" if isinstance(key, tuple) and not key else spec_text(key)
        dt = None if dtype is None else np.dtype(dtype).str
        arr = np.asarray(self._inner.read(text, dt, scaled))
        if arr.ndim == 0 and scaled and dtype is None and (self.slope != 1 or self.inter != 0):
            # nibabel scales a single element with numpy scalar arithmetic and returns a numpy scalar.
            return arr[()]
        return arr

    def __array__(self, dtype=None, copy=None):
        """The whole array, scaled; with ``dtype``, cast exactly as nibabel's ``np.asarray(proxy, dtype)``.

        Every call reads into a new array that nothing else refers to, so ``copy=True`` holds, and
        ``copy=False`` is honoured too: no copy of existing data is made.
        """
        return self._read((), dtype, True)

    def __getitem__(self, key):
        return self._read(key)

    def get_unscaled(self):
        """Stored values, storage dtype (byte order included)."""
        return self._read((), None, False)

    def reshape(self, shape):
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        shape = tuple(int(n) for n in shape)
        return VoxelProxy._from_inner(self._args, self._inner.reshape(list(shape)), shape)

    def copy(self):
        return VoxelProxy._from_inner(self._args, self._inner.copy(), self._reshaped)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (_restore, (self._args, self._reshaped))

    def __repr__(self):
        return f"<voxelscan.VoxelProxy {self._inner.location!r} shape={self.shape} dtype={self.dtype}>"


def _restore(args, reshaped):
    location, mmap, keep_file_open, raw, store = args
    proxy = VoxelProxy(location, mmap=mmap, keep_file_open=keep_file_open, raw=raw, store=store)
    return proxy if reshaped is None else proxy.reshape(reshaped)
