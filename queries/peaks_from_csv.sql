-- The time series at peak coordinates listed in a CSV table (a Parquet table works the same way).
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bold.nii';
CREATE EXTERNAL TABLE peaks STORED AS CSV LOCATION 'peaks.csv' OPTIONS ('format.has_header' 'true');
SELECT p.name, b.t, b.value
FROM peaks p JOIN bold b ON b.i = p.i AND b.j = p.j AND b.k = p.k
ORDER BY p.name, b.t;
