"""nilearn's side of benches/world.rs: NiftiSpheresMasker's mean time series of one sphere.

Usage: nilearn_spheres.py PATH X Y Z RADIUS
  → prints JSON {"seconds": best of 3 runs, "median": ..., "series": [...], "versions": {...}}. Each run is what a
    user writes: nib.load(PATH), NiftiSpheresMasker(seeds=[(X, Y, Z)], radius=RADIUS, dtype="float64").fit_transform(img)
    (float64: with the default the means of int16 data come out truncated to integers).
"""
import json
import statistics
import sys
import time
import warnings

import nibabel as nib
import nilearn
import numpy as np
from nilearn.maskers import NiftiSpheresMasker

warnings.filterwarnings("ignore")


def run(path, seed, radius):
    img = nib.load(path)
    masker = NiftiSpheresMasker(seeds=[seed], radius=radius, dtype="float64")
    return masker.fit_transform(img)[:, 0]


def main(argv):
    path = argv[1]
    seed = tuple(float(v) for v in argv[2:5])
    radius = float(argv[5])
    times, series = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        series = run(path, seed, radius)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "median": statistics.median(times),
                "series": [float(v) for v in series],
                "versions": {"nilearn": nilearn.__version__, "nibabel": nib.__version__, "numpy": np.__version__},
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv)
