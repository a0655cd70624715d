"""The SQL of retention: one worker at a time (an advisory lock), short delete transactions.

Notifications past the retention age (or expired) go with their counters lowered; final email/push jobs
past it go with their copies of the notification and their push receipts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from worker.store.pool import PLAN_WITH_VALUES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from worker.store.pool import Connection

# Any constant; the same for every worker (and distinct from ``herald migrate``'s lock).
ADVISORY_LOCK_ID: Final = 0x4E7A1D_0002

# Rows past the retention age, and expired rows (each through its own index), at most $2 of them.
_PICK: Final = """
    SELECT user_id, seq FROM (
        (SELECT user_id, seq FROM notifications
          WHERE created_at < now() - make_interval(days => $1)
          ORDER BY created_at LIMIT $2)
        UNION
        (SELECT user_id, seq FROM notifications
          WHERE expires_at IS NOT NULL AND expires_at <= now()
          ORDER BY expires_at LIMIT $2)
    ) AS doomed
    LIMIT $2"""

_LOCK_USERS: Final = "SELECT 1 FROM users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE"

# The rows go and their users' counters are lowered by what they counted. A user whose counter is lower
# than that has drifted (a writer of a release older than the counter ran after its backfill,
# docs/operations.md "Zero-downtime upgrades"): subtracting would break the counter's CHECK and fail the
# batch of every user in it, on every pass. That user's three counters are recounted instead, exactly: the
# users row is locked (by _LOCK_USERS, a statement before this one, so this snapshot follows the lock and
# every writer of the user's rows waits), and the count over the snapshot minus the rows deleted now is
# what stays. The truth counts expired rows too, as the counters do.
_DELETE: Final = """
    WITH doomed AS (
        SELECT * FROM unnest($1::text[], $2::bigint[]) AS d(user_id, seq)
    ), gone AS (
        DELETE FROM notifications n USING doomed d
         WHERE n.user_id = d.user_id AND n.seq = d.seq
     RETURNING n.user_id, n.read_at IS NULL AS unread, n.seen_at IS NULL AS unseen,
               n.archived_at IS NULL AS in_inbox
    ), counted AS (
        SELECT user_id, count(*) FILTER (WHERE unread) AS unread, count(*) FILTER (WHERE unseen) AS unseen,
               count(*) FILTER (WHERE in_inbox) AS in_inbox
          FROM gone GROUP BY user_id
    ), truth AS (
        SELECT c.user_id, t.unread - c.unread AS unread, t.unseen - c.unseen AS unseen,
               t.in_inbox - c.in_inbox AS in_inbox
          FROM counted c JOIN users u ON u.user_id = c.user_id
         CROSS JOIN LATERAL (
               SELECT count(*) FILTER (WHERE n.read_at IS NULL) AS unread,
                      count(*) FILTER (WHERE n.seen_at IS NULL) AS unseen,
                      count(*) FILTER (WHERE n.archived_at IS NULL) AS in_inbox
                 FROM notifications n WHERE n.user_id = c.user_id
               ) AS t
         WHERE u.unread_count < c.unread OR u.unseen_count < c.unseen OR u.inbox_count < c.in_inbox
    ), adjusted AS (
        UPDATE users u
           SET unread_count = coalesce(t.unread, u.unread_count - c.unread),
               unseen_count = coalesce(t.unseen, u.unseen_count - c.unseen),
               inbox_count = coalesce(t.in_inbox, u.inbox_count - c.in_inbox)
          FROM counted c LEFT JOIN truth t ON t.user_id = c.user_id
         WHERE u.user_id = c.user_id AND (c.unread > 0 OR c.unseen > 0 OR c.in_inbox > 0)
     RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM adjusted) AS users,
           ARRAY(SELECT user_id FROM truth ORDER BY user_id) AS recounted"""

# Final jobs (sent, skipped, cancelled, failed: never a waiting or leased one, which is 'scheduled')
# recorded before the retention age, oldest first, at most $2, through delivery_jobs_recent (sql/003);
# their push receipts go with them (ON DELETE CASCADE, by the receipts' primary key). A job message
# redelivered after that is a new job, as an event redelivered after its notification's retention is.
# Planned with its values (delete_final_jobs): a generic plan made while the table was small deletes
# through a scan of it. The batch is deleted by ctid (a TID scan; a join with it by id hashed against a
# scan of the table); a row changed since it was picked has a new ctid and is left for the next pass.
_DELETE_JOBS: Final = """
    DELETE FROM delivery_jobs
     WHERE ctid = ANY(ARRAY(SELECT ctid FROM delivery_jobs
                           WHERE created_at < now() - make_interval(days => $1) AND status <> 'scheduled'
                           ORDER BY created_at LIMIT $2))
       AND status <> 'scheduled'"""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one batch of notifications did: how many were deleted, whose counters were recounted."""

    deleted: int
    #: Users whose counters had drifted below what the batch took off them (see ``_DELETE``).
    recounted: list[str]


@contextlib.asynccontextmanager
async def retention_lock(conn: Connection) -> AsyncIterator[bool]:
    """Try the session-level retention lock on ``conn``; yields whether this worker holds it."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_ID):
        yield False
        return
    try:
        yield True
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
        except BaseException:
            # The pool does not reset connections (worker.store.pool): a connection that may still
            # hold the lock must not go back to it.
            conn.terminate()
            raise


async def retention_batch(conn: Connection, days: int, limit: int) -> Pruned:
    """Delete up to ``limit`` notifications older than ``days`` or expired, in one short transaction.

    The users of the doomed rows are locked in id order first (the batch order), then the rows are
    deleted and their users' ``unread_count`` / ``unseen_count`` / ``inbox_count`` lowered by the unread /
    unseen / not archived ones, in the same transaction (a user whose counters had drifted below that is
    recounted instead: one user's drift does not stop retention for everyone). Expired rows were already
    left out of every count; the counters still held them, so the visible counts do not move.
    """
    async with conn.transaction():
        doomed = await conn.fetch(_PICK, days, limit)
        if not doomed:
            return Pruned(0, [])
        # The delete joins a batch of (user, seq) pairs with the whole table: a generic plan made while
        # the table was small would scan it (worker.store.pool.create_pool), so this rare statement is
        # planned with its values; one more round trip per batch of `limit` deletions.
        await conn.execute(PLAN_WITH_VALUES)
        await conn.execute(_LOCK_USERS, sorted({row["user_id"] for row in doomed}))
        result = await conn.fetchrow(
            _DELETE, [row["user_id"] for row in doomed], [row["seq"] for row in doomed]
        )
    assert result is not None
    return Pruned(result["deleted"], list(result["recounted"]))


async def retention_step(conn: Connection, days: int, limit: int) -> int:
    """:func:`retention_batch`; how many notifications it deleted."""
    return (await retention_batch(conn, days, limit)).deleted


async def delete_final_jobs(conn: Connection, days: int, limit: int) -> int:
    """Delete up to ``limit`` final email/push jobs recorded more than ``days`` ago (one statement, no user
    lock: no counter counts them); return how many."""
    async with conn.transaction():
        await conn.execute(PLAN_WITH_VALUES)
        status: str = await conn.execute(_DELETE_JOBS, days, limit)
    return int(status.rsplit(" ", 1)[-1])
