"""Retention beyond the notifications: final email/push jobs go too, and a user whose counters drifted
(a writer older than a counter ran after its backfill) is recounted instead of failing every batch.

No worker runs here: the test calls the retention pass itself, on a database of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from shared.settings import Settings
from worker.retention import retention_pass
from worker.store.pool import create_pool
from worker.store.retention import retention_batch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack

JOB = """
INSERT INTO delivery_jobs (id, notification_id, user_id, channel, status, notification, due_at,
                           locked_until, created_at)
VALUES ($1, 'n', 'u', 'push', $2, '{"title": "Grade for Alice"}', now() - $3 * interval '1 day',
        now() + $4 * interval '1 minute', now() - $3 * interval '1 day')"""
RECEIPT = "INSERT INTO push_receipts (job_id, subscription_id, status) VALUES ($1, 's1', 'sent')"
# A writer of a release before sql/008: it bumps unread and unseen but not inbox_count.
OLD_INSERT = """
WITH bumped AS (UPDATE users SET last_seq = last_seq + 1, unread_count = unread_count + 1,
                                 unseen_count = unseen_count + 1
                 WHERE user_id = $1 RETURNING last_seq)
INSERT INTO notifications (user_id, seq, id, type, category, title, message, created_at)
SELECT $1, last_seq, 'n' || last_seq, 'NEW_COMMENT', 'social', 't', 'm', now() - $2 * interval '1 day'
  FROM bumped"""
INSERT = OLD_INSERT.replace("unseen_count + 1", "unseen_count + 1, inbox_count = inbox_count + 1")
COUNTERS = "SELECT unread_count, unseen_count, inbox_count FROM users WHERE user_id = $1"


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    yield created
    await created.close()


async def test_final_jobs_past_the_retention_age_go_with_their_receipts_waiting_and_leased_ones_stay(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    jobs = {
        # id: (status, age in days, lease in minutes from now: NULL none, < 0 ran out)
        "old-sent": ("sent", 100, None),
        "old-skipped": ("skipped", 100, None),
        "old-cancelled": ("cancelled", 95, None),
        "old-failed": ("failed", 91, None),
        "old-waiting": ("scheduled", 100, None),  # a retry, or held back by deliver_after
        "old-leased": ("scheduled", 100, 5),  # in flight: claimed and being sent
        "old-lease-ran-out": ("scheduled", 100, -5),
        "recent-sent": ("sent", 10, None),
        "recent-failed": ("failed", 89, None),
    }
    for job_id, (status, age, lease) in jobs.items():
        await fresh_db.execute(JOB, job_id, status, age, lease)
    for job_id in ("old-sent", "old-leased", "recent-sent"):
        await fresh_db.execute(RECEIPT, job_id)

    assert await retention_pass(pool, 90, 2) == 0  # no notifications; batches of two jobs

    kept = {r["id"] for r in await fresh_db.fetch("SELECT id FROM delivery_jobs")}
    assert kept == {"old-waiting", "old-leased", "old-lease-ran-out", "recent-sent", "recent-failed"}
    receipts = {r["job_id"] for r in await fresh_db.fetch("SELECT job_id FROM push_receipts")}
    assert receipts == {"old-leased", "recent-sent"}


async def test_a_user_whose_counters_drifted_is_recounted_and_retention_goes_on_for_everyone(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    users = ["alice", *(f"u{i:02}" for i in range(20))]
    await fresh_db.execute("INSERT INTO users (user_id) SELECT unnest($1::text[])", users)
    for user in users[1:]:
        await fresh_db.execute(INSERT, user, 120)
        await fresh_db.execute(INSERT, user, 1)
    # alice: two old rows and a recent one, all in the inbox, counted by an old writer: inbox_count 0.
    for age in (120, 100, 1):
        await fresh_db.execute(OLD_INSERT, "alice", age)
    await fresh_db.execute("UPDATE notifications SET seen_at = now() WHERE user_id = 'alice' AND seq = 1")
    await fresh_db.execute("UPDATE users SET unseen_count = unseen_count - 1 WHERE user_id = 'alice'")
    assert tuple(await fresh_db.fetchrow(COUNTERS, "alice")) == (3, 2, 0)

    async with pool.acquire() as conn:
        batch = await retention_batch(conn, 90, 1000)
    assert (batch.deleted, batch.recounted) == (22, ["alice"])
    # What is left: one unread, unseen, not archived row each.
    assert tuple(await fresh_db.fetchrow(COUNTERS, "alice")) == (1, 1, 1)
    for user in users[1:]:
        assert tuple(await fresh_db.fetchrow(COUNTERS, user)) == (1, 1, 1)
    assert await fresh_db.fetchval("SELECT count(*) FROM notifications") == 21

    # And through the pass, with the old writer still at it.
    await fresh_db.execute(OLD_INSERT, "alice", 200)
    await fresh_db.execute(OLD_INSERT, "alice", 200)
    await fresh_db.execute(INSERT, "u00", 200)
    assert tuple(await fresh_db.fetchrow(COUNTERS, "alice")) == (3, 3, 1)
    assert await retention_pass(pool, 90, 1000) == 3
    assert tuple(await fresh_db.fetchrow(COUNTERS, "alice")) == (1, 1, 1)
    assert tuple(await fresh_db.fetchrow(COUNTERS, "u00")) == (1, 1, 1)
