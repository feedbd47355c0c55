-- What analysts ask of an xhs-profiles folder, in DuckDB (the same answers as analysts.py):
--   duckdb -c "SET VARIABLE out = '/data/xhs'" -c ".read examples/analysts.sql"
-- Every view reads only the files that complete snapshots list in OUT/_manifests: a partition
-- folder can hold a file that is not part of its snapshot yet (a run in progress, or the orphan
-- of a killed run), so a plain glob could count a creator twice.

CREATE OR REPLACE TEMP VIEW manifests AS
SELECT tables FROM read_json(getvariable('out') || '/_manifests/dt=*.json');

CREATE OR REPLACE TEMP VIEW profiles AS
SELECT * EXCLUDE (filename)
FROM read_parquet(getvariable('out') || '/profiles/*/*.parquet', hive_partitioning = true, filename = true)
WHERE filename IN (SELECT getvariable('out') || '/' || unnest(tables.profiles).path FROM manifests);

CREATE OR REPLACE TEMP VIEW profile_changes AS
SELECT * EXCLUDE (filename)
FROM read_parquet(getvariable('out') || '/profile_changes/*/*.parquet', hive_partitioning = true, filename = true)
WHERE filename IN (SELECT getvariable('out') || '/' || unnest(tables.profile_changes).path FROM manifests);

-- latest row per user: each creator's most recent profile, whichever snapshot holds it (not the
-- latest snapshot's set: a creator whose call failed last night keeps its last known row)
SELECT user_id, dt, nickname, fans, liked, collected
FROM profiles
QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY dt DESC) = 1
ORDER BY fans DESC, user_id;

-- 7-day growth: against the latest snapshot at least 7 days back and at most 1 day before that;
-- without the tolerance an ASOF join would silently take a 15-day-old baseline
WITH latest AS (SELECT user_id, dt, fans FROM profiles WHERE dt = (SELECT max(dt) FROM profiles)),
matched AS (
  SELECT c.user_id, c.dt, c.fans, h.dt AS h_dt, h.fans AS h_fans
  FROM latest c ASOF LEFT JOIN (SELECT user_id, dt, fans FROM profiles) h
    ON c.user_id = h.user_id AND c.dt - INTERVAL 7 DAY >= h.dt
),
within AS (  -- the tolerance: at most 1 day before the target, else no baseline
  SELECT user_id, dt, fans,
         CASE WHEN datediff('day', h_dt, dt) <= 8 THEN h_dt END AS baseline_dt,
         CASE WHEN datediff('day', h_dt, dt) <= 8 THEN h_fans END AS fans_then
  FROM matched
)
SELECT user_id, dt, baseline_dt, datediff('day', baseline_dt, dt) AS days, fans, fans_then,
       fans - fans_then AS gained, (fans - fans_then) / datediff('day', baseline_dt, dt) AS per_day
FROM within
ORDER BY gained DESC NULLS LAST, user_id;

-- 30-day growth, same rule
WITH latest AS (SELECT user_id, dt, fans FROM profiles WHERE dt = (SELECT max(dt) FROM profiles)),
matched AS (
  SELECT c.user_id, c.dt, c.fans, h.dt AS h_dt, h.fans AS h_fans
  FROM latest c ASOF LEFT JOIN (SELECT user_id, dt, fans FROM profiles) h
    ON c.user_id = h.user_id AND c.dt - INTERVAL 30 DAY >= h.dt
),
within AS (  -- the tolerance: at most 1 day before the target, else no baseline
  SELECT user_id, dt, fans,
         CASE WHEN datediff('day', h_dt, dt) <= 31 THEN h_dt END AS baseline_dt,
         CASE WHEN datediff('day', h_dt, dt) <= 31 THEN h_fans END AS fans_then
  FROM matched
)
SELECT user_id, dt, baseline_dt, datediff('day', baseline_dt, dt) AS days, fans, fans_then,
       fans - fans_then AS gained, (fans - fans_then) / datediff('day', baseline_dt, dt) AS per_day
FROM within
ORDER BY gained DESC NULLS LAST, user_id;

-- tiers in the latest snapshot (bounds: the data dictionary's tier table)
SELECT tier, tier_label, count(*) AS creators, median(fans) AS median_fans
FROM profile_changes
WHERE dt = (SELECT max(dt) FROM profile_changes) AND NOT disappeared
GROUP BY ALL
ORDER BY median_fans;

-- creators flagged in the last 7 days of snapshots, one row per flag with its reason
SELECT dt, user_id, nickname, unnest(flags) AS flags, unnest(flag_reasons) AS flag_reasons
FROM profile_changes
WHERE dt > (SELECT max(dt) FROM profile_changes) - INTERVAL 7 DAY AND len(flags) > 0
ORDER BY dt, user_id, flags;
