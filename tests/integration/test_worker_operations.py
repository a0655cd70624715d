"""Running the worker end to end: a real worker process, RabbitMQ and Postgres.

On ``test_worker``'s fixtures (one worker on a vhost and database of this module's own), or on a stack
of the test's own: the catalog reloaded on SIGHUP, events and requests consumed on channels of their
own, a deleted queue declared, bound and consumed again, the health, readiness, metrics and AsyncAPI
endpoints, and the retention pass (one worker at a time, counters adjusted).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import orjson

from herald_ops.testing.requests import AmqpRpc
from herald_ops.testing.stack import (
    Stack,
    create_stack,
    destroy_stack,
    fresh_id,
    http_get,
    rabbitmqctl,
    wait_until,
)
from herald_ops.testing.worker import TOPOLOGY, counters, event, frame_params, rows
from shared.settings import Settings
from tests.integration.test_worker import db, module_stack, watcher, worker
from worker.retention import retention_pass
from worker.store.pool import create_pool
from worker.store.retention import ADVISORY_LOCK_ID

if TYPE_CHECKING:
    import asyncpg

    from herald_ops.testing.stack import HeraldProcess
    from herald_ops.testing.worker import Watcher

__all__ = ["db", "module_stack", "watcher", "worker"]  # fixtures shared with test_worker


async def test_a_type_added_to_the_catalog_is_picked_up_on_sighup(
    worker: HeraldProcess, watcher: Watcher, db: asyncpg.Connection
) -> None:
    await db.execute(
        """INSERT INTO notification_types (name, category, default_email, default_push)
           VALUES ('STUDY_GROUP_INVITE', 'social', false, false)"""
    )
    worker.signal(signal.SIGHUP)
    await wait_until(
        lambda: b"herald_worker_catalog_types 15.0" in http_get(f"{worker.url}/metrics")[1], 20, "reload"
    )
    user = fresh_id("newtype")
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "STUDY_GROUP_INVITE"))

    assert frame_params((await watcher.take(frames, 1))[0])["category"] == "social"


def consumers(stack: Stack, *fields: str) -> list[dict[str, Any]]:
    """``rabbitmqctl list_consumers`` of ``stack``'s vhost: the ``fields`` of each consumer."""
    listing = rabbitmqctl("list_consumers", "-p", stack.name, "--formatter", "json", *fields).stdout
    found: list[dict[str, Any]] = orjson.loads(listing)
    return found


def test_events_and_requests_are_consumed_on_channels_of_their_own() -> None:
    """Each consumer gets its own channel and prefetch; on a shared channel a prefetch applies to both (or,
    declared on the default channel, none: the regression worker.amqp.declare_topology describes)."""
    stack = create_stack("herald_consumers")
    try:
        stack.start_worker(prefetch=37, rpc_prefetch=11)
        by_queue = {
            consumer["queue_name"]: consumer
            for consumer in consumers(stack, "queue_name", "channel_pid", "prefetch_count", "ack_required")
        }
    finally:
        destroy_stack(stack)
    events, requests = by_queue[TOPOLOGY.events_queue], by_queue[TOPOLOGY.rpc_queue]
    # Manual acks, at most HERALD_PREFETCH (HERALD_RPC_PREFETCH) unacked, each on a channel of its own.
    assert (events["prefetch_count"], events["ack_required"]) == (37, True)
    assert (requests["prefetch_count"], requests["ack_required"]) == (11, True)
    assert events["channel_pid"] != requests["channel_pid"]


def consumed_queues(stack: Stack) -> list[str]:
    """The queues of ``stack``'s vhost that have a consumer, sorted."""
    return sorted(consumer["queue_name"] for consumer in consumers(stack, "queue_name"))


