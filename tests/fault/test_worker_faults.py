"""The worker under crashes, races and a database outage each on a fresh stack."""

from __future__ import annotations

import asyncio
import re
import subprocess
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import pytest

from herald_ops.testing.requests import AmqpRpc
from herald_ops.testing.stack import close_connections, http_get, http_status, queue_depth, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from herald_ops.testing.stack import HeraldProcess, Stack

PG_CLUSTER = ("15", "main")


@pytest.fixture
async def watcher(fresh_stack: Stack) -> AsyncIterator[Watcher]:
    connection = await aio_pika.connect(fresh_stack.amqp_url)
    try:
        yield Watcher(await connection.channel())
    finally:
        await connection.close()


async def stored(pg: asyncpg.Connection) -> int:
    count: int = await pg.fetchval("SELECT count(*) FROM notifications")
    return count


async def assert_each_stored_once(pg: asyncpg.Connection, expected: int) -> None:
    """``expected`` rows, distinct keys, and per user: seq 1..n, last_seq = unread_count = n."""
    assert (
        await pg.fetchval("SELECT count(DISTINCT (user_id, idempotency_key)) FROM notifications") == expected
    )
    assert await stored(pg) == expected
    for user in await pg.fetch("SELECT user_id, last_seq, unread_count FROM users"):
        seqs = await pg.fetch(
            "SELECT seq FROM notifications WHERE user_id = $1 ORDER BY seq", user["user_id"]
        )
        assert [r["seq"] for r in seqs] == list(range(1, len(seqs) + 1))
        assert user["last_seq"] == user["unread_count"] == len(seqs)


async def assert_all_stored_once(
    pg: asyncpg.Connection, stack: Stack, watcher: Watcher, expected: int, what: str
) -> None:
    """Wait until ``expected`` events are stored and the input queue is drained, then check each was
    stored exactly once and none was dead-lettered."""
    await wait_until(lambda: _at_least(pg, expected), 60, what)
    await wait_until(lambda: queue_settled(stack), 30, "the input queue to drain")
    await assert_each_stored_once(pg, expected)
    assert await watcher.dead_letter_count() == 0


async def queue_settled(stack: Stack) -> bool:
    """Nothing left in the input queue, ready or unacked (a redelivery the worker holds counts)."""
    return await asyncio.to_thread(queue_depth, stack.name, TOPOLOGY.events_queue) == 0


async def stream(watcher: Watcher, bodies: list[dict[str, object]], window: int, pause: float) -> None:
    """Publish ``bodies`` ``window`` at a time with a ``pause`` between (pacing only, nothing is timed)."""
    for start in range(0, len(bodies), window):
        await asyncio.gather(*(watcher.publish(b) for b in bodies[start : start + window]))
        await asyncio.sleep(pause)


def worker_stored(worker: HeraldProcess) -> float:
    _, metrics = http_get(f"{worker.url}/metrics")
    match = re.search(rb"^herald_worker_notifications_stored_total ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_sigkill_while_events_stream_in_loses_and_duplicates_nothing(
    fresh_stack: Stack, watcher: Watcher
) -> None:
    worker = fresh_stack.start_worker()
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        bodies = [event(f"kill-{i % 25}", event_id=f"kill-{i}") for i in range(2000)]
        streaming = asyncio.create_task(stream(watcher, bodies, window=50, pause=0.1))
        await wait_until(lambda: _at_least(pg, 300), 30, "300 events stored")
        worker.kill()
        assert not streaming.done()  # killed while events were still arriving
        await streaming
        worker.launch()

        await assert_all_stored_once(pg, fresh_stack, watcher, 2000, "all 2,000 events stored")
    finally:
        await pg.close()


async def _at_least(pg: asyncpg.Connection, count: int) -> bool:
    return await stored(pg) >= count


async def test_two_workers_racing_on_one_user_keep_seq_in_commit_order(
    fresh_stack: Stack, watcher: Watcher
) -> None:
    # Small batches and prefetch so the two workers interleave their commits on the same user.
    workers = [fresh_stack.start_worker(batch_size=size, prefetch=40) for size in (7, 13)]
    pg = await asyncpg.connect(fresh_stack.database_url)
    observer = await asyncpg.connect(fresh_stack.database_url)
    try:
        bodies = [
            event(["racer", f"other-{i % 7}"] if i % 3 == 0 else "racer", event_id=f"race-{i}")
            for i in range(1000)
        ]
        snapshots = 0
        done = asyncio.Event()

        async def observe() -> None:
            # A client syncing at any moment must see a gap-free prefix 1..max: a later commit with a
            # smaller seq would show up here as a hole.
            nonlocal snapshots
            while not done.is_set():
                seqs = await observer.fetchval(
                    "SELECT array_agg(seq ORDER BY seq) FROM notifications WHERE user_id = 'racer'"
                )
                seqs = list(seqs or [])
                assert seqs == list(range(1, len(seqs) + 1)), "a hole in the visible seqs"
                snapshots += 1

        watching = asyncio.create_task(observe())
        await asyncio.gather(*(watcher.publish(body) for body in bodies))
        await wait_until(lambda: _at_least(pg, 1000 + 334), 60, "every notification stored")
        done.set()
        await watching

        assert snapshots > 10
        await assert_each_stored_once(pg, 1334)
        assert await pg.fetchval("SELECT last_seq FROM users WHERE user_id = 'racer'") == 1000
        assert all(worker_stored(w) > 0 for w in workers), "both workers took part"
    finally:
        await observer.close()
        await pg.close()


