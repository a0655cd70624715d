"""Chaos scenarios shared by ``tests/fault/test_chaos.py`` (small, bounded) and ``bench/chaos.py`` (the
bigger figures): events stream to connected Python clients while a fault is injected, then every figure
an operator asks for is counted.

A scenario: one worker, two gateways, ``clients`` Python clients (one user each, all connected to the
first gateway and given the second as failover), ``events`` send events spread over the users at
``rate`` per second; at half-way ``fault`` runs. The recovery times are taken while the stream goes
on, from the moment the faulty part is back: every surviving gateway ready (``gateway_links_up``), and
every client holding every notification its user had stored by then (``clients_complete``, live or by
``notifications.sync``). After the stream it waits until every client holds every notification of its
user or the deadline passes, and returns a :class:`Figures` with the whole accounting.

Faults stop the machine's RabbitMQ and Postgres: nothing else may use them meanwhile (the fault suite
runs last, serially), and the fault always restores what it stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import orjson

from herald_client.client import HeraldClient
from herald_ops.testing.stack import fresh_id, http_status, mint, rabbitmqctl, wait_until
from shared.topology import Topology

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from herald_client.events import Event
    from herald_ops.testing.stack import HeraldProcess, Stack

PG_CLUSTER = ("15", "main")
TOPOLOGY = Topology()


@dataclass
class Figures:
    """What one scenario sent, stored and delivered, and how fast it recovered (seconds)."""

    scenario: str
    sent: int = 0
    stored: int = 0
    delivered_live: int = 0
    delivered_by_sync: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        times = " ".join(f"{name}={value:.2f}s" for name, value in self.recovery.items())
        return (
            f"{self.scenario}: sent={self.sent} stored={self.stored} live={self.delivered_live} "
            f"sync={self.delivered_by_sync} lost={self.lost} duplicated={self.duplicated} {times}"
        )


class _Inbox:
    """One client's notifications by id, counting live and synced deliveries."""

    def __init__(self, client: HeraldClient) -> None:
        self.client = client
        self.ids: Counter[str] = Counter()
        self.live = self.synced = 0
        self.connected_at: list[float] = []
        client.on("notification:new", self._on_new)
        client.on("connected", lambda _: self.connected_at.append(time.monotonic()))

    def reconnected_after(self, moment: float) -> float:
        """Seconds from ``moment`` to this client's first ``connected`` after it (0 if it never dropped)."""
        later = [at for at in self.connected_at if at >= moment]
        return later[0] - moment if later and len(self.connected_at) > 1 else 0.0

    def _on_new(self, event: Event) -> None:
        self.ids[event.params["id"]] += 1
        if event.replayed:
            self.synced += 1
        else:
            self.live += 1


def restart_rabbitmq(outage: float) -> Callable[[list[HeraldProcess]], Awaitable[float]]:
    """``rabbitmqctl stop_app``, ``outage`` seconds, ``start_app``; returns when the app is back."""

    async def fault(gateways: list[HeraldProcess]) -> float:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        try:
            await asyncio.sleep(outage)
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        return time.monotonic()

    return fault


def restart_postgres() -> Callable[[list[HeraldProcess]], Awaitable[float]]:
    """``pg_ctlcluster … restart`` (fast shutdown, then start)."""

    async def fault(gateways: list[HeraldProcess]) -> float:
        argv = ["pg_ctlcluster", "--skip-systemctl-redirect", *PG_CLUSTER, "restart", "-m", "fast"]
        await asyncio.to_thread(subprocess.run, argv, check=True, timeout=120)
        return time.monotonic()

    return fault


async def run_scenario(
    stack: Stack,
    name: str,
    fault: Callable[[list[HeraldProcess]], Awaitable[float]],
    *,
    clients: int,
    events: int,
    rate: float,
    deadline: float = 120.0,
) -> Figures:
    """Run one scenario on ``stack`` (see the module docstring); ``fault`` gets the gateways and returns
    the monotonic time the faulty part came back."""
    stack.start_worker()
    gateways = [stack.start_gateway(), stack.start_gateway()]
    users = [fresh_id("c") for _ in range(clients)]
    inboxes: list[_Inbox] = []
    figures = Figures(name)
    urls = [gateway.ws_url for gateway in gateways]  # all start on the first; the second is the failover
    for user in users:
        client = HeraldClient(urls, functools.partial(mint, user), backoff_base=0.2, backoff_max=2.0)
        inboxes.append(_Inbox(client))
    await asyncio.gather(*(inbox.client.start() for inbox in inboxes))
    try:
        streaming = asyncio.create_task(_stream(stack, users, events, rate))
        back = await _fault_at_half(fault, gateways, events, rate)
        await asyncio.gather(
            _wait_links(gateways, figures, back), _wait_caught_up(stack, inboxes, figures, back, deadline)
        )
        figures.sent = await streaming
        await _wait_complete(stack, inboxes, figures, back, deadline)
    finally:
        await asyncio.gather(*(inbox.client.close() for inbox in inboxes), return_exceptions=True)
    return figures