async def test_a_deleted_queue_is_declared_bound_and_consumed_again(
    fresh_stack: Stack, fresh_watcher: Watcher, fresh_db: asyncpg.Connection
) -> None:
    """An operator deletes ``herald.events`` and ``herald.rpc`` under a running worker: the broker cancels
    both consumers, and the worker declares each queue again, with its bindings, and consumes it."""
    fresh_stack.start_worker()
    both = sorted([TOPOLOGY.events_queue, TOPOLOGY.rpc_queue])
    assert consumed_queues(fresh_stack) == both
    for name in both:
        await fresh_watcher.channel.queue_delete(name)
    await wait_until(lambda: consumed_queues(fresh_stack) == both, 20, "both queues consumed again")
    user = fresh_id("requeue")
    # Published through the exchange: only a queue bound again receives it.
    await fresh_watcher.publish(event(user, event_id=f"{user}-1"))
    await wait_until(lambda: _stored(fresh_db, user), 20, "the event stored")
    rpc = await AmqpRpc.connect(fresh_stack.amqp_url, TOPOLOGY.rpc_queue)
    try:
        reply = await rpc.call("notifications.unread_count", user=user)
    finally:
        await rpc.close()
    assert reply == {"result": {"count": 1, "unseen_count": 1, "last_seq": 1}}


async def _stored(pg: asyncpg.Connection, user: str) -> bool:
    return len(await rows(pg, user)) == 1


async def test_health_readiness_metrics_and_asyncapi(worker: HeraldProcess, watcher: Watcher) -> None:
    assert http_get(f"{worker.url}/healthz")[0] == 200
    assert http_get(f"{worker.url}/readyz") == (200, b"ready\n")
    status, metrics = http_get(f"{worker.url}/metrics")
    assert status == 200
    for name in (
        b'herald_worker_events_total{outcome="stored"}',
        b"herald_worker_batch_size_bucket",
        b"herald_worker_store_seconds_bucket",
        b"herald_worker_publish_seconds_bucket",
    ):
        assert name in metrics
    status, document = http_get(f"{worker.url}/asyncapi.json")
    schemas = orjson.loads(document)["components"]["schemas"]
    assert status == 200
    assert any("user_ids" in orjson.dumps(s).decode() for s in schemas.values())
    assert http_get(f"{worker.url}/nope")[0] == 404


async def test_retention_deletes_old_rows_and_adjusts_unread(
    module_stack: Stack, db: asyncpg.Connection
) -> None:
    user = fresh_id("old")
    await db.execute(
        "INSERT INTO users (user_id, last_seq, unread_count, unseen_count, inbox_count)"
        " VALUES ($1, 2600, 2510, 2510, 2600)",
        user,
    )
    await db.execute(
        """INSERT INTO notifications
                  (user_id, seq, id, type, category, title, message, created_at, read_at, seen_at)
           SELECT $1, s, 'id' || s, 'NEW_COMMENT', 'social', 't', 'm',
                  now() - CASE WHEN s <= 2500 THEN interval '100 days' ELSE interval '1 day' END,
                  CASE WHEN s > 2510 THEN now() END, CASE WHEN s > 2510 THEN now() END
             FROM generate_series(1, 2600) AS s""",
        user,
    )
    pool = await create_pool(Settings(database_url=module_stack.database_url, db_pool_min=1, db_pool_max=2))
    try:
        async with pool.acquire() as holder:
            await holder.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
            assert await retention_pass(pool, 90, 1000) is None  # another worker is at it
            await holder.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
        assert await retention_pass(pool, 90, 1000) == 2500
    finally:
        await pool.close()
    assert [r["seq"] for r in await rows(db, user)] == list(range(2501, 2601))
    assert await counters(db, user) == (2600, 10)
    assert await db.fetchval("SELECT inbox_count FROM users WHERE user_id = $1", user) == 100


def test_a_database_that_does_not_exist_stops_the_worker_at_start_with_the_reason(
    module_stack: Stack,
) -> None:
    """Refused connections are an outage while the worker runs (events wait), but at start a missing
    database or refused credentials are a misconfiguration: exit non-zero naming it, not retry forever."""
    missing = module_stack.database_url.rsplit("/", 1)[0] + "/" + fresh_id("missing")
    finished = subprocess.run(
        [sys.executable, "-m", "worker"],
        env=module_stack.env(database_url=missing),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "does not exist" in finished.stdout + finished.stderr
