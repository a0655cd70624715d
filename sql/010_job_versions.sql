-- Every version of a keyed job recorded so far, final rows included (amendments 14, 25): a job message for
-- a version that was already merged into its key's row, and has since been sent, must find that row. The
-- partial unique index of sql/006 covers only waiting rows; this one is probed by recording (one probe per
-- keyed job, `job_key = $1 AND version >= $2`).
CREATE INDEX IF NOT EXISTS delivery_jobs_key_version ON delivery_jobs (job_key, version)
    WHERE job_key IS NOT NULL;
