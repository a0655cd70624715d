-- Herald schema: catalog, users (per-user seq and unread counter), notifications, preference overrides.
-- Applied once by `herald migrate`, inside one transaction, recorded in schema_migrations.

CREATE TABLE notification_categories (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    description text NOT NULL DEFAULT ''
);

CREATE TABLE notification_types (
    name           text PRIMARY KEY CHECK (name ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    category       text NOT NULL REFERENCES notification_categories (name),
    default_in_app boolean NOT NULL DEFAULT true,
    default_email  boolean NOT NULL DEFAULT true,
    default_push   boolean NOT NULL DEFAULT true,
    -- Critical types keep in-app and email on whatever the user's preferences say.
    critical       boolean NOT NULL DEFAULT false,
    description    text NOT NULL DEFAULT '',
    position       integer NOT NULL DEFAULT 1000
);

-- One row per known user: anyone who received a notification, connected, or saved preferences.
-- last_seq is the per-user sequence: writers update it in the same transaction that inserts, so its
-- row lock orders a user's commits and seq order is commit order (see docs/design.md).
-- unread_count is maintained by every statement that inserts, reads, unreads or deletes.
CREATE TABLE users (
    user_id      text PRIMARY KEY CHECK (user_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    last_seq     bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    unread_count bigint NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    user_id         text NOT NULL,
    seq             bigint NOT NULL,
    id              text NOT NULL,
    type            text NOT NULL,
    category        text NOT NULL,
    title           text NOT NULL,
    message         text NOT NULL,
    data            jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    read_at         timestamptz,
    expires_at      timestamptz,
    PRIMARY KEY (user_id, seq)            -- newest-first pages and sync since seq
);

-- Ids are unique per user (a broadcast shares one id across its recipients).
CREATE UNIQUE INDEX notifications_user_id_id ON notifications (user_id, id);
-- Idempotency: one notification per (user, event_id or AMQP message_id).
CREATE UNIQUE INDEX notifications_idempotency
    ON notifications (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Unread-only pages.
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE read_at IS NULL;
-- Retention scan.
CREATE INDEX notifications_created_at ON notifications (created_at);

-- A user's own settings; absent keys fall back to the catalog defaults.
CREATE TABLE user_preferences (
    user_id     text PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    channels    jsonb NOT NULL DEFAULT '{}'::jsonb,   -- {"in_app": bool, "email": bool, "push": bool}
    types       jsonb NOT NULL DEFAULT '{}'::jsonb,   -- {"TYPE": {"in_app": bool, ...}}
    quiet_hours jsonb,                                -- {"start": "22:00", "end": "07:00", "timezone": ...}
    updated_at  timestamptz NOT NULL DEFAULT now()
);
