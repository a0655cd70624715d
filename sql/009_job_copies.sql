-- A job of a notification stored in-app keeps no copy of it (docs/design.md, "Email/push jobs: an
-- outbox"): its notification is read from the in-app row when the job is claimed. A job without an
-- in-app copy (in-app off, a broadcast's, a producer's job message) still carries the notification.
-- Deleting an in-app notification writes the copy into its jobs still waiting, in the same statement, so
-- what a job sends does not depend on what the user did to the inbox meanwhile. Rows recorded before
-- this script keep their copies.
ALTER TABLE delivery_jobs ALTER COLUMN notification DROP NOT NULL;

-- Only a keyed job (one with an in-app copy, amendment 25) may go without its own copy. NOT VALID: the
-- existing rows all have copies, and checking them would scan the table under a lock.
ALTER TABLE delivery_jobs
    ADD CONSTRAINT delivery_jobs_copy CHECK (notification IS NOT NULL OR job_key IS NOT NULL) NOT VALID;