def pg_ctl(action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *PG_CLUSTER, action], check=True, timeout=120
    )


@pytest.mark.fault
async def test_postgres_down_for_30_seconds_loses_nothing(fresh_stack: Stack, watcher: Watcher) -> None:
    worker = fresh_stack.start_worker()
    pg = await asyncpg.connect(fresh_stack.database_url)
    before = [event(f"outage-{i % 5}") for i in range(20)]
    during = [event(f"outage-{i % 5}") for i in range(150)]
    for body in before:
        await watcher.publish(body)
    await wait_until(lambda: _at_least(pg, 20), 20, "events stored before the outage")
    await pg.close()
    try:
        pg_ctl("stop")
        await wait_until(lambda: http_status(f"{worker.url}/readyz") == 503, 20, "/readyz to report 503")
        await stream(watcher, during, window=1, pause=0.2)  # ~30 s of events arriving while Postgres is down
        assert worker.popen is not None
        assert worker.popen.poll() is None  # still running: it waits, it does not crash
        assert http_status(f"{worker.url}/readyz") == 503
    finally:
        pg_ctl("start")
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        await assert_all_stored_once(
            pg, fresh_stack, watcher, 170, "every event stored after Postgres returned"
        )
        await wait_until(lambda: http_status(f"{worker.url}/readyz") == 200, 20, "/readyz back to 200")
    finally:
        await pg.close()


async def test_sigterm_flushes_the_pending_batch(fresh_stack: Stack, watcher: Watcher) -> None:
    # A long batch timeout keeps the events pending in the batcher until the shutdown flushes them.
    worker = fresh_stack.start_worker(batch_size=5000, batch_timeout_ms=600_000, prefetch=1000)
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        await asyncio.gather(*(watcher.publish(event(f"term-{i % 10}")) for i in range(300)))
        await wait_until(lambda: _all_delivered(watcher), 20, "all events handed to the worker")
        assert await stored(pg) == 0

        assert worker.stop() == 0

        # What reached the batcher was committed and acked by the shutdown; deliveries the consumer had
        # not dispatched yet when it was cancelled went back to the queue: none lost, none acked unstored.
        flushed = await stored(pg)
        assert flushed > 0
        # The broker requeues what the closed channel held as it handles the close: wait for it.
        await wait_until(
            lambda: queue_depth(fresh_stack.name, TOPOLOGY.events_queue) == 300 - flushed,
            10,
            "the undispatched deliveries back in the queue",
        )

        fresh_stack.start_worker()
        await wait_until(lambda: _at_least(pg, 300), 30, "the requeued rest stored by a new worker")
        await wait_until(lambda: queue_settled(fresh_stack), 30, "the input queue to drain")
        await assert_each_stored_once(pg, 300)
    finally:
        await pg.close()


async def _all_delivered(watcher: Watcher) -> bool:
    queue = await watcher.channel.declare_queue(TOPOLOGY.events_queue, passive=True)
    return queue.declaration_result.message_count == 0  # ready count: the rest are unacked in the worker


async def test_a_dropped_amqp_connection_is_survived(fresh_stack: Stack, watcher: Watcher) -> None:
    worker = fresh_stack.start_worker()
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        await asyncio.gather(*(watcher.publish(event(f"drop-{i % 10}")) for i in range(200)))
        await wait_until(lambda: _at_least(pg, 200), 20, "events stored before the drop")
        assert close_connections(fresh_stack.name) >= 2  # the worker's and this test's
        # This test's own connection went too; publish on a new one.
        connection = await aio_pika.connect(fresh_stack.amqp_url)
        try:
            again = Watcher(await connection.channel())
            await asyncio.gather(*(again.publish(event(f"drop-{i % 10}")) for i in range(200)))
            await wait_until(lambda: _at_least(pg, 400), 60, "events stored after the reconnect")
            await wait_until(lambda: http_status(f"{worker.url}/readyz") == 200, 20, "ready again")
            await wait_until(lambda: queue_settled(fresh_stack), 30, "the input queue to drain")
            # Requests are answered again: the herald.rpc consumer came back with the channel.
            rpc = await AmqpRpc.connect(fresh_stack.amqp_url, TOPOLOGY.rpc_queue)
            try:
                reply = await rpc.call("notifications.unread_count", user="drop-0")
            finally:
                await rpc.close()
            assert reply == {"result": {"count": 40, "unseen_count": 40, "last_seq": 40}}
        finally:
            await connection.close()
        await assert_each_stored_once(pg, 400)
    finally:
        await pg.close()


