"""A broadcast to a large known user base while per-user events stream at a steady rate.

Starts its own vhost + database with ``--users`` known users (default 100,000, no preferences) and one
``herald-worker``. For each chunk size of ``--chunk-sizes`` (a fresh worker each; ``default`` = the
worker's own setting, the only choice for code without chunks) it measures, in one run:

1. **without a broadcast**: persistent ``NEW_COMMENT`` events at ``--rate`` per second for ``--seconds``,
   each to a random one of ``--streaming-users`` of the known users;
2. **during a broadcast**: the same stream, and one ``SYSTEM_ANNOUNCEMENT`` broadcast published at its
   start; the stream stops when the broadcast's frame arrives on ``herald.broadcast``.

Each event carries the time it was published; its latency is taken when its ``notification:new`` frame
arrives on a queue bound to ``herald.users`` (the worker publishes it right after the commit, so this is
"stored" plus one publish). The broadcast's store time runs from its publish to its frame (sent after its
last chunk). Printed: the broadcast time and rows stored, per-user p50/p99/max without and during it, and
the load average beside each figure (target: 100,000 users within 6 s, p99 during it <= 100 ms).

    .venv/bin/python -m bench.broadcast [--users 100000] [--rate 200] [--seconds 5]
        [--chunk-sizes default,500,1000,2000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field

import aio_pika
import asyncpg
import orjson

from herald_ops.testing.measure import load_average, percentile, produce_timestamped
from herald_ops.testing.stack import Stack, fresh_id, stack_context
from shared.topology import Topology

TOPOLOGY = Topology()
TICK = 0.005  # the producer publishes every 5 ms the events that the rate calls for by then
GRACE = 10.0


@dataclass
class Receipts:
    """Latencies (ms) of the current run's events by event id, and when the broadcast's frame came."""

    run: str = ""
    latencies: dict[str, float] = field(default_factory=dict)
    broadcast_done: asyncio.Event = field(default_factory=asyncio.Event)
    broadcast_at: float = 0.0

    def frame(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        data = orjson.loads(message.body)["params"].get("data") or {}
        if data.get("run") == self.run:
            self.latencies[data["event"]] = (time.perf_counter() - data["sent"]) * 1000

    def broadcast(self, _: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.broadcast_at = time.perf_counter()
        self.broadcast_done.set()


async def produce(
    channel: aio_pika.abc.AbstractChannel, users: list[str], rate: int, until: asyncio.Event, run: str
) -> int:
    """Publish ``rate`` events/s until ``until`` is set; return how many were published."""
    raw = await channel.get_underlay_channel()
    return await produce_timestamped(
        raw, TOPOLOGY.events_exchange, users, rate, run, tick=TICK, keep_going=lambda _: not until.is_set()
    )


async def stream(
    channel: aio_pika.abc.AbstractChannel,
    users: list[str],
    rate: int,
    until: asyncio.Event,
    receipts: Receipts,
) -> list[float]:
    """Stream events until ``until``; the latencies of those whose frame came within the grace time."""
    receipts.run, receipts.latencies = fresh_id("run"), {}
    expected = await produce(channel, users, rate, until, receipts.run)
    deadline = time.perf_counter() + GRACE
    while len(receipts.latencies) < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    if len(receipts.latencies) < expected:
        print(f"    {expected - len(receipts.latencies)} of {expected} events got no frame", flush=True)
    return list(receipts.latencies.values())


def summary(latencies: list[float]) -> str:
    return (
        f"{len(latencies):5d} events: p50 {percentile(latencies, 0.5):7.1f} ms, "
        f"p99 {percentile(latencies, 0.99):7.1f} ms, max {max(latencies, default=0):7.1f} ms"
    )


async def measure(stack: Stack, args: argparse.Namespace, chunk_size: str) -> None:
    overrides = {} if chunk_size == "default" else {"broadcast_chunk_size": int(chunk_size)}
    worker = stack.start_worker(**overrides)
    receipts = Receipts()
    connection = await aio_pika.connect(stack.amqp_url)
    database = await asyncpg.connect(stack.database_url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        users = [f"user-{n:06d}" for n in random.Random(1).sample(range(args.users), args.streaming_users)]
        frames = await channel.declare_queue(exclusive=True)
        for user in users:
            await frames.bind(TOPOLOGY.users_exchange, routing_key=user)
        await frames.consume(receipts.frame, no_ack=True)
        broadcasts = await channel.declare_queue(exclusive=True)
        await broadcasts.bind(TOPOLOGY.broadcast_exchange)
        await broadcasts.consume(receipts.broadcast, no_ack=True)

        elapsed = asyncio.Event()
        asyncio.get_running_loop().call_later(args.seconds, elapsed.set)
        quiet = await stream(channel, users, args.rate, elapsed, receipts)
        print(f"  chunk {chunk_size:>7}: without a broadcast  {summary(quiet)}; load {load_average():.1f}")

        key = fresh_id("broadcast")
        receipts.broadcast_done.clear()
        body = {"event_id": key, "type": "SYSTEM_ANNOUNCEMENT", "title": "Maintenance", "message": "Tonight"}
        started = time.perf_counter()
        events = await channel.get_exchange(TOPOLOGY.events_exchange)
        await events.publish(
            aio_pika.Message(orjson.dumps(body), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="notification.broadcast",
        )
        during = await stream(channel, users, args.rate, receipts.broadcast_done, receipts)
        seconds = receipts.broadcast_at - started
        rows = await database.fetchval("SELECT count(*) FROM notifications WHERE idempotency_key = $1", key)
        print(f"  chunk {chunk_size:>7}: during the broadcast {summary(during)}; load {load_average():.1f}")
        met = "met" if seconds <= 6 and percentile(during, 0.99) <= 100 else "MISSED"
        print(
            f"  chunk {chunk_size:>7}: broadcast to {rows:,} users stored in {seconds:.2f} s "
            f"(target <= 6 s with p99 during it <= 100 ms: {met}); load {load_average():.1f}",
            flush=True,
        )
    finally:
        await database.close()
        await connection.close()
        worker.stop()


async def run(stack: Stack, args: argparse.Namespace) -> None:
    database = await asyncpg.connect(stack.database_url)
    try:
        await database.execute(
            """INSERT INTO users (user_id)
               SELECT 'user-' || lpad(n::text, 6, '0') FROM generate_series(0, $1) n""",
            args.users - 1,
        )
        await database.execute("VACUUM ANALYZE users")
    finally:
        await database.close()
    print(
        f"{args.users:,} known users; {args.rate} ev/s to {args.streaming_users} of them, "
        f"{args.seconds:.0f} s without a broadcast, then during one",
        flush=True,
    )
    for chunk_size in args.chunk_sizes:
        await measure(stack, args, chunk_size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="known users the broadcast reaches")
    parser.add_argument("--streaming-users", type=int, default=1000, help="users the per-user events go to")
    parser.add_argument("--rate", type=int, default=200, help="per-user events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="the stream without a broadcast")
    parser.add_argument(
        "--chunk-sizes",
        type=lambda text: text.split(","),
        default=["default"],
        help="comma-separated HERALD_BROADCAST_CHUNK_SIZE values, 'default' for the worker's own",
    )
    arguments = parser.parse_args()
    # The stack is made outside the event loop: creating it runs the migrations with asyncio.run.
    with stack_context("herald_bench") as bench_stack:
        asyncio.run(run(bench_stack, arguments))
