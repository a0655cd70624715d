"""A worker killed (SIGKILL) in the middle of a chunked broadcast: the redelivery resumes it.

The chunks committed before the kill stay; the broadcast's delivery was never acked, so RabbitMQ
redelivers it to the next worker, which runs it again from the first user. The idempotency key skips
every user an earlier chunk stored, so each known user ends up with exactly one copy (their next seq)
and one email and one push job, and nothing is lost; every copy keeps the killed run's ``created_at``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from herald_ops.testing.stack import fresh_id, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, add_known_users, frame_params

if TYPE_CHECKING:
    import asyncpg

    from herald_ops.testing.stack import Stack

USERS = 6000
CHUNK = 20


async def test_a_broadcast_killed_mid_way_resumes_without_duplicates_or_loss(
    fresh_stack: Stack, fresh_db: asyncpg.Connection, fresh_watcher: Watcher
) -> None:
    await add_known_users(fresh_db, {f"user-{i:05d}": 0 for i in range(USERS)})
    worker = fresh_stack.start_worker(broadcast_chunk_size=CHUNK)
    live = await fresh_watcher.bound_queue(TOPOLOGY.broadcast_exchange)
    key = fresh_id("bc")
    body = {"event_id": key, "type": "GRADE_RELEASED", "title": "Grades", "message": "m"}

    async def stored() -> int:
        count: int = await fresh_db.fetchval(
            "SELECT count(*) FROM notifications WHERE idempotency_key = $1", key
        )
        return count

    async def some_stored() -> bool:
        return await stored() > 0

    await fresh_watcher.publish(body, routing_key="notification.broadcast")
    await wait_until(some_stored, 30, "the broadcast's first chunk")
    worker.kill()
    assert 0 < await stored() < USERS  # killed between chunks, before the last one
    assert await fresh_watcher.nothing_more(live) == []  # no frame before the last chunk

    resumed = fresh_stack.start_worker(broadcast_chunk_size=CHUNK)
    [frame] = await fresh_watcher.take(live, 1)
    assert frame_params(frame)["seq"] is None
    # One time for every copy, the killed run's, and the frame carries it: not the redelivery's.
    times = await fresh_db.fetch("SELECT DISTINCT created_at FROM notifications")
    assert [r["created_at"] for r in times] == [datetime.fromisoformat(frame_params(frame)["created_at"])]

    per_user = await fresh_db.fetch(
        "SELECT user_id, count(*) AS copies, min(seq) AS seq FROM notifications GROUP BY user_id"
    )
    assert len(per_user) == USERS
    assert {(r["copies"], r["seq"]) for r in per_user} == {(1, 1)}
    counters = await fresh_db.fetch(
        "SELECT DISTINCT last_seq, unread_count, unseen_count, inbox_count FROM users"
    )
    assert [tuple(r) for r in counters] == [(1, 1, 1, 1)]
    jobs = await fresh_db.fetch(
        "SELECT channel, count(DISTINCT user_id) AS users FROM delivery_jobs GROUP BY 1"
    )
    assert sorted(tuple(r) for r in jobs) == [("email", USERS), ("push", USERS)]
    # Acked after the resumed run: nothing is left in the input queue once that worker is gone.
    assert resumed.stop() == 0
    queue = await fresh_watcher.channel.declare_queue(TOPOLOGY.events_queue, passive=True)
    assert queue.declaration_result.message_count == 0
