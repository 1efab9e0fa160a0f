-- Statistics of a box-shaped region of interest in the first three volumes.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
SELECT count(*) AS voxels, avg(value) AS mean, min(value) AS lowest, max(value) AS highest
FROM bold
WHERE i BETWEEN 2 AND 5 AND j BETWEEN 1 AND 3 AND k = 1 AND t < 3;
