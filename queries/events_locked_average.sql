-- An events-locked average: for each event of sub-01's events.tsv, the mean signal of the volumes 0, 1 and 2 TRs
-- after its onset (volume t starts at t × TR seconds; `tr` comes from the header: pixdim[4] in its xyzt_units,
-- with the table option 'world').
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bids/sub-*/func/*_bold.nii' OPTIONS ('world' 'true');
CREATE EXTERNAL TABLE events_tsv (onset DOUBLE, duration DOUBLE, trial_type VARCHAR)
STORED AS CSV LOCATION 'bids/sub-01/func/sub-01_task-faces_events.tsv'
OPTIONS ('format.delimiter' E'\t', 'format.has_header' 'true');
WITH locked AS (
  SELECT e.trial_type, b.t - CAST(ceil(e.onset / b.tr) AS BIGINT) AS lag, b.value
  FROM bold b JOIN events_tsv e
    ON b.t >= CAST(ceil(e.onset / b.tr) AS BIGINT) AND b.t < CAST(ceil(e.onset / b.tr) AS BIGINT) + 3
  WHERE b.sub = '01'
)
SELECT trial_type, lag, avg(value) AS mean_signal, count(*) AS voxels
FROM locked
GROUP BY trial_type, lag
ORDER BY trial_type, lag;