async def _fault_at_half(
    fault: Callable[[list[HeraldProcess]], Awaitable[float]],
    gateways: list[HeraldProcess],
    events: int,
    rate: float,
) -> float:
    await asyncio.sleep(events / rate / 2)
    return await fault(gateways)


async def _stream(stack: Stack, users: list[str], events: int, rate: float) -> int:
    """Publish ``events`` confirmed send events at ``rate``/s, round robin over ``users``; a publish that
    fails while the broker is down is retried on a new connection (so every event is sent once)."""
    sent = 0
    started = time.monotonic()
    connection: aio_pika.abc.AbstractConnection | None = None
    while sent < events:
        try:
            if connection is None or connection.is_closed:
                connection = await aio_pika.connect(stack.amqp_url)
                exchange = await (await connection.channel()).get_exchange(TOPOLOGY.events_exchange)
            body = {
                "event_id": f"chaos-{sent}",
                "user_id": users[sent % len(users)],
                "type": "COURSE_UPDATE",
                "title": f"event {sent}",
            }
            await exchange.publish(
                aio_pika.Message(orjson.dumps(body), delivery_mode=2), routing_key="notification.send"
            )
            sent += 1
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError, RuntimeError):
            connection = None
            await asyncio.sleep(0.2)
            continue
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    if connection is not None:
        await connection.close()
    return sent


async def _wait_links(gateways: list[HeraldProcess], figures: Figures, back: float) -> None:
    alive = [g for g in gateways if g.popen is not None and g.popen.poll() is None]
    await wait_until(lambda: all(http_status(f"{g.url}/readyz") == 200 for g in alive), 60, "gateway links")
    figures.recovery["gateway_links_up"] = time.monotonic() - back


async def _stored_by_user(stack: Stack) -> dict[str, set[str]]:
    """Every stored notification id, by user (one connection, which may fail while Postgres restarts)."""
    got: list[dict[str, set[str]]] = []

    async def read() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            pg = await asyncpg.connect(stack.database_url)
            try:
                by_user: dict[str, set[str]] = {}
                for row in await pg.fetch("SELECT user_id, id FROM notifications"):
                    by_user.setdefault(row["user_id"], set()).add(row["id"])
                got.append(by_user)
            finally:
                await pg.close()
        return bool(got)

    await wait_until(read, 60, "the stored notifications")
    return got[0]


def _holds(inboxes: list[_Inbox], expected: dict[str, set[str]]) -> bool:
    return all(expected.get(i.client.user_id or "", set()) <= set(i.ids) for i in inboxes)


async def _wait_caught_up(
    stack: Stack, inboxes: list[_Inbox], figures: Figures, back: float, deadline: float
) -> None:
    """``clients_complete``: until every client holds what its user had stored when the fault ended."""
    expected = await _stored_by_user(stack)
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: _holds(inboxes, expected), deadline, "every client caught up")
    figures.recovery["clients_complete"] = time.monotonic() - back


async def _wait_complete(
    stack: Stack, inboxes: list[_Inbox], figures: Figures, back: float, deadline: float
) -> None:
    pg = await asyncpg.connect(stack.database_url)
    try:
        await wait_until(lambda: _stored(pg, figures.sent), deadline, "every event stored")
        rows = await pg.fetch("SELECT user_id, id, idempotency_key FROM notifications")
        expected: dict[str, set[str]] = {}
        for row in rows:
            expected.setdefault(row["user_id"], set()).add(row["id"])
        figures.stored = len({row["idempotency_key"] for row in rows})
        figures.duplicated = len(rows) - figures.stored  # stored twice (clients also drop repeats by id)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: _holds(inboxes, expected), deadline, "every client complete")
        for inbox in inboxes:
            mine = expected.get(inbox.client.user_id or "", set())
            figures.lost += len(mine - set(inbox.ids))
            figures.duplicated += sum(count - 1 for count in inbox.ids.values() if count > 1)
            figures.delivered_live += inbox.live
            figures.delivered_by_sync += inbox.synced
        figures.recovery["clients_reconnected"] = max(i.reconnected_after(back) for i in inboxes)
    finally:
        await pg.close()


async def _stored(pg: asyncpg.Connection, count: int) -> bool:
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        return bool(await pg.fetchval("SELECT count(*) FROM notifications") >= count)
    return False


def describe(figures: Figures) -> dict[str, Any]:
    """The figures as a JSON-ready dict (``bench/chaos.py --json``)."""
    return {
        "scenario": figures.scenario,
        "sent": figures.sent,
        "stored": figures.stored,
        "delivered_live": figures.delivered_live,
        "delivered_by_sync": figures.delivered_by_sync,
        "lost": figures.lost,
        "duplicated": figures.duplicated,
        "recovery_seconds": figures.recovery,
    }


def kill_gateway() -> Callable[[list[HeraldProcess]], Awaitable[float]]:
    """SIGKILL the first gateway: its clients reconnect onto the second on their own."""

    async def fault(gateways: list[HeraldProcess]) -> float:
        gateways[0].kill()
        return time.monotonic()

    return fault
