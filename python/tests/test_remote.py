"""`voxelscan.load("http://…")`: header bytes fetched through voxelscan and parsed by nibabel, data by ranged GETs;
answers equal `nibabel.load` of the same file on disk. The server is a small Range-capable one on 127.0.0.1."""

import functools
import http.server
import os
import re
import threading

import nibabel as nib
import numpy as np
import pytest

import voxelscan

from test_load import random_image


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single `Range: bytes=a-b` requests answered 206, as object_store's HTTP client needs."""

    requests = []

    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "not found")
            return None
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115 — closed by the handler's copyfile caller
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        RangeHandler.requests.append((self.command, self.path, self.headers.get("Range")))
        if not m:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self._common(path)
            return f
        start, end = m.groups()
        if start == "":
            start, end = max(0, size - int(end)), size - 1
        else:
            start, end = int(start), min(int(end) if end else size - 1, size - 1)
        if start >= size:
            f.close()
            self.send_error(416)
            return None
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self._common(path)
        self._remaining = end - start + 1
        return _Limited(f, end - start + 1)

    def _common(self, path):
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.send_header("ETag", f'"{int(os.path.getmtime(path))}-{os.path.getsize(path)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


class _Limited:
    def __init__(self, f, n):
        self.f, self.n = f, n

    def read(self, size=-1):
        if self.n <= 0:
            return b""
        size = self.n if size < 0 else min(size, self.n)
        data = self.f.read(size)
        self.n -= len(data)
        return data

    def close(self):
        self.f.close()


@pytest.fixture()
def server(tmp_path):
    handler = functools.partial(RangeHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("name", ["remote.nii", "remote.nii.gz", "remote2.nii.gz"])
def test_http_image_equals_local_nibabel(server, name):
    root, url = server
    cls = nib.Nifti2Image if name.startswith("remote2") else nib.Nifti1Image
    path = random_image(root / name, shape=(12, 10, 8, 6), cls=cls)
    RangeHandler.requests.clear()
    img = voxelscan.load(f"{url}/{name}")
    local = nib.load(path)
    assert type(img) is type(local)
    assert img.header.binaryblock == local.header.binaryblock
    assert np.array_equal(img.affine, local.affine)
    got, want = img.dataobj[..., 3], local.dataobj[..., 3]
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(img.get_fdata(), local.get_fdata())
    assert any(r[2] for r in RangeHandler.requests), "reads should be ranged GETs"


def test_http_missing_file_raises(server):
    _, url = server
    with pytest.raises((FileNotFoundError, OSError), match="absent.nii"):
        voxelscan.load(f"{url}/absent.nii")
