-- Export the first volume to Parquet, then read the export back.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
COPY (SELECT i, j, k, value FROM bold WHERE t = 0) TO 'bold_t0.parquet' STORED AS PARQUET;
CREATE EXTERNAL TABLE t0 STORED AS PARQUET LOCATION 'bold_t0.parquet';
SELECT count(*) AS voxels, sum(value) AS total, max(k) AS last_slice FROM t0;
