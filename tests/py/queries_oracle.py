"""Independent answers for the example queries of queries/*.sql (tests/queries.rs compares queries/*.csv with them).

Usage: queries_oracle.py DIR, where DIR holds the fixtures tests/queries.rs writes (bold.nii and runs/*.nii).
Output (stdout): a JSON object {query name: [section, ...]} with one section per statement that prints rows, in
order: {"columns": [...], "rows": [[...], ...]}. Every value comes from nibabel + numpy only, written from what each
query means (not from voxelscan's output); a query missing here fails the test.
"""
import json
import os
import sys

import nibabel as nib
import numpy as np


def load(path):
    """np.asarray(img.dataobj) as float64 (the scaled values), and the index grids of its shape."""
    data = np.asarray(nib.load(path).dataobj).astype(np.float64)
    return data, np.indices(data.shape)


def section(columns, rows):
    return {"columns": columns, "rows": [[plain(v) for v in row] for row in rows]}


def plain(v):
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return v


def mean_signal_per_volume(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    return [section(["t", "mean"], [[t, a[..., t].mean()] for t in range(a.shape[3])])]


def parquet_export(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    first = a[..., 0]
    return [
        # COPY reports the rows written.
        section(["count"], [[first.size]]),
        section(["voxels", "total", "last_slice"], [[first.size, first.sum(), first.shape[2] - 1]]),
    ]


def per_file_statistics(d):
    names = sorted(n for n in os.listdir(os.path.join(d, "runs")) if n.endswith(".nii"))
    stats, run02_t0 = [], 0
    for name in names:
        a, _ = load(os.path.join(d, "runs", name))
        stats.append([f"runs/{name}", a.size, a.mean(), a.shape[3]])
        if "run-02" in name:
            run02_t0 += a[..., 0].size
    return [
        section(["file", "voxels", "mean", "volumes"], stats),
        section(["voxels"], [[run02_t0]]),
    ]


def roi_box(d):
    a, (i, j, k, t) = load(os.path.join(d, "bold.nii"))
    sel = a[(i >= 2) & (i <= 5) & (j >= 1) & (j <= 3) & (k == 1) & (t < 3)]
    return [section(["voxels", "mean", "lowest", "highest"], [[sel.size, sel.mean(), sel.min(), sel.max()]])]


def slab_histogram(d):
    a, (_, _, k, _) = load(os.path.join(d, "bold.nii"))
    bins = np.floor(a[k == 2] / 10) * 10
    values, counts = np.unique(bins, return_counts=True)
    return [section(["bin", "voxels"], [[b, c] for b, c in zip(values, counts)])]


def voxel_time_series(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    return [section(["t", "value"], [[t, a[3, 4, 2, t]] for t in range(a.shape[3])])]


def bids_bold(d, n):
    path = os.path.join(d, "bids", f"sub-0{n}", "func", f"sub-0{n}_task-faces_bold.nii")
    img = nib.load(path)
    tr = float(img.header.get_zooms()[3]) * {"msec": 1e-3, "sec": 1.0}[img.header.get_xyzt_units()[1]]
    return np.asarray(img.dataobj).astype(np.float64), tr


def read_tsv(path):
    with open(path) as f:
        header, *rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [dict(zip(header, (None if v == "n/a" else v for v in row))) for row in rows]


def bids_mean_per_subject(d):
    people = {p["participant_id"]: p for p in read_tsv(os.path.join(d, "bids", "participants.tsv"))}
    rows = []
    for n in (1, 2, 3):
        a, _ = bids_bold(d, n)
        p = people[f"sub-0{n}"]
        age = None if p["age"] is None else float(p["age"])
        rows.append([f"0{n}", "" if age is None else age, p["sex"] or "", a.mean(), a.size])
    return [section(["sub", "age", "sex", "mean_signal", "voxels"], rows)]


def events_locked_average(d):
    a, tr = bids_bold(d, 1)
    events = read_tsv(os.path.join(d, "bids", "sub-01", "func", "sub-01_task-faces_events.tsv"))
    acc = {}
    for e in events:
        first = int(np.ceil(float(e["onset"]) / tr))
        for lag in range(3):
            t = first + lag
            if t < a.shape[3]:
                acc.setdefault((e["trial_type"], lag), []).append(a[..., t].ravel())
    rows = [[tt, lag, np.concatenate(v).mean(), sum(x.size for x in v)] for (tt, lag), v in sorted(acc.items())]
    return [section(["trial_type", "lag", "mean_signal", "voxels"], rows)]


def atlas_time_series(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    atlas, _ = load(os.path.join(d, "atlas.nii"))
    labels = [lab for lab in np.unique(atlas) if lab > 0]
    rows = [[int(lab), t, a[..., t][atlas == lab].mean()] for lab in labels for t in range(a.shape[3])]
    return [section(["label", "t", "mean"], rows)]


def mask_extraction(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    mask, (i, j, k) = load(os.path.join(d, "mask.nii"))
    inside = mask != 0
    # Boolean indexing walks C order of (i, j, k), as NiftiMasker does.
    rows = [[t, ii, jj, kk, v] for t in range(2) for ii, jj, kk, v in
            zip(i[inside], j[inside], k[inside], a[..., t][inside])]
    return [section(["t", "i", "j", "k", "value"], rows)]


def one_region_time_series(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    atlas, _ = load(os.path.join(d, "atlas.nii"))
    region = atlas == 4
    rows = [[t, a[..., t][region].mean(), int(region.sum())] for t in range(a.shape[3])]
    return [section(["t", "mean", "voxels"], rows)]


def tsnr_map(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    s = a[:, :, 1, :]
    tsnr = s.mean(-1) / s.std(-1, ddof=1)
    rows = [[i, j, 1, tsnr[i, j]] for i in range(s.shape[0]) for j in range(s.shape[1])]
    return [section(["i", "j", "k", "tsnr"], rows)]


def peaks_from_csv(d):
    a, _ = load(os.path.join(d, "bold.nii"))
    with open(os.path.join(d, "peaks.csv")) as f:
        peaks = [line.strip().split(",") for line in f.readlines()[1:] if line.strip()]
    rows = [[name, t, a[int(i), int(j), int(k), t]] for name, i, j, k in sorted(peaks) for t in range(a.shape[3])]
    return [section(["name", "t", "value"], rows)]


ORACLES = {
    "bids_mean_per_subject": bids_mean_per_subject,
    "events_locked_average": events_locked_average,
    "atlas_time_series": atlas_time_series,
    "mask_extraction": mask_extraction,
    "one_region_time_series": one_region_time_series,
    "tsnr_map": tsnr_map,
    "peaks_from_csv": peaks_from_csv,
    "mean_signal_per_volume": mean_signal_per_volume,
    "parquet_export": parquet_export,
    "per_file_statistics": per_file_statistics,
    "roi_box": roi_box,
    "slab_histogram": slab_histogram,
    "voxel_time_series": voxel_time_series,
}


def main():
    d = sys.argv[1]
    json.dump({name: oracle(d) for name, oracle in ORACLES.items()}, sys.stdout)


if __name__ == "__main__":
    main()
