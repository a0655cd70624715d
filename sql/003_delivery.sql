-- Deliveries (docs/protocol.md §9): contact data, Web Push subscriptions, one state row per email/push job,
-- and per-type delays in the catalog.

-- A delay above 0 holds the job that long after the notification was created, and cancels it if the
-- notification was read or deleted by then ("read in the app, so no email").
ALTER TABLE notification_types
    ADD COLUMN email_delay_seconds integer NOT NULL DEFAULT 0 CHECK (email_delay_seconds >= 0),
    ADD COLUMN push_delay_seconds  integer NOT NULL DEFAULT 0 CHECK (push_delay_seconds >= 0);

-- Contact data from `user.profile` events; a present null clears a field, an absent key keeps it.
CREATE TABLE user_profiles (
    user_id    text PRIMARY KEY CHECK (user_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    email      text,
    name       text,
    locale     text,
    timezone   text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A browser's PushSubscription; one endpoint is one subscription (re-subscribing moves it to the caller).
-- The request method keeps at most 20 per user, dropping the oldest.
CREATE TABLE push_subscriptions (
    id         text PRIMARY KEY,
    user_id    text NOT NULL CHECK (user_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    endpoint   text NOT NULL UNIQUE,
    p256dh     text NOT NULL,
    auth       text NOT NULL,
    device     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id, created_at);

-- One row per (notification, user, channel) job; id = the job's AMQP message id `<id>:<user>:<channel>`.
-- A sender claims a due row by setting locked_until (a lease), sends, then writes the outcome; a process
-- killed in between leaves the lease to expire, and only such in-flight jobs can be sent twice.
CREATE TABLE delivery_jobs (
    id              text PRIMARY KEY,
    notification_id text NOT NULL,
    user_id         text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('email', 'push')),
    status          text NOT NULL DEFAULT 'scheduled'
                    CHECK (status IN ('scheduled', 'sent', 'skipped', 'cancelled', 'failed')),
    notification    jsonb NOT NULL,
    -- true when the job was delayed and the in-app copy exists: reading or deleting it cancels the job.
    cancel_if_read  boolean NOT NULL DEFAULT false,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    due_at          timestamptz NOT NULL,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX delivery_jobs_due ON delivery_jobs (channel, due_at) WHERE status = 'scheduled';
CREATE INDEX delivery_jobs_recent ON delivery_jobs (created_at DESC, id DESC);
CREATE INDEX delivery_jobs_user ON delivery_jobs (user_id, created_at DESC, id DESC);
