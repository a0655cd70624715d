"""The SQL of retention: one worker at a time (an advisory lock), short delete transactions."""

from __future__ import annotations

import contextlib
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
    ), adjusted AS (
        UPDATE users u SET unread_count = u.unread_count - c.unread, unseen_count = u.unseen_count - c.unseen,
                           inbox_count = u.inbox_count - c.in_inbox
          FROM counted c
         WHERE u.user_id = c.user_id AND (c.unread > 0 OR c.unseen > 0 OR c.in_inbox > 0)
     RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM adjusted) AS users"""


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


async def retention_step(conn: Connection, days: int, limit: int) -> int:
    """Delete up to ``limit`` notifications older than ``days`` or expired, in one short transaction;
    return the count.

    The users of the doomed rows are locked in id order first (the batch order), then the rows are
    deleted and their users' ``unread_count`` / ``unseen_count`` / ``inbox_count`` lowered by the unread /
    unseen / not archived ones, in the same transaction. (Expired rows were already left out of every
    count; the counters still held them, so the visible counts do not move.)
    """
    async with conn.transaction():
        doomed = await conn.fetch(_PICK, days, limit)
        if not doomed:
            return 0
        # The delete joins a batch of (user, seq) pairs with the whole table: a generic plan made while
        # the table was small would scan it (worker.store.pool.create_pool), so this rare statement is
        # planned with its values; one more round trip per batch of `limit` deletions.
        await conn.execute(PLAN_WITH_VALUES)
        await conn.execute(_LOCK_USERS, sorted({row["user_id"] for row in doomed}))
        result = await conn.fetchrow(
            _DELETE, [row["user_id"] for row in doomed], [row["seq"] for row in doomed]
        )
    assert result is not None
    deleted: int = result["deleted"]
    return deleted
