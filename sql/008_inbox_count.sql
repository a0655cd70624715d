-- The inbox total without a count (docs/design.md, "Counters"): inbox_count is the number of the user's
-- notifications that are not archived, expired or not. It is maintained like unread_count, by every
-- statement that inserts, collapses, archives, unarchives, deletes or retains, in that same statement.
-- A page of the inbox reports it as `total` minus the expired rows it still holds (an index range over
-- that user's expired rows only), so the first page of a 10,000-notification inbox no longer counts
-- 10,000 rows.
ALTER TABLE users
    ADD COLUMN inbox_count bigint NOT NULL DEFAULT 0 CHECK (inbox_count >= 0);

UPDATE users u
   SET inbox_count = c.n
  FROM (SELECT user_id, count(*) AS n FROM notifications WHERE archived_at IS NULL GROUP BY user_id) AS c
 WHERE u.user_id = c.user_id;

CREATE INDEX notifications_expiring_inbox
    ON notifications (user_id, expires_at) WHERE expires_at IS NOT NULL AND archived_at IS NULL;
