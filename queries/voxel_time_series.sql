-- The time series of one voxel: reads one element per volume.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
SELECT t, value FROM bold WHERE i = 3 AND j = 4 AND k = 2 ORDER BY t;
