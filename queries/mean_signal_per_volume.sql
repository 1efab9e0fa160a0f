-- Mean signal of every volume of a 4-D run (one row per time point).
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
SELECT t, avg(value) AS mean FROM bold GROUP BY t ORDER BY t;
