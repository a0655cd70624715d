-- Recount users.unread_count, unseen_count and inbox_count where they differ from the rows they count
-- (docs/design.md, "Counters"): rows unread, unseen, and not archived, expired ones included.
--
-- The backfills of sql/004 (unseen_count) and sql/008 (inbox_count) counted once, inside the migration,
-- while the workers of the release before kept running (docs/operations.md, "Zero-downtime upgrades"):
-- a worker that did not know a counter stored and archived rows without changing it. Such a counter stays
-- off, and below the truth it breaks its CHECK on a later delete or archive. Every writer of this release
-- maintains all three, so the recount stays exact once the older workers are gone; run this file again
-- (psql -f) if they were still running after it was applied.
--
-- The search takes no lock (one aggregate over notifications); then each differing user, in id order as
-- every writer locks users, is locked first and recounted by a statement of its own, whose snapshot
-- follows the lock: writers of that user wait for it until the migration commits, nobody else does.
DO $$
DECLARE
    drifted text;
BEGIN
    FOR drifted IN
        SELECT u.user_id
          FROM users u
          LEFT JOIN (SELECT user_id, count(*) FILTER (WHERE read_at IS NULL) AS unread,
                            count(*) FILTER (WHERE seen_at IS NULL) AS unseen,
                            count(*) FILTER (WHERE archived_at IS NULL) AS in_inbox
                       FROM notifications GROUP BY user_id) AS c ON c.user_id = u.user_id
         WHERE (u.unread_count, u.unseen_count, u.inbox_count)
               IS DISTINCT FROM (coalesce(c.unread, 0), coalesce(c.unseen, 0), coalesce(c.in_inbox, 0))
         ORDER BY u.user_id
    LOOP
        PERFORM 1 FROM users WHERE user_id = drifted FOR UPDATE;
        UPDATE users u
           SET unread_count = c.unread, unseen_count = c.unseen, inbox_count = c.in_inbox
          FROM (SELECT count(*) FILTER (WHERE read_at IS NULL) AS unread,
                       count(*) FILTER (WHERE seen_at IS NULL) AS unseen,
                       count(*) FILTER (WHERE archived_at IS NULL) AS in_inbox
                  FROM notifications WHERE user_id = drifted) AS c
         WHERE u.user_id = drifted;
    END LOOP;
END
$$;
