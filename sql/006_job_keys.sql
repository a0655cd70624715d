-- Collapsed notifications' email/push jobs (docs/protocol.md amendments 14 and 25): a job carries its
-- `job_key` (`<notification id>:<user>:<channel>`, the same for every version of a collapsed notification)
-- and `version` (the notification's seq). At most one row per key is waiting: a higher version replaces
-- that row's notification (keeping its due time), a lower or equal one is dropped; once the row is final
-- a higher version is a row of its own. Old-format jobs and broadcasts have no key (null: no constraint).
ALTER TABLE delivery_jobs
    ADD COLUMN job_key text,
    ADD COLUMN version integer;
CREATE UNIQUE INDEX delivery_jobs_waiting_key ON delivery_jobs (job_key) WHERE status = 'scheduled';
