-- How many times each job was claimed: every claim adds one and nothing ever lowers it, so it tells the
-- claims of a job apart and fences their leases (worker/store/deliveries.py: the outcome write and the lease
-- renewal match it). `attempts` fenced them before, but an outcome write for a version that replaced the
-- row meanwhile resets `attempts` to 0, so a later claim could get the count of an earlier one, and the
-- earlier claim's stalled holder then released the new holder's lease and a third claimer sent the job
-- again (ABA). bigint: a counter of every claim a job ever had must not wrap.
ALTER TABLE delivery_jobs ADD COLUMN claims bigint NOT NULL DEFAULT 0;
