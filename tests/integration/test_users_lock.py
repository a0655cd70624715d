"""``worker.store.events.lock_users`` against the real Postgres: one statement for known users, new users
created after the known ones are locked, and a retry instead of an out-of-order lock when another
transaction creates one of them meanwhile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from herald_ops.testing.stack import fresh_id
from shared.settings import Settings
from worker.store.events import _CREATE_USERS, UsersRaced, lock_users
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack


@pytest.fixture
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=stack.database_url, db_pool_min=1, db_pool_max=3))
    try:
        yield created
    finally:
        await created.close()


class CountingConnection:
    """A connection that counts the statements run through it and can run something before one of them."""

    def __init__(self, conn: Any, before_create: Any = None) -> None:
        self._conn = conn
        self._before_create = before_create
        self.statements = 0

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.statements += 1
        if query == _CREATE_USERS and self._before_create is not None:
            await self._before_create()
        rows: list[Any] = await self._conn.fetch(query, *args)
        return rows


async def test_known_users_are_locked_in_one_statement(pool: asyncpg.Pool) -> None:
    users = [fresh_id("known") for _ in range(3)]
    await pool.execute("INSERT INTO users (user_id) SELECT unnest($1::text[])", users)
    async with pool.acquire() as conn, conn.transaction():
        counting = CountingConnection(conn)
        overrides = await lock_users(counting, users)  # type: ignore[arg-type]
        locked = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND pid = pg_backend_pid()"
        )
    assert counting.statements == 1
    assert overrides == dict.fromkeys(users)
    assert locked == 1  # FOR UPDATE took the rows: this transaction now has an id


async def test_new_users_are_created_after_the_known_ones_are_locked(pool: asyncpg.Pool) -> None:
    known, new = fresh_id("known"), fresh_id("new")
    await pool.execute("INSERT INTO users (user_id) VALUES ($1)", known)
    await pool.execute(
        "INSERT INTO user_preferences (user_id, channels, types, quiet_hours)"
        """ VALUES ($1, '{"email": true}', '{}', '{"start": "22:00", "end": "07:00"}')""",
        known,
    )
    # A user.profile event may come before a user's first notification: a profile without a users row.
    await pool.execute(
        "INSERT INTO user_profiles (user_id, timezone) VALUES ($1, 'Asia/Tokyo'), ($2, 'Europe/Paris')",
        known,
        new,
    )
    async with pool.acquire() as conn, conn.transaction():
        counting = CountingConnection(conn)
        overrides = await lock_users(counting, [new, known, new])  # type: ignore[arg-type]
    assert await pool.fetchval("SELECT count(*) FROM users WHERE user_id = ANY($1)", [known, new]) == 2
    assert counting.statements == 2
    stored = overrides[known]
    assert stored is not None
    assert stored["channels"] == {"email": True}
    assert stored["quiet_hours"]["timezone"] == "Asia/Tokyo"  # the profile's zone, in the one statement
    assert overrides[new] is None  # user_preferences references users: a new user has none


async def test_a_new_user_created_concurrently_is_retried_not_locked_out_of_order(pool: asyncpg.Pool) -> None:
    known, raced, untouched = fresh_id("a-known"), fresh_id("b-raced"), fresh_id("c-new")
    await pool.execute("INSERT INTO users (user_id) VALUES ($1)", known)

    async def another_transaction_creates_it() -> None:
        # E.g. session.open of that user's first connection, committed between the batch's two statements.
        await pool.execute("INSERT INTO users (user_id) VALUES ($1)", raced)

    async with pool.acquire() as conn:
        racing = CountingConnection(conn, another_transaction_creates_it)
        transaction = conn.transaction()
        await transaction.start()
        with pytest.raises(UsersRaced):
            await lock_users(racing, [known, raced, untouched])  # type: ignore[arg-type]
        await transaction.rollback()  # as the pipeline's retry does
        # Rolled back: the user it would have created is not there; the retry finds the raced one known.
        assert await conn.fetchval("SELECT count(*) FROM users WHERE user_id = $1", untouched) == 0
        async with conn.transaction():
            counting = CountingConnection(conn)
            overrides = await lock_users(counting, [known, raced, untouched])  # type: ignore[arg-type]
    assert set(overrides) == {known, raced, untouched}
    assert counting.statements == 2  # the known ones (the raced one too) locked, the missing one created