async def test_confirmed_frames_mode_stores_and_publishes_everything(
    fresh_stack: Stack, watcher: Watcher
) -> None:
    fresh_stack.start_worker(confirm_frames="true", batch_size=16)
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        users = [f"confirm-{i}" for i in range(5)]
        frames = await watcher.frames(*users)
        await asyncio.gather(*(watcher.publish(event(users[i % 5])) for i in range(100)))

        got = await watcher.take(frames, 100)

        assert sorted(m.routing_key or "" for m in got) == sorted(users * 20)
        await assert_each_stored_once(pg, 100)
        await wait_until(lambda: queue_settled(fresh_stack), 20, "the input queue to drain")
    finally:
        await pg.close()


def db_outage_retries(worker: HeraldProcess) -> float:
    _, metrics = http_get(f"{worker.url}/metrics")
    pattern = rb'^herald_worker_db_retries_total\{cause="outage"\} ([0-9.e+]+)$'
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _read_only(pg: asyncpg.Connection, on: bool) -> None:
    """Switch the stack's database to read-only (as a primary demoted in a failover) or back, and drop
    every other session so the worker's pool reconnects under the new setting."""
    setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    await pg.execute(f'ALTER DATABASE "{await pg.fetchval("SELECT current_database()")}" {setting}')
    await pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


async def test_a_read_only_database_holds_events_instead_of_dead_lettering_them(
    fresh_stack: Stack, watcher: Watcher
) -> None:
    worker = fresh_stack.start_worker()
    pg = await asyncpg.connect(fresh_stack.database_url)
    bodies = [event(f"readonly-{i % 3}") for i in range(10)]
    try:
        await _read_only(pg, True)
        try:
            for body in bodies:
                await watcher.publish(body)
            await wait_until(lambda: db_outage_retries(worker) > 0, 20, "the worker to wait for writes")
            assert await stored(pg) == 0
            assert await watcher.dead_letter_count() == 0
        finally:
            await _read_only(pg, False)
        await assert_all_stored_once(pg, fresh_stack, watcher, 10, "every event stored once writable again")
    finally:
        await pg.close()


async def _allow_connections(admin: asyncpg.Connection, database: str, allowed: bool) -> None:
    """Let the stack's database take new connections or not (a restore, a maintenance window), dropping
    its sessions when closing it so the worker's pool must connect again."""
    await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
    if not allowed:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )


async def test_a_database_refusing_connections_holds_events_instead_of_dead_lettering_them(
    fresh_stack: Stack, watcher: Watcher
) -> None:
    worker = fresh_stack.start_worker()
    database = fresh_stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(fresh_stack.database_url.rsplit("/", 1)[0] + "/postgres")
    # One of a type added just before the outage: not in the worker's cached catalog, so reading the
    # catalog again meets the outage too, and is waited out rather than the event refused as unknown.
    bodies = [event(f"refused-{i % 3}") for i in range(9)] + [event("refused-new", "STUDY_GROUP_INVITE")]
    try:
        pg_before = await asyncpg.connect(fresh_stack.database_url)
        try:
            await pg_before.execute(
                """INSERT INTO notification_types (name, category, default_email, default_push)
                   VALUES ('STUDY_GROUP_INVITE', 'social', false, false)"""
            )
        finally:
            await pg_before.close()
        await _allow_connections(admin, database, False)
        try:
            for body in bodies:
                await watcher.publish(body)
            # The pool's new connections get 55000 "database does not allow connections": an outage
            # (retried), not an error of the events' data (dead-lettered).
            await wait_until(lambda: db_outage_retries(worker) > 0, 20, "the worker to wait for the database")
            assert await watcher.dead_letter_count() == 0
        finally:
            await _allow_connections(admin, database, True)
        pg = await asyncpg.connect(fresh_stack.database_url)
        try:
            await assert_all_stored_once(
                pg, fresh_stack, watcher, 10, "every event stored once connections are allowed"
            )
        finally:
            await pg.close()
    finally:
        await admin.close()
