"""Events are counted once each, by what became of them (docs/operations.md, herald_worker_events_total)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import orjson

from herald_ops.testing.stack import http_get, wait_until
from shared.topology import SEND_ROUTING_KEY, Topology
from worker.metrics import EVENT_OUTCOMES

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack

OUTCOME = re.compile(rb'^herald_worker_events_total\{outcome="(\w+)"\} ([0-9.]+)$', re.M)


def outcomes(url: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in OUTCOME.findall(http_get(f"{url}/metrics")[1])}


def test_an_idle_worker_exports_every_outcome_and_the_database_up(fresh_stack: Stack) -> None:
    """Before its first event: what the alerts read (HeraldNoWorkerConsuming's ``absent()``,
    HeraldDatabaseDown's ``== 0``) says that a worker runs and reaches Postgres."""
    worker = fresh_stack.start_worker()
    assert outcomes(worker.url) == dict.fromkeys(EVENT_OUTCOMES, 0.0)
    assert re.search(rb"^herald_worker_database_up 1\.0$", http_get(f"{worker.url}/metrics")[1], re.M)


async def test_each_event_is_counted_once_by_outcome(fresh_stack: Stack) -> None:
    worker = fresh_stack.start_worker()
    connection = await aio_pika.connect_robust(fresh_stack.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(Topology().events_exchange)
        repeated = {"event_id": "k1", "user_id": "m1", "type": "NEW_REPLY", "title": "Replied"}
        muted = {"user_id": "m1", "type": "NEW_REPLY", "title": "No channel", "channels": ["push"]}
        await turn_push_off(fresh_stack, "m1")
        for body in (repeated, repeated, repeated, muted):
            await exchange.publish(aio_pika.Message(orjson.dumps(body)), routing_key=SEND_ROUTING_KEY)

        def settled() -> bool:
            return sum(outcomes(worker.url).values()) >= 4

        await wait_until(settled, 30, "four events settled")
        counted = {k: v for k, v in outcomes(worker.url).items() if v}
        assert counted == {"stored": 1.0, "duplicate": 2.0, "muted": 1.0}
    finally:
        await connection.close()


async def turn_push_off(stack: Stack, user: str) -> None:
    """So that an event asking for push only reaches no channel of ``user``."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user)
        await conn.execute(
            "INSERT INTO user_preferences (user_id, channels) VALUES ($1, '{\"push\": false}')", user
        )
    finally:
        await conn.close()
