"""A claim reports the version of the content it claimed, even when a higher version of the job was merged
into the row between the claim's snapshot and its row lock (amendment 54).

The claim locks each candidate's latest row version (``FOR UPDATE`` follows the update chain) but reads
the row's content from the snapshot its statement started with; the version it reports must be that
content's, so that the outcome write leaves the newer version waiting as a job of its own.

No ``herald-delivery`` runs here: the test records, claims and finishes jobs itself. To hold the claim
between its snapshot and its lock, the claim's connections see a ``now()`` of this test's own first (their
``search_path`` names its schema before ``pg_catalog``): the claim evaluates it on each candidate row
before locking it, and it waits for an advisory lock the test holds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from herald_ops.testing.delivery import job_message
from herald_ops.testing.stack import fresh_id, wait_until
from shared.settings import Settings
from worker.store.deliveries import Claimed, Finished, claim_due, finish, record
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack
    from worker.writes import Job

HOLD = 0x4E7A1D_7E57  # the advisory lock the held claim waits for
HELD_NOW = f"""
CREATE SCHEMA held;
CREATE FUNCTION held.now() RETURNS timestamptz VOLATILE LANGUAGE sql AS $$
    SELECT pg_catalog.pg_advisory_xact_lock_shared({HOLD});
    SELECT pg_catalog.now();
$$"""


@pytest.fixture
async def pools(fresh_stack: Stack, fresh_db: asyncpg.Connection) -> AsyncIterator[tuple[asyncpg.Pool, ...]]:
    """A plain pool, and one whose statements call ``held.now()`` for ``now()``."""
    await fresh_db.execute(HELD_NOW)
    plain = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    held = await create_pool(
        Settings(
            database_url=f"{fresh_stack.database_url}?search_path=held,pg_catalog,public",
            db_pool_min=1,
            db_pool_max=1,
        )
    )
    yield plain, held
    await held.close()
    await plain.close()


def version_of(notification_id: str, user: str, version: int) -> Job:
    """The email job of ``version`` of a collapsed notification, as a job message carries it."""
    return job_message(notification_id, user, title=f"version {version}", version=version)


async def claim_waits(db: asyncpg.Connection) -> bool:
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND ((classid::bigint << 32) | objid::bigint) = $1",
        HOLD,
    )
    return waiting > 0


async def claim_while_merging(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], db: asyncpg.Connection, merged: Job
) -> Claimed:
    """Claim the one due email job, recording ``merged`` after the claim took its snapshot and before it
    locked the row; return what it claimed."""
    plain, held = pools
    await db.execute("SELECT pg_advisory_lock($1)", HOLD)
    try:
        claiming = asyncio.ensure_future(claim_due(held, "email", 10, 30))
        await wait_until(lambda: claim_waits(db), 10, "the claim to wait before its row lock")
        assert await record(plain, [merged]) == 1
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", HOLD)
    (claimed,) = await asyncio.wait_for(claiming, 10)
    return claimed


async def test_a_version_merged_while_the_claim_locks_is_claimed_as_a_job_of_its_own(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], fresh_db: asyncpg.Connection
) -> None:
    plain = pools[0]
    user = fresh_id("claimrace")
    assert await record(plain, [version_of("n1", user, 1)]) == 1
    first = await claim_while_merging(pools, fresh_db, version_of("n1", user, 2))
    assert (first.notification["title"], first.version) == ("version 1", 1)

    # Version 1 sent: the row stays waiting with version 2, due at once, and that is claimed next.
    await finish(plain, [Finished(first, "sent", None)])
    (second,) = await claim_due(plain, "email", 10, 30)
    assert (second.id, second.notification["title"], second.version) == (first.id, "version 2", 2)
    await finish(plain, [Finished(second, "sent", None)])
    row = await fresh_db.fetchrow("SELECT status, version FROM delivery_jobs WHERE id = $1", first.id)
    assert (row["status"], row["version"]) == ("sent", 2)
    assert await claim_due(plain, "email", 10, 30) == []


async def test_a_cancellation_decided_on_the_older_version_leaves_the_merged_one_waiting(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], fresh_db: asyncpg.Connection
) -> None:
    """A keyed job without a copy whose in-app row is gone is cancelled; a job message's version with
    its own copy, merged while it is claimed, is still sent."""
    plain = pools[0]
    user = fresh_id("claimcancel")
    key = f"n1:{user}:email"
    await fresh_db.execute(
        "INSERT INTO delivery_jobs (id, notification_id, user_id, channel, notification, due_at, job_key,"
        " version) VALUES ($1, 'n1', $2, 'email', NULL, now(), $1, 1)",
        key,
        user,
    )
    first = await claim_while_merging(pools, fresh_db, version_of("n1", user, 2))
    assert (first.cancelled, first.version) == (True, 1)

    (second,) = await claim_due(plain, "email", 10, 30)
    assert (second.id, second.cancelled, second.notification["title"], second.version) == (
        key,
        False,
        "version 2",
        2,
    )
