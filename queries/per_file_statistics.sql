-- Per-file statistics over a directory of runs (one table, a `file` column; shapes may differ).
CREATE EXTERNAL TABLE runs STORED AS NIFTI LOCATION 'runs/';
SELECT file, count(*) AS voxels, avg(value) AS mean, max(t) + 1 AS volumes
FROM runs
GROUP BY file
ORDER BY file;
-- Predicates on `file` drop files before any of their bytes are read.
SELECT count(*) AS voxels FROM runs WHERE file LIKE '%run-02%' AND t = 0;
