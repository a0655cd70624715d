"""A user's writes that wait for another writer's lock see what that writer committed.

Under READ COMMITTED one statement has one snapshot, taken before it waits for a lock. Each test holds
the user's ``users`` row in a transaction of its own that writes as the worker, retention or another
request would, starts the request's store function, waits until Postgres shows it waiting for that
lock, commits, and checks what the request did. No worker runs: the store functions run against the
real schema.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pytest

from herald_ops.testing.stack import fresh_id, wait_until
from shared.settings import Settings
from worker.store import mutations
from worker.store.pool import LOCK_USER, create_pool
from worker.store.preferences import edit_preferences, reset_preferences

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import asyncpg

    from herald_ops.testing.stack import Stack
    from worker.store.mutations import Change

T = TypeVar("T")
ACTIONS = [{"id": "approve", "label": "Approve"}]


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=3))
    yield created
    await created.close()


async def seed(db: asyncpg.Connection, user: str, *, live: int, expired: int = 0) -> None:
    """``live`` unread notifications (``n1``…, collapse key ``k`` on ``n1``), then ``expired`` unread ones
    whose time is up (retention has not deleted them yet), with the counters that include them all."""
    total = live + expired
    await db.execute(
        "INSERT INTO users (user_id, last_seq, unread_count, unseen_count, inbox_count)"
        " VALUES ($1, $2, $2, $2, $2)",
        user,
        total,
    )
    for seq in range(1, total + 1):
        await db.execute(
            "INSERT INTO notifications (user_id, seq, id, type, category, title, message, actions,"
            " collapse_key, expires_at)"
            " VALUES ($1, $2, $3, 'COURSE_UPDATE', 'course', 't', 'm', $4::jsonb, $5,"
            " CASE WHEN $6 THEN now() - interval '1 hour' END)",
            user,
            seq,
            f"n{seq}",
            orjson.dumps(ACTIONS).decode(),
            "k" if seq == 1 else None,
            seq > live,
        )


async def behind_a_writer(
    db: asyncpg.Connection, pool: asyncpg.Pool, user: str, write: str, request: Callable[[], Awaitable[T]]
) -> T:
    """Run ``request`` while a transaction holding ``user``'s lock runs ``write``; commit it once the
    request waits for the lock; return what the request did."""
    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        try:
            await holder.execute(LOCK_USER, user)
            await holder.execute(write, user)
            pending = asyncio.ensure_future(request())
            await wait_until(lambda: waiting_for_a_lock(db), 10, "the request to wait for the user's lock")
        finally:
            await transaction.commit()
    return await asyncio.wait_for(pending, 10)


async def waiting_for_a_lock(db: asyncpg.Connection) -> bool:
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting > 0


# What the worker's collapse does to the target row: the next seq, count + 1 (amendment 12).
COLLAPSE = """
WITH bumped AS (UPDATE users SET last_seq = last_seq + 1 WHERE user_id = $1 RETURNING last_seq)
UPDATE notifications SET seq = (SELECT last_seq FROM bumped), count = count + 1
 WHERE user_id = $1 AND id = 'n1'"""


@pytest.mark.parametrize(
    ("change", "done"),
    [
        (lambda pool, user: mutations.act(pool, user, "n1", "approve"), "action_id = 'approve'"),
        (lambda pool, user: mutations.mark_read(pool, user, ["n1"]), "read_at IS NOT NULL"),
        (lambda pool, user: mutations.archive(pool, user, ["n1"]), "archived_at IS NOT NULL"),
    ],
    ids=["act", "mark_read", "archive"],
)
async def test_a_change_that_waited_for_a_collapse_applies_to_the_collapsed_row(
    pool: asyncpg.Pool,
    fresh_db: asyncpg.Connection,
    change: Callable[[asyncpg.Pool, str], Awaitable[Change]],
    done: str,
) -> None:
    user = fresh_id("collapsed")
    await seed(fresh_db, user, live=1)
    result = await behind_a_writer(fresh_db, pool, user, COLLAPSE, lambda: change(pool, user))
    assert result.changed == 1
    row = await fresh_db.fetchrow(
        f"SELECT seq, count, {done} AS done FROM notifications WHERE user_id = $1", user
    )
    assert (row["seq"], row["count"], row["done"]) == (2, 2, True)


# What retention does: delete the user's expired rows and take them off the counters.
RETENTION = """
WITH gone AS (DELETE FROM notifications WHERE user_id = $1 AND expires_at <= now() RETURNING 1)
UPDATE users SET unread_count = unread_count - (SELECT count(*) FROM gone),
                 unseen_count = unseen_count - (SELECT count(*) FROM gone),
                 inbox_count = inbox_count - (SELECT count(*) FROM gone)
 WHERE user_id = $1"""


async def test_counts_after_a_change_that_waited_for_retention_are_exact(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    user = fresh_id("retained")
    await seed(fresh_db, user, live=3, expired=2)
    result = await behind_a_writer(
        fresh_db, pool, user, RETENTION, lambda: mutations.mark_read(pool, user, ["n1"])
    )
    assert (result.changed, result.unread_count, result.unseen_count) == (1, 2, 2)


async def known_user(db: asyncpg.Connection, prefix: str) -> str:
    """A fresh user with a ``users`` row (nothing else), the row the preference writers lock."""
    user = fresh_id(prefix)
    await db.execute("INSERT INTO users (user_id) VALUES ($1)", user)
    return user


def storing_overrides(channels: str, types: str) -> str:
    """What a preferences edit writes for user ``$1``: these overrides (JSON text), no quiet hours."""
    return f"""
        INSERT INTO user_preferences (user_id, channels, types, quiet_hours, updated_at)
        VALUES ($1, '{channels}', '{types}', NULL, now())"""


async def test_a_preferences_edit_that_waited_reads_what_the_other_edit_stored(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    user = await known_user(fresh_db, "prefs")
    first_edit = storing_overrides("{}", '{"GRADE_RELEASED": {"email": false}}')

    async def second_edit() -> dict[str, Any] | None:
        async with edit_preferences(pool, user) as edit:
            return edit.overrides

    seen = await behind_a_writer(fresh_db, pool, user, first_edit, second_edit)
    assert seen is not None, "the second edit read the overrides from before the first"
    assert seen["types"] == {"GRADE_RELEASED": {"email": False}}


async def test_a_reset_waits_for_an_edit_in_progress_and_is_not_undone_by_it(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    user = await known_user(fresh_db, "reset")
    edit_in_progress = storing_overrides('{"push": false}', "{}")
    # Not waiting, the reset would delete nothing (the edit has not committed), be answered "defaults",
    # and the edit's commit would bring the overrides back.
    dropped = await behind_a_writer(
        fresh_db, pool, user, edit_in_progress, lambda: reset_preferences(pool, user)
    )
    assert dropped
    assert await fresh_db.fetchval("SELECT count(*) FROM user_preferences WHERE user_id = $1", user) == 0
