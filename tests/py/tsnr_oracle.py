"""numpy's tSNR map of a 4-D image, for tests/dense_aggregate.rs: prints `i j k tsnr` (repr of the float64) for
every voxel in C order of (i, j, k), computed as d.mean(-1) / d.std(-1, ddof=1) on np.asarray(img.dataobj)."""
import sys

import nibabel as nib
import numpy as np

d = np.asarray(nib.load(sys.argv[1]).dataobj).astype(np.float64)
with np.errstate(divide="ignore", invalid="ignore"):
    tsnr = d.mean(-1) / d.std(-1, ddof=1)
out = []
for (i, j, k), v in np.ndenumerate(tsnr):
    out.append(f"{i} {j} {k} {float(v)!r}")
print("\n".join(out))
