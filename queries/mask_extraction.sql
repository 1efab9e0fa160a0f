-- The voxels inside a mask, in nilearn's NiftiMasker order: C order of (i, j, k) within each volume.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
CREATE EXTERNAL TABLE mask STORED AS NIFTI LOCATION 'mask.nii';
SELECT b.t, b.i, b.j, b.k, b.value
FROM bold b JOIN mask m ON b.i = m.i AND b.j = m.j AND b.k = m.k
WHERE m.value <> 0 AND b.t < 2
ORDER BY b.t, b.i, b.j, b.k;
