-- A BIDS dataset: the table over the runs gets one column per entity in the names (sub, task, datatype, suffix),
-- and participants.tsv joins on them. DataFusion 55's CSV reader applies `null_regex` only when inferring a
-- schema, so the columns are read as text and BIDS's `n/a` becomes NULL with NULLIF.
CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION 'bids/sub-*/func/*_bold.nii';
CREATE EXTERNAL TABLE participants_tsv (participant_id VARCHAR, age VARCHAR, sex VARCHAR)
STORED AS CSV LOCATION 'bids/participants.tsv'
OPTIONS ('format.delimiter' E'\t', 'format.has_header' 'true');
CREATE VIEW participants AS
SELECT participant_id, CAST(NULLIF(age, 'n/a') AS DOUBLE) AS age, NULLIF(sex, 'n/a') AS sex
FROM participants_tsv;
SELECT b.sub, p.age, p.sex, avg(b.value) AS mean_signal, count(*) AS voxels
FROM bold b JOIN participants p ON p.participant_id = 'sub-' || b.sub
WHERE b.task = 'faces'
GROUP BY b.sub, p.age, p.sex
ORDER BY b.sub;
