"""The delivery_jobs rows of keyed jobs across versions and claims (amendments 14, 25; sql/010).

No ``herald-delivery`` runs here: the test records, claims and finishes jobs itself, as the worker and a
delivery process would, against the real schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from herald_ops.testing.delivery import job_message
from herald_ops.testing.stack import fresh_id
from shared.settings import Settings
from worker.store.deliveries import Finished, claim_due, extend_leases, finish, record
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack
    from worker.writes import Job


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    yield created
    await created.close()


def version_of(notification_id: str, user: str, version: int) -> Job:
    """The email job of ``version`` of a collapsed notification, as a job message carries it."""
    return job_message(notification_id, user, title=f"version {version}", version=version)


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


async def test_a_stale_holder_cannot_release_a_later_claim_with_the_same_attempt_count(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    """A version merged while a job is sent resets its attempts, so a later claim can count as many
    attempts as a stale one: the claim count fences the leases instead (it only grows; sql/012)."""
    user = fresh_id("aba")
    await record(pool, [version_of("n1", user, 1)])
    (stale,) = await claim_due(pool, "email", 10, 30)
    await fresh_db.execute("UPDATE delivery_jobs SET locked_until = now() WHERE id = $1", stale.id)  # ran out
    (second,) = await claim_due(pool, "email", 10, 30)
    await record(pool, [version_of("n1", user, 2)])  # merged while the second holder sends version 1
    await finish(pool, [Finished(second, "sent", None)])  # scheduled again for version 2, attempts reset
    (third,) = await claim_due(pool, "email", 10, 30)
    assert (third.attempts, third.version) == (stale.attempts, 2)

    # The stale holder, alive after all, renews and finishes: the third holder keeps its lease.
    lease = await fresh_db.fetchval("SELECT locked_until FROM delivery_jobs WHERE id = $1", third.id)
    await extend_leases(pool, [stale], 300)
    await finish(pool, [Finished(stale, "sent", None)])
    row = await fresh_db.fetchrow("SELECT status, locked_until FROM delivery_jobs WHERE id = $1", third.id)
    assert (row["status"], row["locked_until"]) == ("scheduled", lease)
    assert await claim_due(pool, "email", 10, 30) == []  # nobody else sends version 2 meanwhile
