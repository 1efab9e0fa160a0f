-- Temporal signal-to-noise ratio of every voxel of one slice: mean over time / sample standard deviation.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
SELECT i, j, k, avg(value) / stddev(value) AS tsnr
FROM bold
WHERE k = 1
GROUP BY i, j, k
ORDER BY i, j, k;
