-- The user's unseen notifications through an index of their own, as notifications_unread (sql/001) serves
-- the unread ones: `notifications.mark_seen` with "all" reads them while it holds the user's lock, and
-- through the primary key it read every notification of the user and dropped the seen ones (277 ms for a
-- 100,000-notification user of whom 501 were unseen; 12.9 ms through this index). Every notification is
-- unseen when stored, so the worker's inserts write one more index entry each.
--
-- A blocking build (scripts run in one transaction, so not CONCURRENTLY): writes to notifications wait
-- for it; docs/operations.md, "Zero-downtime upgrades", gives its cost.
CREATE INDEX notifications_unseen ON notifications (user_id, seq) WHERE seen_at IS NULL;
