"""Jobs of notifications stored in-app keep no copy (sql/009): the claim reads the in-app row, a deletion
gives the waiting jobs a copy first, and a job whose row is gone otherwise (retention) is cancelled.

No ``herald-delivery`` runs here: the test claims the jobs itself, as a delivery process would.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from herald_ops.testing.requests import AmqpRpc
from herald_ops.testing.stack import fresh_id
from herald_ops.testing.worker import TOPOLOGY, Watcher, event, frame_params, recorded_jobs
from shared.settings import Settings
from worker.store.deliveries import claim_due
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack

TIMESTAMPS = ("created_at", "read_at", "seen_at", "archived_at", "acted_at", "expires_at")


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    fresh_stack.start_worker()
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    yield created
    await created.close()


def same_instants(notification: dict[str, Any]) -> dict[str, Any]:
    """``notification`` with its timestamps parsed: a copy written by SQL always has six fraction digits."""
    return {
        name: datetime.fromisoformat(value) if name in TIMESTAMPS and value is not None else value
        for name, value in notification.items()
    }


async def stored_with_jobs(watcher: Watcher, db: asyncpg.Connection, user: str) -> dict[str, Any]:
    """Publish one ``GRADE_RELEASED`` event (email and push on by default) for ``user``; return its frame's
    Notification object once both jobs are recorded."""
    frames = await watcher.frames(user)
    await watcher.publish(event(user, "GRADE_RELEASED", event_id=f"{user}-1"))
    (message,) = await watcher.take(frames, 1)
    jobs = await recorded_jobs(db, [user], 2)
    assert sorted((job["channel"], job["notification"]) for job in jobs) == [("email", None), ("push", None)]
    return frame_params(message)


async def test_the_claim_reads_the_in_app_row_as_the_live_frame_carried_it(
    pool: asyncpg.Pool, fresh_watcher: Watcher, fresh_db: asyncpg.Connection
) -> None:
    user = fresh_id("nocopy")
    live = await stored_with_jobs(fresh_watcher, fresh_db, user)
    for channel in ("email", "push"):
        (claimed,) = await claim_due(pool, channel, 10, 30)
        assert (claimed.user_id, claimed.cancelled) == (user, False)
        assert claimed.notification == live


async def test_deleting_the_in_app_row_gives_its_waiting_jobs_a_copy(
    pool: asyncpg.Pool, fresh_stack: Stack, fresh_watcher: Watcher, fresh_db: asyncpg.Connection
) -> None:
    user = fresh_id("deleted")
    live = await stored_with_jobs(fresh_watcher, fresh_db, user)
    rpc = await AmqpRpc.connect(fresh_stack.amqp_url, TOPOLOGY.rpc_queue)
    try:
        reply = await rpc.call("notifications.delete", {"ids": [live["id"]]}, user=user)
    finally:
        await rpc.close()
    assert reply["result"]["unread_count"] == 0
    copies = [row["notification"] for row in await recorded_jobs(fresh_db, [user], 2)]
    assert [same_instants(copy) for copy in copies] == [same_instants(live)] * 2
    for channel in ("email", "push"):
        (claimed,) = await claim_due(pool, channel, 10, 30)
        assert claimed.cancelled is False
        assert same_instants(claimed.notification) == same_instants(live)


async def test_a_job_whose_in_app_row_is_gone_without_a_copy_is_cancelled_at_its_claim(
    pool: asyncpg.Pool, fresh_watcher: Watcher, fresh_db: asyncpg.Connection
) -> None:
    """Retention deletes rows by age, not through ``notifications.delete``: a job still waiting for such a
    row has nothing to send."""
    user = fresh_id("retained")
    await stored_with_jobs(fresh_watcher, fresh_db, user)
    await fresh_db.execute("DELETE FROM notifications WHERE user_id = $1", user)
    (claimed,) = await claim_due(pool, "email", 10, 30)
    assert (claimed.user_id, claimed.cancelled, claimed.notification) == (user, True, {})
    status = await fresh_db.fetchval(
        "SELECT status FROM delivery_jobs WHERE user_id = $1 AND channel = 'email'", user
    )
    assert status == "cancelled"
