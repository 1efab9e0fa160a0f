-- A histogram (bins of 10) of the values in one axial slab, over all volumes.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
SELECT floor(value / 10) * 10 AS bin, count(*) AS voxels
FROM bold
WHERE k = 2
GROUP BY bin
ORDER BY bin;
