-- When each contact field last changed, as the producer's `user.profile` event said (`changed_at`, else the
-- time it was stored): a redelivered event older than the stored change of a field leaves that field alone
-- (docs/protocol.md amendment 46). NULL for rows stored before this script: any event then applies.
ALTER TABLE user_profiles
    ADD COLUMN email_changed_at    timestamptz,
    ADD COLUMN name_changed_at     timestamptz,
    ADD COLUMN locale_changed_at   timestamptz,
    ADD COLUMN timezone_changed_at timestamptz;
