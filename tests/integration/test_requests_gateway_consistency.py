"""Client requests through the real gateway while notifications arrive through the real pipeline.

Notifications are sent with :class:`herald_client.producer.Producer` (and seeded in Postgres for volume):
sync after a disconnect returns exactly what was missed (one or two workers), sync from a watermark misses
nothing while two workers store a burst, and pages of ``notifications.list`` walk without repeat or gap while
new ones arrive. The ``env``, ``db`` and ``producer`` fixtures and ``clients`` come from
test_requests_gateway.py (``env`` is module-scoped: this module gets a stack, worker and gateway of its own).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from herald_ops.testing.requests import seed
from herald_ops.testing.stack import fresh_id, rabbitmqctl, wait_until
from shared.topology import Topology
from tests.integration.test_requests_gateway import clients, db, env, producer

if TYPE_CHECKING:
    import asyncpg

    from herald_client.producer import Producer
    from herald_ops.testing.stack import Stack
    from tests.integration.test_requests_gateway import Env

TOPOLOGY = Topology()
pytestmark = pytest.mark.timeout(120)
__all__ = [
    "db",
    "env",
    "producer",
]  # fixtures of test_requests_gateway (env is module-scoped: one per module)


# ---------------------------------------------------------------------------------------- recovery


async def publish_titles(producer: Producer, user: str, titles: list[str]) -> None:
    await asyncio.gather(*(producer.send(user, "COURSE_UPDATE", title) for title in titles))


@pytest.mark.parametrize("workers", [1, 2])
async def test_sync_after_a_disconnect_returns_exactly_what_was_missed(
    env: Env, db: asyncpg.Connection, producer: Producer, workers: int
) -> None:
    extra = [env.stack.start_worker() for _ in range(workers - 1)]
    try:
        # The quorum queue hands the 20 events round-robin to every consumer.
        assert event_consumers(env.stack) == workers
        await _disconnect_and_sync(env, db, producer)
    finally:
        for worker in extra:
            worker.stop()


async def _disconnect_and_sync(env: Env, db: asyncpg.Connection, producer: Producer) -> None:
    user = fresh_id()
    client, _ = await env.connect(user)
    await publish_titles(producer, user, ["seen-0", "seen-1", "seen-2"])
    live = [await client.next_event("notification:new") for _ in range(3)]
    watermark = max(item["seq"] for item in live)
    await client.close()

    missed = [f"missed-{i}" for i in range(20)]
    await publish_titles(producer, user, missed)
    await wait_until(lambda: _count_after(db, user, watermark, 20), 30, "the 20 missed notifications stored")

    client, connected = await env.connect(user)
    try:
        assert connected["last_seq"] == watermark + 20
        synced = await client.result("notifications.sync", {"since": watermark})
    finally:
        await client.close()
    seqs = [item["seq"] for item in synced["items"]]
    assert seqs == sorted(seqs)
    assert len(seqs) == len(set(seqs)) == 20
    assert all(seq > watermark for seq in seqs)
    assert sorted(item["title"] for item in synced["items"]) == sorted(missed)
    assert synced["has_more"] is False


async def _count_after(db: asyncpg.Connection, user: str, seq: int, expected: int) -> bool:
    stored = await db.fetchval(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND seq > $2", user, seq
    )
    return bool(stored == expected)


async def test_sync_from_a_watermark_misses_nothing_with_two_workers_storing(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    second = env.stack.start_worker()
    try:
        user = fresh_id()
        client, connected = await env.connect(user)
        watermark = connected["last_seq"]
        seen: list[dict[str, Any]] = []
        titles = [f"burst-{i}" for i in range(200)]
        publishing = asyncio.create_task(publish_titles(producer, user, titles))
        # Both workers consume the input queue while the burst is stored.
        assert event_consumers(env.stack) == 2

        async def caught_up() -> bool:
            # What a reconnecting client does: sync from the highest seq it saw, repeatedly.
            nonlocal watermark
            while True:
                page = await client.result("notifications.sync", {"since": watermark, "limit": 50})
                seen.extend(page["items"])
                if page["items"]:
                    watermark = page["items"][-1]["seq"]
                if not page["has_more"]:
                    return len(seen) >= len(titles)

        await wait_until(caught_up, 60, "every burst notification synced")
        await publishing

        # A client that disconnected mid-burst and syncs from what it saw gets exactly the rest.
        await client.close()
        cut = seen[49]["seq"]
        again, _ = await env.connect(user)
        try:
            rest = await again.result("notifications.sync", {"since": cut})
        finally:
            await again.close()
    finally:
        second.stop()

    seqs = [item["seq"] for item in seen]
    assert seqs == sorted(set(seqs)), "sync returned a seq twice or out of order"
    assert sorted(item["title"] for item in seen) == sorted(titles), "a notification was skipped"
    assert [item["seq"] for item in rest["items"]] == seqs[50:]


def event_consumers(stack: Stack) -> int:
    """Consumers of the input queue (``list_queues`` reports 0 for quorum queues on RabbitMQ 3.10)."""
    listing = rabbitmqctl("list_consumers", "-p", stack.name, "queue_name").stdout
    return listing.split().count(TOPOLOGY.events_queue)


# -------------------------------------------------------------------------------------- pagination


async def test_pages_of_20_walk_250_notifications_without_repeat_or_gap_while_new_ones_arrive(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user = fresh_id()
    await seed(db, user, 250)
    async with clients(env, user) as (client,):
        walked: list[int] = []
        pages = 0
        cursor = None
        arriving: asyncio.Task[None] | None = None
        while True:
            page = await client.result(
                "notifications.list", {"limit": 20, **({"before": cursor} if cursor else {})}
            )
            pages += 1
            assert len(page["items"]) <= 20
            walked += [item["seq"] for item in page["items"]]
            cursor = page["next_cursor"]
            if pages == 1:
                # New notifications certainly arrive mid-walk: 20 stored before the second page, and
                # 20 more trickling in while the rest is walked.
                await publish_titles(producer, user, [f"late-{i}" for i in range(20)])
                await wait_until(lambda: _count_after(db, user, 250, 20), 30, "20 new notifications stored")
                arriving = asyncio.create_task(
                    publish_titles(producer, user, [f"later-{i}" for i in range(20)])
                )
            if cursor is None:
                break
        assert arriving is not None
        await arriving
    top = walked[0]
    stored_up_to_top = await db.fetch(
        "SELECT seq FROM notifications WHERE user_id = $1 AND seq <= $2 ORDER BY seq DESC", user, top
    )
    assert walked == [row["seq"] for row in stored_up_to_top], "a page repeated or skipped a notification"
    assert set(range(1, 251)) <= set(walked)
    assert pages == -(-len(walked) // 20)
