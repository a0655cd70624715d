"""The delivery_jobs rows of keyed jobs across versions and claims (amendments 14, 25; sql/010).

No ``herald-delivery`` runs here: the test records, claims and finishes jobs itself, as the worker and a
delivery process would, against the real schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import pytest

from herald_ops.testing.stack import fresh_id
from shared.settings import Settings
from worker.store.deliveries import Finished, claim_due, extend_leases, finish, record
from worker.store.pool import create_pool
from worker.writes import Job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    yield created
    await created.close()


def version_of(notification_id: str, user: str, version: int) -> Job:
    """The email job of ``version`` of a collapsed notification, as a job message carries it."""
    key = f"{notification_id}:{user}:email"
    notification = {
        "id": notification_id,
        "type": "INSTRUCTOR_MESSAGE",
        "category": "social",
        "title": f"version {version}",
        "message": "",
        "data": {},
        "created_at": datetime.now(UTC).isoformat(),
    }
    return Job(
        id=key if version == 1 else f"{key}:{version}",
        notification_id=notification_id,
        user_id=user,
        channel="email",
        notification=orjson.dumps(notification).decode(),
        type="INSTRUCTOR_MESSAGE",
        created_at=datetime.now(UTC),
        deliver_after=None,
        job_key=key,
        version=version,
    )


async def test_a_version_merged_into_a_row_that_was_sent_is_not_recorded_again(pool: asyncpg.Pool) -> None:
    user = fresh_id("merged")
    assert await record(pool, [version_of("n1", user, 1)]) == 1
    assert await record(pool, [version_of("n1", user, 2)]) == 1  # replaces the waiting row's notification
    (claimed,) = await claim_due(pool, "email", 10, 30)
    assert claimed.version == 2
    await finish(pool, [Finished(claimed, "sent", None)])

    # The job message of version 2 again (a redelivery, a producer's retry): sent already, as row 1.
    assert await record(pool, [version_of("n1", user, 2)]) == 0
    assert await claim_due(pool, "email", 10, 30) == []
    # A later version is a job of its own once the row is final.
    assert await record(pool, [version_of("n1", user, 3)]) == 1
    (third,) = await claim_due(pool, "email", 10, 30)
    assert (third.id, third.version) == (f"n1:{user}:email:3", 3)


async def test_only_the_claim_that_holds_a_job_renews_its_lease_or_writes_its_outcome(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    user = fresh_id("lease")
    await record(pool, [version_of("n1", user, 1)])
    (first,) = await claim_due(pool, "email", 10, 30)
    await fresh_db.execute("UPDATE delivery_jobs SET locked_until = now() WHERE id = $1", first.id)  # ran out
    (second,) = await claim_due(pool, "email", 10, 30)
    assert (second.id, second.attempts) == (first.id, first.attempts + 1)

    # The first holder, still alive, renews and finishes: neither touches the second holder's lease.
    lease = await fresh_db.fetchval("SELECT locked_until FROM delivery_jobs WHERE id = $1", first.id)
    await extend_leases(pool, [first], 300)
    await finish(pool, [Finished(first, "sent", None)])
    row = await fresh_db.fetchrow("SELECT status, locked_until FROM delivery_jobs WHERE id = $1", first.id)
    assert (row["status"], row["locked_until"]) == ("scheduled", lease)

    await extend_leases(pool, [second], 300)
    renewed = await fresh_db.fetchval("SELECT locked_until FROM delivery_jobs WHERE id = $1", second.id)
    assert renewed > lease
    await finish(pool, [Finished(second, "sent", None)])
    row = await fresh_db.fetchrow("SELECT status, locked_until FROM delivery_jobs WHERE id = $1", second.id)
    assert (row["status"], row["locked_until"]) == ("sent", None)
