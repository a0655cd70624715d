"""Scale-out on one machine: 2 workers and 2 gateways, each user's connections spread over both gateways.

Every notification reaches every connection of its user exactly once, and each
user's ``seq`` values are gap-free (1..N) however the two workers interleaved their commits. Connections
are raw WebSocket clients (no client-side de-duplication), so a duplicate or a loss shows as it happened.

The rolling-upgrade test restarts the gateways one at a time while events keep coming (docs/operations.md,
"Zero-downtime upgrades"): the Python client reconnects after 1001 and syncs, so every client ends with
every notification once and a gap-free watermark.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from herald_client.client import HeraldClient
from herald_client.producer import Producer
from herald_ops.testing.gateway import call, open_client, recv_json
from herald_ops.testing.stack import TEST_JWT_SECRET, http_get, queue_depth, wait_until
from shared.tokens import mint_token

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from herald_client.client import Event
    from herald_ops.testing.stack import HeraldProcess, Stack

USERS = 10
EVENTS_PER_USER = 30
MULTI_RECIPIENT_EVENTS = 5  # each addressed to every user at once (user_ids), on top of the above
# Connections per user and the gateway of each: (0, 1) = one on each; (0, 0, 1) = two on the first, etc.
LAYOUTS = [(0, 1), (0, 0, 1), (1, 1, 0), (0, 1, 1, 0)]


@dataclass
class Connection:
    """One raw WebSocket connection and the ``notification:new`` params it received."""

    user: str
    gateway: int
    ws: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)

    async def read_until(self, marker_id: str, timeout: float) -> None:
        """Collect frames until the one with ``marker_id`` (sent after everything else) arrives."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await recv_json(self.ws, timeout)
                if frame.get("method") != "notification:new":
                    self.others.append(frame)
                    continue
                self.received.append(frame["params"])
                if frame["params"]["title"] == marker_id:
                    return


