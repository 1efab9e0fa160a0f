"""numpy's side of benches/tsnr.rs: a per-voxel tSNR map, the mean of every volume or of the whole of a 4-D image,
as a numpy expert writes them on `np.asarray(img.dataobj)`.

Usage: tsnr_numpy.py PATH tsnr|mean_t|mean
  → prints JSON {"seconds": load + compute in process, "rows": groups, "checksum": sum of the result}
"""
import json
import sys
import time

import nibabel as nib
import numpy as np


def main(path, case):
    start = time.perf_counter()
    d = np.asarray(nib.load(path).dataobj)
    if case == "tsnr":
        r = d.mean(-1) / d.std(-1, ddof=1)
    elif case == "mean":
        r = np.array([d.mean(dtype=np.float64)])
    elif case == "mean_t":
        r = d.reshape(-1, d.shape[-1]).mean(0)
    else:
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": int(r.size), "checksum": float(np.sum(r, dtype=np.float64))}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
