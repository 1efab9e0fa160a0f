"""nilearn's side of benches/view.rs: plot_anat of the axial section k of volume t of a 4-D .nii.gz, saved to PNG.

Usage: nilearn_view.py PATH K T OUT.png [--once]
  → prints JSON {"plot_anat": seconds, "import": seconds, "versions": {...}}: "plot_anat" is the median of 3 runs
    of what a user writes (nibabel load, the volume as nibabel's lazy `img.slicer[..., t]` — nilearn's index_img
    would load all 300 volumes first —, plot_anat with display_mode="z" at the section's z in mm,
    output_file=OUT.png), each on a new volume (t, t+1, t+2) so that no run reuses another's data.
  With --once: one run, no JSON (the caller times the whole process, imports included).

Needs matplotlib besides nilearn and nibabel. Plain gzip reads decompress from the start of the file unless
indexed_gzip is installed (reported in "versions").
"""
import json
import statistics
import sys
import time
import warnings

t0 = time.perf_counter()
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import nibabel as nib  # noqa: E402
import nilearn  # noqa: E402
import numpy as np  # noqa: E402
from nilearn import plotting  # noqa: E402

import_time = time.perf_counter() - t0
# nilearn warns that it casts int16 data to float32; that is expected here.
warnings.filterwarnings("ignore", category=UserWarning)


def plot(path, k, t, out):
    img = nib.load(path)
    vol = img.slicer[..., t]
    z = float((vol.affine @ np.array([0.0, 0.0, k, 1.0]))[2])
    plotting.plot_anat(vol, display_mode="z", cut_coords=[z], output_file=out)


def main(argv):
    path, k, t, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    if "--once" in argv[4:]:
        plot(path, k, t, out)
        return
    times = []
    for n in range(3):
        start = time.perf_counter()
        plot(path, k, t + n, out)
        times.append(time.perf_counter() - start)
    versions = {"nilearn": nilearn.__version__, "nibabel": nib.__version__, "matplotlib": matplotlib.__version__}
    try:
        import indexed_gzip

        versions["indexed_gzip"] = indexed_gzip.__version__
    except ImportError:
        versions["indexed_gzip"] = None
    json.dump({"plot_anat": statistics.median(times), "import": import_time, "versions": versions}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