def stored_events(worker: HeraldProcess) -> float:
    """The worker's ``herald_worker_events_total{outcome="stored"}``."""
    _, body = http_get(f"{worker.url}/metrics")
    match = re.search(rb'^herald_worker_events_total\{outcome="stored"\} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_two_workers_two_gateways_deliver_once_without_gaps(fresh_stack: Stack) -> None:
    stack = fresh_stack
    # Small prefetch and batches so both workers take part and their commits interleave per user.
    workers = [stack.start_worker(prefetch=20, batch_size=10) for _ in range(2)]
    gateways = [stack.start_gateway() for _ in range(2)]
    run = uuid.uuid4().hex[:6]
    users = [f"scale-{run}-{n}" for n in range(USERS)]

    connections: list[Connection] = []
    for index, user in enumerate(users):
        for gateway in LAYOUTS[index % len(LAYOUTS)]:
            ws, params = await open_client(gateways[gateway], user)
            assert params["user_id"] == user
            connections.append(Connection(user, gateway, ws))
    assert {c.gateway for c in connections} == {0, 1}

    try:
        async with Producer(stack.amqp_url) as producer:
            sends = [
                producer.send(user, "NEW_COMMENT", f"{user}/{n}", event_id=f"{user}-{n}")
                for user in users
                for n in range(EVENTS_PER_USER)
            ]
            sends += [
                producer.send(users, "NEW_REPLY", f"all/{n}", event_id=f"all-{run}-{n}")
                for n in range(MULTI_RECIPIENT_EVENTS)
            ]
            await asyncio.gather(*sends)
            # Once the queue is empty every frame has been published (workers ack after publishing);
            # a last notification per user then travels behind them through each gateway's queue.
            await wait_until(lambda: queue_depth(stack.name, "herald.events") == 0, 60, "events consumed")
            await asyncio.gather(*(producer.send(u, "NEW_COMMENT", f"marker-{u}") for u in users))
        await asyncio.gather(*(c.read_until(f"marker-{c.user}", 60) for c in connections))

        expected = EVENTS_PER_USER + MULTI_RECIPIENT_EVENTS + 1
        for c in connections:
            ids = Counter(item["id"] for item in c.received)
            assert not [i for i, n in ids.items() if n > 1], f"{c.user}@gateway{c.gateway} got duplicates"
            titles = {item["title"] for item in c.received}
            assert titles == {f"{c.user}/{n}" for n in range(EVENTS_PER_USER)} | {
                f"all/{n}" for n in range(MULTI_RECIPIENT_EVENTS)
            } | {f"marker-{c.user}"}, f"{c.user}@gateway{c.gateway} missed or got foreign notifications"
            seqs = sorted(item["seq"] for item in c.received)
            assert seqs == list(range(1, expected + 1)), f"{c.user}: seq has gaps or repeats: {seqs}"

        # Every connection of a user saw the same notifications (same ids and seqs).
        by_user: dict[str, set[tuple[str, int]]] = {}
        for c in connections:
            seen = {(item["id"], item["seq"]) for item in c.received}
            assert by_user.setdefault(c.user, seen) == seen

        # The store agrees, and `sync` through either gateway returns the same gap-free history.
        pg = await asyncpg.connect(stack.database_url)
        try:
            rows = await pg.fetch(
                "SELECT user_id, count(*) AS n, max(seq) AS top, min(seq) AS low FROM notifications "
                "WHERE user_id = ANY($1) GROUP BY user_id",
                users,
            )
        finally:
            await pg.close()
        assert {(r["user_id"], r["n"], r["low"], r["top"]) for r in rows} == {
            (u, expected, 1, expected) for u in users
        }
        for c in connections[:4]:
            reply = await call(c.ws, "notifications.sync", {"since": 0, "limit": 500})
            items = reply["result"]["items"]
            assert [item["seq"] for item in items] == list(range(1, expected + 1))
            assert {(item["id"], item["seq"]) for item in items} == by_user[c.user]

        # Both workers did part of the work.
        assert all(stored_events(worker) > 0 for worker in workers)
    finally:
        await asyncio.gather(*(c.ws.close() for c in connections), return_exceptions=True)


async def test_rolling_gateway_restart_loses_nothing(fresh_stack: Stack) -> None:
    stack = fresh_stack
    stack.start_worker()
    gateways = [stack.start_gateway() for _ in range(2)]
    run = uuid.uuid4().hex[:6]
    users = [f"roll-{run}-{n}" for n in range(4)]
    delivered: dict[tuple[str, int], list[Event]] = {}
    clients: list[tuple[str, int, HeraldClient]] = []
    for user in users:
        for index, gateway in enumerate(gateways):
            client = HeraldClient(
                gateway.ws_url,
                lambda user=user: mint_token(TEST_JWT_SECRET, user),
                backoff_base=0.05,
                backoff_max=0.5,
            )
            received = delivered.setdefault((user, index), [])
            client.on("notification:new", received.append)
            await client.start()
            clients.append((user, index, client))

    sent = 0

    async def publish_round(producer: Producer) -> None:
        nonlocal sent
        await asyncio.gather(
            *(
                producer.send(u, "NEW_COMMENT", f"n{sent + n}", event_id=f"{u}-{sent + n}")
                for u in users
                for n in range(5)
            )
        )
        sent += 5

    try:
        async with Producer(stack.amqp_url) as producer:
            await publish_round(producer)
            for index, gateway in enumerate(gateways):
                # One gateway at a time: SIGTERM (clients get 1001), events while it is gone, back up.
                assert gateway.stop() == 0
                await wait_until(
                    lambda index=index: all(c.state != "open" for _, i, c in clients if i == index),
                    15,
                    f"clients of gateway {index} disconnected",
                )
                await publish_round(producer)
                gateway.launch()
                await publish_round(producer)

        def complete() -> bool:
            return all(len(received) >= sent for received in delivered.values())

        await wait_until(complete, 30, "every client has every notification")
        for (user, index), received in delivered.items():
            ids = [event.params["id"] for event in received]
            assert len(ids) == len(set(ids)) == sent, (
                f"{user}@gateway{index}: {len(ids)} delivered, {sent} sent"
            )
            assert {event.params["title"] for event in received} == {f"n{n}" for n in range(sent)}
            # What was published while its gateway was down came back through notifications.sync.
            assert any(event.replayed for event in received), f"{user}@gateway{index} never synced"
        for _, _, client in clients:
            assert client.watermark == sent
    finally:
        await asyncio.gather(*(client.close() for _, _, client in clients), return_exceptions=True)
