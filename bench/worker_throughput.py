"""Worker throughput, side by side in one run on the same queue.

Variants, each on the same ``herald.events`` quorum queue pre-loaded with persistent events while
nothing consumes it:

1. ceiling — a bare FastStream subscriber that only acks (manual ack, same prefetch, uvloop);
2. worker, one event at a time — ``herald-worker`` with ``HERALD_BATCH_SIZE=1``;
3. worker, batched — ``herald-worker`` with the configured batch size (default 200), ``NEW_COMMENT``
   events (in-app only: one frame each);
4. the same with ``COURSE_NEW_CONTENT`` events for users whose preferences turn email on (push is on by
   default): one frame and two email/push jobs per event, recorded in ``delivery_jobs`` in the batch's
   transaction (targets: >= 85 % of variant 3, >= 90 % of the ceiling);
5. variant 3 with ``HERALD_CONFIRM_FRAMES=true`` (live frames wait for publisher confirms), for the
   trade-off discussed in docs/design.md.

A worker run counts as done when every event is stored (rows in Postgres) *and* published (frames in a
queue bound to ``herald.users`` for every recipient), and its jobs recorded. Time starts
when the consumer starts (the ceiling's ``broker.start()``, the worker's ``/readyz``). Runs on its own
vhost and database; bounded by ``--events``.

    .venv/bin/python bench/worker_throughput.py [--events 20000] [--single-events 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aio_pika
import asyncpg
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker

from herald_ops.testing.measure import batch_totals, cpu_seconds
from herald_ops.testing.stack import Stack, create_stack, destroy_stack
from shared.topology import Topology
from worker.amqp import events_exchange, events_queue

DELIVERY_LIMIT = 20
CEILING = "bare FastStream consume + ack (ceiling)"
SINGLE = "worker, one event at a time (batch 1)"
BATCHED = {False: "worker, batched", True: "worker, batched, frames confirmed"}
WITH_JOBS = "worker, batched, email + push on"
IN_APP_TYPE = "NEW_COMMENT"
JOBS_TYPE = "COURSE_NEW_CONTENT"
TOPOLOGY = Topology()


async def preload(
    stack: Stack, events: int, users: int, tag: str, notification_type: str = IN_APP_TYPE
) -> None:
    """Publish ``events`` persistent send events (confirmed) into the input queue."""
    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(TOPOLOGY.events_exchange)
        window = 500
        for start in range(0, events, window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            orjson.dumps(
                                {
                                    "event_id": f"{tag}-{i}",
                                    "user_id": f"user-{i % users}",
                                    "type": notification_type,
                                    "title": f"Lesson {i}",
                                    "message": "A new lesson is available",
                                    "data": {"courseId": "42", "lessonId": str(i)},
                                }
                            ),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key="notification.send",
                    )
                    for i in range(start, min(start + window, events))
                )
            )


async def declare(stack: Stack, users: int) -> None:
    """The input queue (as the worker declares it) and a frames queue bound for every recipient."""
    broker = RabbitBroker(stack.amqp_url, logger=None)
    await broker.connect()
    exchange = await broker.declare_exchange(events_exchange(TOPOLOGY))
    queue = await broker.declare_queue(events_queue(TOPOLOGY, DELIVERY_LIMIT))
    await queue.bind(exchange, routing_key="notification.#")
    await broker.stop()
    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        users_exchange = await channel.declare_exchange(
            TOPOLOGY.users_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        frames = await channel.declare_queue("bench.frames", durable=False, auto_delete=False)
        for i in range(users):
            await frames.bind(users_exchange, routing_key=f"user-{i}")
    pg = await asyncpg.connect(stack.database_url)
    try:
        # Email on for the type with jobs (push is on by its catalog default).
        user_ids = [f"user-{i}" for i in range(users)]
        await pg.execute("INSERT INTO users (user_id) SELECT unnest($1::text[])", user_ids)
        await pg.execute(
            "INSERT INTO user_preferences (user_id, types) SELECT unnest($1::text[]), $2::jsonb",
            user_ids,
            orjson.dumps({JOBS_TYPE: {"email": True, "push": True}}).decode(),
        )
    finally:
        await pg.close()


async def waiting(channel: aio_pika.abc.AbstractChannel, queue_name: str) -> int:
    queue = await channel.declare_queue(queue_name, passive=True)
    count: int = queue.declaration_result.message_count or 0
    return count


async def purge_outputs(stack: Stack) -> None:
    connection = await aio_pika.connect(stack.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("bench.frames", passive=True)
        await queue.purge()


async def ceiling(stack: Stack, events: int, prefetch: int) -> tuple[float, float]:
    """Events/s of a bare FastStream consume-and-ack loop, and its CPU ms per 1,000 events."""
    await preload(stack, events, 1, "ceiling")
    broker = RabbitBroker(stack.amqp_url, logger=None)
    done = asyncio.Event()
    seen = 0

    @broker.subscriber(
        events_queue(TOPOLOGY, DELIVERY_LIMIT),
        events_exchange(TOPOLOGY),
        channel=Channel(prefetch_count=prefetch),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
    )
    async def consume() -> None:
        nonlocal seen
        await broker.context.get_local("message").ack()
        seen += 1
        if seen == events:
            done.set()

    started, cpu = time.perf_counter(), time.process_time()
    await broker.start()
    await done.wait()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await broker.stop()
    print(f"  ceiling: {events / elapsed:,.0f} events/s, load average {os.getloadavg()[0]:.1f}", flush=True)
    return events / elapsed, cpu * 1e6 / events


async def worker_run(
    stack: Stack,
    events: int,
    users: int,
    tag: str,
    notification_type: str = IN_APP_TYPE,
    **settings: object,
) -> tuple[float, float]:
    """Events/s of a worker process until every event is stored and its frame (and jobs) published, and
    the worker's CPU ms per 1,000 events (robust to other load on the machine, unlike events/s)."""
    jobs = 2 * events if notification_type == JOBS_TYPE else 0
    await preload(stack, events, users, tag, notification_type)
    pg = await asyncpg.connect(stack.database_url)
    before = await pg.fetchval("SELECT coalesce(sum(last_seq), 0) FROM users")
    jobs_before = await pg.fetchval("SELECT count(*) FROM delivery_jobs")
    await purge_outputs(stack)
    amqp = await aio_pika.connect(stack.amqp_url)
    channel = await amqp.channel()
    process = stack.start_worker(**settings)
    assert process.popen is not None
    print(f"  {tag}: worker pid {process.popen.pid}", flush=True)  # for a profiler to attach
    started, cpu = time.perf_counter(), cpu_seconds(process.popen.pid)
    try:
        while True:
            # Cheap polls (the bench shares the two cores): the frame count first, rows only after (the
            # jobs are committed with their rows).
            if await waiting(channel, "bench.frames") >= events:
                stored = await pg.fetchval("SELECT sum(last_seq) FROM users") - before
                recorded = await pg.fetchval("SELECT count(*) FROM delivery_jobs") - jobs_before
                if stored >= events and recorded >= jobs:
                    break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(process.popen.pid) - cpu
        store, batches, batched = batch_totals(f"{process.url}/metrics")
        batches = max(batches, 1)
        print(
            f"  {tag}: {events / elapsed:,.0f} events/s, {cpu * 1e6 / events:,.0f} CPU ms per 1,000,"
            f" {batches:,.0f} batches of {batched / batches:.0f} events, {store * 1000 / batches:.1f} ms each"
            f" to store (of {elapsed * 1000 / batches:.1f} ms per batch),"
            f" load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    finally:
        process.stop()
        stack.processes.remove(process)
        await pg.close()
        await amqp.close()
    return events / elapsed, cpu * 1e6 / events


async def one_round(stack: Stack, args: argparse.Namespace, round_: int) -> dict[str, tuple[float, float]]:
    """Every variant once, in order; (events/s, CPU ms per 1,000 events) by variant name."""
    results = {CEILING: await ceiling(stack, args.events, args.prefetch)}
    results[SINGLE] = await worker_run(
        stack, args.single_events, args.users, f"single-{round_}", batch_size=1, prefetch=args.prefetch
    )
    batched = {"batch_size": args.batch_size, "prefetch": args.prefetch}
    results[BATCHED[False]] = await worker_run(stack, args.events, args.users, f"batched-{round_}", **batched)
    results[WITH_JOBS] = await worker_run(
        stack, args.events, args.users, f"jobs-{round_}", JOBS_TYPE, **batched
    )
    if args.confirmed:
        results[BATCHED[True]] = await worker_run(
            stack, args.events, args.users, f"confirmed-{round_}", confirm_frames="true", **batched
        )
    return results


async def run_all(stack: Stack, args: argparse.Namespace) -> list[dict[str, tuple[float, float]]]:
    await declare(stack, args.users)
    return [await one_round(stack, args, i) for i in range(args.rounds)]


def main(args: argparse.Namespace) -> None:
    stack = create_stack("herald_bench")
    try:
        report(uvloop.run(run_all(stack, args)), args)  # before the teardown, which a loaded broker may slow
    finally:
        destroy_stack(stack)


def report(rounds: list[dict[str, tuple[float, float]]], args: argparse.Namespace) -> None:
    # The machine is shared: medians over the rounds; a ratio is taken within a round (its variants ran
    # back to back, under similar load). CPU per event barely depends on the load: compare those too.
    counts = dict.fromkeys(rounds[0], args.events) | {SINGLE: args.single_events}
    print(
        f"{'variant':<38} {'events':>7} {'events/s':>9} {'of ceiling':>11} {'CPU ms/1k ev':>13}"
        f"   (median of {args.rounds} rounds)"
    )
    for name, count in counts.items():
        rate = statistics.median(r[name][0] for r in rounds)
        ratio = statistics.median(r[name][0] / r[CEILING][0] for r in rounds)
        cpu = statistics.median(r[name][1] for r in rounds)
        print(f"{name:<38} {count:>7} {rate:>9,.0f} {ratio:>10.0%} {cpu:>13,.0f}")
    with_jobs = statistics.median(r[WITH_JOBS][0] / r[BATCHED[False]][0] for r in rounds)
    print(f"email + push on: {with_jobs:.0%} of the in-app-only rate (median of per-round ratios)")
    print("load average (1, 5, 15 min): " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))
    if args.rounds > 1:
        print("events/s per round:", "; ".join(", ".join(f"{v[0]:,.0f}" for v in r.values()) for r in rounds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--single-events", type=int, default=3_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--confirmed", action="store_true", help="also run with HERALD_CONFIRM_FRAMES=true")
    main(parser.parse_args())
