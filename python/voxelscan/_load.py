"""``voxelscan.load``: a nibabel image whose header is nibabel's and whose ``dataobj`` is a :class:`VoxelProxy`."""

import io
import os
import re
from urllib.parse import urlparse

import nibabel as nib
from nibabel.imageclasses import all_image_classes

from . import _voxelscan
from ._proxy import VoxelProxy

_URL = re.compile(r"^(s3|s3a|gs|gcs|az|azure|abfs|abfss|http|https|file)://", re.IGNORECASE)


def is_url(location):
    return bool(_URL.match(location))


def load(location, *, mmap=True, keep_file_open=False, store=None):
    """Open an image as ``nibabel.load`` does — same class (Nifti1Image, Nifti2Image, MGHImage, …), header,
    affine and extensions — with voxelscan's proxy as ``img.dataobj``.

    ``location``: a path or a URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``); ``store``: object-store
    options (``{"aws.region": "…", "aws.endpoint": "…"}``). Local headers are parsed by ``nibabel.load`` itself
    (no data is read); a URL's header bytes are fetched through voxelscan and parsed by nibabel's header class.
    """
    location = os.fspath(location)
    if not isinstance(location, str):
        raise TypeError(f"voxelscan.load: expected a path or URL string, got {type(location).__name__}")
    proxy = VoxelProxy(location, mmap=mmap, keep_file_open=keep_file_open, store=store)
    if is_url(location) and not location.lower().startswith("file://"):
        img = _image_from_header(_voxelscan.header_bytes(location, store), urlparse(location).path)
    else:
        path = location[len("file://"):] if location.lower().startswith("file://") else location
        img = nib.load(path, mmap=False)
    if tuple(img.shape) != proxy.shape:
        raise ValueError(
            f"{location}: nibabel reads shape {tuple(img.shape)} from the header, voxelscan {proxy.shape}"
        )
    img._dataobj = proxy
    return img


def _header_name(name):
    """The file nibabel reads the header from: the ``.hdr`` of an ``.img`` pair, else the file itself."""
    return re.sub(r"\.img(\.gz)?$", lambda m: ".hdr" + (m.group(1) or ""), name, flags=re.IGNORECASE)


def _image_from_header(header, name):
    """Build the image from the header bytes with the class ``nibabel.load`` would choose for ``name``."""
    sniff = (header, _header_name(name))
    for klass in all_image_classes:
        try:
            is_valid, sniff = klass.path_maybe_image(name, sniff)
        except Exception:  # a class that cannot judge this name is not the one
            continue
        if not is_valid:
            continue
        kinds = [kind for kind, _ in klass.files_types]
        if "header" in kinds:
            # A pair: the bytes are the .hdr; the image file is never read through nibabel.
            holders = {kind: nib.FileHolder(filename=name, fileobj=io.BytesIO(b"")) for kind in kinds}
            holders["header"] = nib.FileHolder(filename=_header_name(name), fileobj=io.BytesIO(header))
        else:
            holders = {kind: nib.FileHolder(filename=name, fileobj=io.BytesIO(header)) for kind in kinds}
        return klass.from_file_map(holders, mmap=False)
    raise ValueError(f"{name}: not an image nibabel can read")
