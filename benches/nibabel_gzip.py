"""nibabel's side of benches/gzip_index.rs: the same four reads of a 4-D .nii.gz, timed in-process.

Usage: nibabel_gzip.py PATH  → prints JSON {"nibabel": {case: seconds}, "nibabel+indexed_gzip": {case: seconds} | null,
"versions": {...}} (medians).

- "nibabel": plain gzip (indexed_gzip disabled for this run even when installed): every read decompresses from the
  start of the file.
- "nibabel+indexed_gzip": nibabel's default when indexed_gzip is installed (one IndexedGzipFile kept per image), its
  index made warm first by one read of the last volume; repeated reads then also profit from its read buffer.
"""
import json
import statistics
import sys
import time

import nibabel as nib
import nibabel._compression as compression
import numpy as np

CASES = {
    "time series": np.s_[48, 48, 30, :],
    "volume 150": np.s_[..., 150],
    "last volume": np.s_[..., 299],
    "full read": None,
}


def median_time(img, spec, reps):
    def run():
        if spec is None:
            return np.asarray(img.dataobj)
        return np.asarray(img.dataobj[spec])

    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv):
    path = argv[0]
    have_igz = compression.HAVE_INDEXED_GZIP
    out = {"versions": {"nibabel": nib.__version__, "numpy": np.__version__}}

    compression.HAVE_INDEXED_GZIP = False
    img = nib.load(path)
    out["nibabel"] = {name: median_time(img, spec, 3) for name, spec in CASES.items()}
    compression.HAVE_INDEXED_GZIP = have_igz

    out["nibabel+indexed_gzip"] = None
    if have_igz:
        import indexed_gzip

        out["versions"]["indexed_gzip"] = indexed_gzip.__version__
        img = nib.load(path)
        np.asarray(img.dataobj[..., 299])  # builds the index over the whole file
        out["nibabel+indexed_gzip"] = {
            name: median_time(img, spec, 3 if spec is None or name == "time series" else 7)
            for name, spec in CASES.items()
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
