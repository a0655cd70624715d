-- Idempotency keys scoped by producer (docs/protocol.md, amendment 34): an event's optional `source` is part
-- of its key, so the same event_id from two producers is two notifications, and from one producer one.
-- "" is "no source": every event stored before this script, and every event without one since, shares
-- that namespace, as before. Adding a NOT NULL column with a constant default rewrites no rows.
ALTER TABLE notifications ADD COLUMN source text NOT NULL DEFAULT '';
ALTER TABLE notification_keys ADD COLUMN source text NOT NULL DEFAULT '';

-- One notification per (user, source, event_id or AMQP message_id). Built before the old index is dropped,
-- so no moment lacks the constraint (the migration holds its locks until commit either way).
CREATE UNIQUE INDEX notifications_idempotency_source
    ON notifications (user_id, source, idempotency_key) WHERE idempotency_key IS NOT NULL;
DROP INDEX notifications_idempotency;

ALTER TABLE notification_keys DROP CONSTRAINT notification_keys_pkey;
ALTER TABLE notification_keys ADD PRIMARY KEY (user_id, source, idempotency_key);
