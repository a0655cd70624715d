"""Dead letters: how fast a real worker dead-letters a burst of invalid events, and how fast
``herald dlq`` lists, replays and purges them.

Starts its own vhost + database and one worker, publishes ``--events`` invalid events (no recipient),
waits until all are in ``herald.events.dead``, then times ``list`` (peek, nothing removed), ``replay``
(the worker dead-letters the replayed copies again) and ``purge``. Prints one line per step.

    .venv/bin/python -m bench.dlq [--events 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika

from herald_ops.dlq import Selection, list_dead_letters, purge, replay
from herald_ops.testing.stack import rabbitmqctl, stack_context, wait_until
from shared.topology import SEND_ROUTING_KEY, Topology

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack

TOPOLOGY = Topology()


def dead_letters(stack: Stack) -> int:
    out = rabbitmqctl("list_queues", "-p", stack.name, "--no-table-headers", "name", "messages").stdout
    rows = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    return int(rows.get(TOPOLOGY.dead_letter_queue, 0))


def report(step: str, count: int, seconds: float) -> None:
    print(f"{step:<34} {count:>6} in {seconds:6.2f} s = {count / seconds:>7.0f}/s")


async def run(stack: Stack, events: int) -> None:
    stack.start_worker()
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(TOPOLOGY.events_exchange)
        started = time.perf_counter()
        for n in range(events):
            message = aio_pika.Message(b'{"type": "NEW_COMMENT", "title": "t"}', message_id=f"bad-{n}")
            await exchange.publish(message, routing_key=SEND_ROUTING_KEY)
        await wait_until(lambda: dead_letters(stack) == events, 300, "every event dead-lettered")
        report("publish + worker dead-letters", events, time.perf_counter() - started)
    finally:
        await connection.close()

    started = time.perf_counter()
    listed = await list_dead_letters(stack.amqp_url, TOPOLOGY, Selection(limit=events))
    report("dlq list (peek)", len(listed), time.perf_counter() - started)

    started = time.perf_counter()
    replayed, _ = await replay(stack.amqp_url, TOPOLOGY, Selection())
    report("dlq replay (confirmed)", len(replayed), time.perf_counter() - started)
    await wait_until(lambda: dead_letters(stack) == events, 300, "replayed copies dead-lettered again")
    report("  … and dead-lettered again", events, time.perf_counter() - started)

    started = time.perf_counter()
    purged = await purge(stack.amqp_url, TOPOLOGY, Selection(reason="user_id"))
    report("dlq purge --reason (walk + ack)", purged, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"bench.dlq: {args.events} invalid events, load average {load}")
    with stack_context("herald_bench") as stack:
        asyncio.run(run(stack, args.events))


if __name__ == "__main__":
    main()
