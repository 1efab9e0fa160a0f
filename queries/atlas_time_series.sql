-- Mean signal of every atlas region at every time point: nilearn's NiftiLabelsMasker(atlas, strategy='mean').
-- (median, sum, min, max, var_pop, stddev_pop give its other strategies.)
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
CREATE EXTERNAL TABLE atlas STORED AS NIFTI LOCATION 'atlas.nii';
SELECT a.value AS label, b.t, avg(b.value) AS mean
FROM bold b JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k
WHERE a.value > 0
GROUP BY a.value, b.t
ORDER BY label, b.t;
