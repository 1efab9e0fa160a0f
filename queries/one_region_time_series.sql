-- The mean time series of one atlas region: the join's dynamic filter narrows the scan of bold to the region's
-- bounding box (EXPLAIN ANALYZE shows dynamic_filter_bytes_skipped).
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
CREATE EXTERNAL TABLE atlas STORED AS NIFTI LOCATION 'atlas.nii';
SELECT b.t, avg(b.value) AS mean, count(*) AS voxels
FROM bold b JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k
WHERE a.value = 4
GROUP BY b.t
ORDER BY b.t;
