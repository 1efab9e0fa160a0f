"""nibabel's side of benches/slicing.rs: times np.asarray(img.dataobj[spec]) for the same files and specs.

Usage: nibabel_slicing.py [--quick] NAME=PATH ...   → prints {NAME: {spec: seconds}} as JSON (medians).
"""
import json
import statistics
import sys
import time

import nibabel as nib
import numpy as np

SPECS = {
    "t1": {":, :, 88": np.s_[:, :, 88], "128": np.s_[128], ":, 128": np.s_[:, 128], "": np.s_[...]},
    "bold": {"..., 150": np.s_[..., 150], "48, 48, 30, :": np.s_[48, 48, 30, :]},
}


def main(argv):
    quick = "--quick" in argv
    out = {}
    for arg in (a for a in argv if "=" in a):
        name, path = arg.split("=", 1)
        base = name.split(".")[0]
        gz = name.endswith(".gz")
        img = nib.load(path)
        out[name] = {}
        for text, spec in SPECS[base].items():
            if gz and base == "bold" and text == "":
                continue
            reps = 3 if gz else (5 if quick else 25)
            def run():
                if text == "":
                    return np.asarray(img.dataobj)
                return np.asarray(img.dataobj[spec])
            run()
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            out[name][text] = statistics.median(times)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
