-- Inbox states beyond read (docs/protocol.md §10): seen, archive, actions and url, collapse keys, expiry.

-- unseen_count is maintained like unread_count: by every statement that inserts, collapses, marks seen
-- or read, deletes or retains, in that same statement (docs/design.md, "Counters").
ALTER TABLE users
    ADD COLUMN unseen_count bigint NOT NULL DEFAULT 0 CHECK (unseen_count >= 0);

ALTER TABLE notifications
    ADD COLUMN seen_at      timestamptz,
    ADD COLUMN archived_at  timestamptz,
    ADD COLUMN url          text,
    ADD COLUMN actions      jsonb NOT NULL DEFAULT '[]'::jsonb,  -- [{"id", "label", "url"?}], at most 3
    ADD COLUMN acted_at     timestamptz,
    ADD COLUMN action_id    text,
    -- Set only while the notification is unread: reading it closes the group (see the index below).
    ADD COLUMN collapse_key text,
    ADD COLUMN count        integer NOT NULL DEFAULT 1 CHECK (count >= 1);

-- What was read before seen_at existed has been seen; everything else is unseen, and counted.
UPDATE notifications SET seen_at = read_at WHERE read_at IS NOT NULL;
UPDATE users u
   SET unseen_count = (SELECT count(*) FROM notifications n WHERE n.user_id = u.user_id AND n.seen_at IS NULL);

-- At most one open (unread) notification per user and collapse key: the row a new event collapses into.
CREATE UNIQUE INDEX notifications_collapse
    ON notifications (user_id, collapse_key) WHERE collapse_key IS NOT NULL AND read_at IS NULL;

-- The idempotency keys of events collapsed into an existing notification (the row keeps its first
-- event's key), so a redelivered collapse event is recognised and not counted twice.
CREATE TABLE notification_keys (
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    notification_id text NOT NULL,
    PRIMARY KEY (user_id, idempotency_key),
    FOREIGN KEY (user_id, notification_id) REFERENCES notifications (user_id, id) ON DELETE CASCADE
);
CREATE INDEX notification_keys_notification ON notification_keys (user_id, notification_id);

-- Expiry without a scan: counts subtract the user's expired-but-not-yet-deleted unread / unseen rows
-- through these (small, partial) indexes, and retention finds expired rows by the last one.
CREATE INDEX notifications_expiring_unread
    ON notifications (user_id, expires_at) WHERE expires_at IS NOT NULL AND read_at IS NULL;
CREATE INDEX notifications_expiring_unseen
    ON notifications (user_id, expires_at) WHERE expires_at IS NOT NULL AND seen_at IS NULL;
CREATE INDEX notifications_expires_at ON notifications (expires_at) WHERE expires_at IS NOT NULL;

-- The Archived tab's pages.
CREATE INDEX notifications_archived ON notifications (user_id, seq) WHERE archived_at IS NOT NULL;
