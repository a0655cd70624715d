"""A broadcast resumed after a crash keeps the ``created_at`` of the copies the crashed run stored.

The crash is driven directly against a real database: one :class:`worker.broadcasts.BroadcastRun`, accepted
an hour ago, commits its first chunks and is abandoned (what a killed worker leaves behind); a new run of
the same event, as the redelivery starts it, stores the rest in chunks of another size, so one of its
chunks holds users of both runs. Every in-app copy, the Notification of every email/push job and the one
frame must carry the first run's time.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson

from herald_ops.testing.stack import fresh_id
from herald_ops.testing.worker import FakeChannel, add_known_users, delivered
from shared.events import BroadcastEvent
from shared.settings import Settings
from worker.broadcasts import BroadcastRun
from worker.pending import Pending
from worker.routing import Outgoing, route_broadcast
from worker.store.catalog import load_catalog
from worker.store.pool import create_pool

if TYPE_CHECKING:
    import asyncpg

    from herald_ops.testing.stack import Stack
    from shared.preferences import Catalog

USERS = 10
ACCEPTED = datetime.now(UTC) - timedelta(hours=1)  # when the crashed run was accepted


async def store_chunk(pool: asyncpg.Pool, run: BroadcastRun, catalog: Catalog) -> Outgoing:
    """Commit ``run``'s next chunk in a transaction of its own, as the broadcast loop does."""
    async with pool.acquire() as conn, conn.transaction():
        outgoing = await run.store_next_chunk(conn, catalog)
    run.committed()
    return outgoing


async def test_every_copy_of_a_resumed_broadcast_has_the_first_runs_created_at(
    fresh_stack: Stack, fresh_db: asyncpg.Connection
) -> None:
    await add_known_users(fresh_db, {f"user-{i:02d}": 0 for i in range(USERS)})
    pool = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    try:
        catalog = await load_catalog(pool)
        body: dict[str, Any] = {"event_id": fresh_id("bc"), "type": "GRADE_RELEASED", "title": "Grades"}
        channel = FakeChannel()
        message = delivered(channel, 1, body, "notification.broadcast")
        item = Pending(BroadcastEvent.model_validate(body), message, cast("Any", channel), 1)
        crashed = BroadcastRun.start(item, catalog, 3)
        crashed = replace(crashed, routing=route_broadcast(item.event, catalog, ACCEPTED))
        for _ in range(2):  # users 00-05, then the worker dies
            await store_chunk(pool, crashed, catalog)

        resumed = BroadcastRun.start(item, catalog, 4)  # 00-03 stored, 04-07 half stored, 08-09 new
        outgoing = Outgoing()
        while not resumed.done:
            outgoing = await store_chunk(pool, resumed, catalog)

        copies = await fresh_db.fetch(
            "SELECT user_id, created_at FROM notifications WHERE idempotency_key = $1", body["event_id"]
        )
        assert len(copies) == USERS
        assert {row["created_at"] for row in copies} == {ACCEPTED}
        jobs = await fresh_db.fetch("SELECT notification FROM delivery_jobs")
        assert len(jobs) == 2 * USERS  # email and push each
        sent = {datetime.fromisoformat(orjson.loads(row["notification"])["created_at"]) for row in jobs}
        assert sent == {ACCEPTED}  # what the email/push shows
        [(_type, _critical, frame)] = outgoing.broadcasts
        assert datetime.fromisoformat(orjson.loads(frame)["params"]["created_at"]) == ACCEPTED
    finally:
        await pool.close()
