"""One user's ``user.profile`` events are stored in delivery order, even when the first one backs off.

No worker process runs: the pipeline is driven in-process as the event consumer drives it (each
delivery's returned work started as a task, in delivery order), against the real schema, with a fake
AMQP channel that records the acks. A transaction of the test's own holds the user's ``user_profiles``
row, so the first event's upsert waits in Postgres; the test then terminates that upsert's backend (an
outage: the store backs off and retries) while the second event has already been handed over.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

import asyncpg
import pytest

from herald_client import InvalidEvent, Producer
from herald_ops.testing.stack import fresh_id, wait_until
from herald_ops.testing.worker import FakeChannel, delivered
from shared.preferences import Catalog
from shared.settings import Settings
from worker.acks import AckTracker
from worker.pipeline import Pipeline
from worker.store.pool import create_pool
from worker.store.profiles import get_profile

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiormq.abc import DeliveredMessage

    from herald_ops.testing.stack import Stack
    from worker.publish import Publisher


async def no_reload() -> None:
    raise AssertionError("a profile event never reloads the catalog")


@pytest.fixture
async def pipeline(fresh_stack: Stack) -> AsyncIterator[Pipeline]:
    settings = Settings(database_url=fresh_stack.database_url, db_pool_min=3, db_pool_max=4)
    pool = await create_pool(settings)
    try:
        yield Pipeline(
            settings=settings,
            pool=pool,
            publisher=cast("Publisher", None),  # nothing is dead-lettered here
            acks=AckTracker(),
            catalog=lambda: Catalog([]),
            reload_catalog=no_reload,
        )
    finally:
        await pool.close()


def deliver(pipeline: Pipeline, tasks: list[asyncio.Task[None]], message: DeliveredMessage) -> None:
    """What ``QueueConsumer._deliver`` does: accept in the callback, run the returned work as a task."""
    work = pipeline.accept(message)
    assert work is not None  # a profile event is stored after the callback
    tasks.append(asyncio.get_running_loop().create_task(work))


async def lock_waiters(db: asyncpg.Connection) -> list[int]:
    """The backends of this database waiting for a lock (the upserts queued behind the held row)."""
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return [row["pid"] for row in rows]


async def any_lock_waiter(db: asyncpg.Connection) -> bool:
    return bool(await lock_waiters(db))


def acked(channel: FakeChannel, tag: int) -> bool:
    return any(kind == "ack" and acked_tag >= tag for kind, acked_tag, _ in channel.calls)


async def test_a_users_profiles_are_stored_in_delivery_order_when_the_first_backs_off(
    pipeline: Pipeline, fresh_stack: Stack, fresh_db: asyncpg.Connection
) -> None:
    user, other = fresh_id("profiled"), fresh_id("other")
    await fresh_db.execute(
        "INSERT INTO user_profiles (user_id, email) VALUES ($1, 'first@example.com')", user
    )
    channel, other_channel = FakeChannel(), FakeChannel()
    tasks: list[asyncio.Task[None]] = []
    holder = await asyncpg.connect(fresh_stack.database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        try:
            await holder.execute("SELECT 1 FROM user_profiles WHERE user_id = $1 FOR UPDATE", user)
            deliver(
                pipeline,
                tasks,
                delivered(channel, 1, {"user_id": user, "email": "old@example.com"}, "user.profile"),
            )
            await wait_until(lambda: any_lock_waiter(fresh_db), 10, "the first upsert to wait for the row")
            (first_backend,) = await lock_waiters(fresh_db)
            deliver(
                pipeline,
                tasks,
                delivered(channel, 2, {"user_id": user, "email": "new@example.com"}, "user.profile"),
            )

            # Another user's profile is not held up behind this user's.
            deliver(
                pipeline,
                tasks,
                delivered(other_channel, 1, {"user_id": other, "name": "Grace"}, "user.profile"),
            )
            await wait_until(lambda: acked(other_channel, 1), 10, "the other user's profile to be acked")
            assert (await get_profile(fresh_db, other))["name"] == "Grace"

            # A transient outage for the first upsert: it backs off, then retries on another connection.
            assert await fresh_db.fetchval("SELECT pg_terminate_backend($1)", first_backend)

            async def retried_or_second_waiting() -> bool:
                return any(pid != first_backend for pid in await lock_waiters(fresh_db))

            await wait_until(retried_or_second_waiting, 10, "an upsert of the user to wait for the row again")
        finally:
            await transaction.commit()
        await wait_until(lambda: acked(channel, 2), 15, "both profile events to be acked")
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        await holder.close()

    assert (await get_profile(fresh_db, user))["email"] == "new@example.com"
    assert channel.calls == [("ack", 1, True), ("ack", 2, True)]  # settled in delivery order
    assert len(pipeline._profiles) == 0  # no user's lock is kept once nobody waits for it


async def test_a_profile_event_older_than_a_stored_change_leaves_that_field_alone(
    pipeline: Pipeline, fresh_db: asyncpg.Connection
) -> None:
    user = fresh_id("redelivered")
    # Stored before `changed_at` existed: no field has a time yet, so any event applies to it.
    await fresh_db.execute("INSERT INTO user_profiles (user_id, name) VALUES ($1, 'Ada')", user)
    channel = FakeChannel()
    tasks: list[asyncio.Task[None]] = []

    async def store(tag: int, body: dict[str, object]) -> None:
        deliver(pipeline, tasks, delivered(channel, tag, {"user_id": user, **body}, "user.profile"))
        await wait_until(lambda: acked(channel, tag), 10, f"profile event {tag} acked")

    newer = {"email": "new@example.com", "name": "Ada L.", "changed_at": "2026-03-01T12:00:00+00:00"}
    await store(1, newer)
    # The older event comes back after the newer one (it waited out an outage in the broker): its email
    # and name are older than the stored ones, its locale is the only news.
    older = {"email": "old@example.com", "name": None, "locale": "fr", "changedAt": "2026-03-01T11:59:00Z"}
    await store(2, older)
    profile = await get_profile(fresh_db, user)
    assert (profile["email"], profile["name"], profile["locale"]) == ("new@example.com", "Ada L.", "fr")

    # Nothing in it is newer: the row is not written at all.
    before = profile["updated_at"]
    await store(3, {"email": "older@example.com", "changed_at": "2026-02-01T00:00:00Z"})
    assert (await get_profile(fresh_db, user))["updated_at"] == before

    # Without `changed_at` an event counts as changed when stored: it applies, as in delivery order.
    await store(4, {"email": "now@example.com"})
    assert (await get_profile(fresh_db, user))["email"] == "now@example.com"
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [kind for kind, _, _ in channel.calls] == ["ack"] * 4  # stale or not, each event is settled


async def test_the_producers_profile_events_carry_when_they_changed(
    fresh_stack: Stack, fresh_db: asyncpg.Connection
) -> None:
    fresh_stack.start_worker()
    user = fresh_id("sdk")
    now = datetime.now(UTC)

    async def stored(field: str, value: object) -> bool:
        return (await get_profile(fresh_db, user))[field] == value

    async with Producer(fresh_stack.amqp_url) as producer:
        await producer.profile(user, email="new@example.com", name="Ada")  # changed now, by default
        await wait_until(lambda: stored("name", "Ada"), 30, "the first profile stored")
        # A copy of an earlier change arriving late: only the field nothing later changed is stored.
        await producer.profile(
            user, email="old@example.com", locale="fr", changed_at=now - timedelta(hours=1)
        )
        await wait_until(lambda: stored("locale", "fr"), 30, "the late profile's locale stored")
        assert (await get_profile(fresh_db, user))["email"] == "new@example.com"
        await producer.profile(user, name=None)  # None clears; a field not given is kept
        await wait_until(lambda: stored("name", None), 30, "the name cleared")
        assert (await get_profile(fresh_db, user))["email"] == "new@example.com"

        with pytest.raises(InvalidEvent, match="time zone offset"):
            await producer.profile(user, email="x@example.com", changed_at=datetime(2026, 1, 1))
        with pytest.raises(InvalidEvent, match="user_id"):
            await producer.profile("not a user id", email="x@example.com")
