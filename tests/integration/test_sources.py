"""Idempotency keys scoped by producer (``source``), end to end: a real worker, RabbitMQ and Postgres.

The same ``event_id`` from two sources is two notifications; from one source, one — and a redelivery of
it republishes the stored notification as for an event without a source, its email/push jobs recorded
once, with the notification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import asyncpg

from herald_ops.testing.stack import fresh_id
from herald_ops.testing.worker import (
    TOPOLOGY,
    Watcher,
    counters,
    event,
    frame_params,
    recorded_jobs,
    redeliver_while_down,
    rows,
)

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack


async def test_sources_scope_event_ids_and_a_redelivery_republishes_without_new_jobs(
    fresh_stack: Stack,
) -> None:
    worker = fresh_stack.start_worker(batch_timeout_ms=20)
    connection = await aio_pika.connect(fresh_stack.amqp_url)
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        watcher = Watcher(await connection.channel())
        user = fresh_id("src")
        frames = await watcher.frames(user)
        key = fresh_id("ev")
        billing = event(user, "GRADE_RELEASED", event_id=key, source="billing")
        courses = event(user, "GRADE_RELEASED", event_id=key, source="courses")
        unscoped = event(user, "GRADE_RELEASED", event_id=key)
        for body in (billing, courses, unscoped):
            await watcher.publish(body)
        first = [frame_params(m) for m in await watcher.take(frames, 3)]
        stored = await rows(pg, user)
        jobs = await recorded_jobs(pg, [user], 6)
        assert sorted((job["channel"], job["notification_id"]) for job in jobs) == sorted(
            (channel, row["id"]) for row in stored for channel in ("email", "push")
        )
        assert [(r["source"], r["idempotency_key"]) for r in stored] == [
            ("billing", key),
            ("courses", key),
            ("", key),
        ]
        assert len({r["id"] for r in stored}) == 3
        assert [(p["id"], p["seq"]) for p in first] == [(r["id"], r["seq"]) for r in stored]

        # The same source and key again, in a later batch: nothing new is stored, and the stored copy goes
        # out live again (clients drop the repeat by id and seq).
        await watcher.publish(billing)
        (repeat,) = await watcher.take(frames, 1)
        assert frame_params(repeat) == first[0]

        # ... and delivered again by the broker to a consumer that died before acking: published again.
        await redeliver_while_down(worker, connection, watcher, billing)
        (again,) = await watcher.take(frames, 1)
        assert frame_params(again) == first[0]
        assert await recorded_jobs(pg, [user], 6) == jobs  # recorded with the row: none added
        assert len(await rows(pg, user)) == 3
        assert await counters(pg, user) == (3, 3)
    finally:
        await pg.close()
        await connection.close()


async def test_broadcasts_are_scoped_by_source_too(fresh_stack: Stack) -> None:
    fresh_stack.start_worker(batch_timeout_ms=20)
    connection = await aio_pika.connect(fresh_stack.amqp_url)
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        watcher = Watcher(await connection.channel())
        users = [fresh_id("bsrc") for _ in range(2)]
        await pg.executemany("INSERT INTO users (user_id) VALUES ($1)", [(user,) for user in users])
        live = await watcher.bound_queue(TOPOLOGY.broadcast_exchange)
        key = fresh_id("bc")
        announcement = {"event_id": key, "type": "SYSTEM_ANNOUNCEMENT", "title": "Maintenance"}
        for source in ("ops", "ops", "marketing"):
            await watcher.publish({**announcement, "source": source}, routing_key="notification.broadcast")
        ids = [frame_params(m)["id"] for m in await watcher.take(live, 3)]
        assert ids[0] == ids[1] != ids[2]
        for user in users:
            stored = await rows(pg, user)
            assert sorted((r["source"], r["id"]) for r in stored) == sorted(
                [("ops", ids[0]), ("marketing", ids[2])]
            )
    finally:
        await pg.close()
        await connection.close()
