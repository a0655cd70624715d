"""The gateway's AMQP link: connection supervision, its queue, per-user topology, frame intake.

Per process: one exclusive, server-named queue bound to ``herald.broadcast`` and to ``herald.user.<id>``
of every locally connected user. Attaching a user (PROTOCOL §3): declare ``herald.user.<id>`` (fanout,
auto-delete, non-durable), bind the queue to it, then bind it to ``herald.users`` with key ``<id>`` — in
that order, so the exchange always has a queue bound before it can receive anything and deletes itself
when the last gateway unbinds. Detaching = unbinding the queue.

Topology runs on its own channels, never the consuming or RPC ones: a small pool of
:data:`TOPOLOGY_CHANNELS`, a user always on the same one, each running one operation (attach or detach,
several AMQP calls) at a time. Another gateway's unbind can delete a user's exchange between this
gateway's declare and bind; the broker answers 404 and closes the channel, so the channel is reopened and
the attach retried from the declare. Because an operation has its channel to itself, a 404 (or a channel
closing under it) always belongs to that operation — never to another user's detach queued behind it,
which would otherwise fail and leave a stray binding.

The connection is a plain (non-robust) aio-pika connection supervised here rather than by aio-pika's
robust reconnect: a robust connection would re-declare every per-user exchange it ever saw, including
users long gone, and its server-named queue would come back under a new name without the bindings. After
each (re)connect this module re-creates its channels, queue and consumers, bumps :attr:`generation`, and
asks the hub to re-attach the users still connected here (and only those) and send them
``sync:required``: frames published during the gap are lost, since live frames are not persisted.

Frames are consumed without acks: the queue is exclusive and frames are best-effort by design (Postgres
is the record; clients catch up with ``notifications.sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import aio_pika
import aiormq
import structlog

from gateway.errors import TopologyError
from shared.topology import BROADCAST_CRITICAL_HEADER, BROADCAST_TYPE_HEADER

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
    from aiormq.abc import DeliveredMessage

    from gateway.hub import Hub
    from gateway.metrics import Metrics
    from gateway.rpc import RpcClient
    from shared.topology import Topology

log = structlog.get_logger("gateway.broker")

ATTACH_ATTEMPTS: Final = 8
TOPOLOGY_CHANNELS: Final = 4
#: Pause after each failed connect, capped at one second: a gateway whose link is down strands every
#: frame the worker publishes meanwhile, so waiting longer than the broker takes to come back is costly.
RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0)
#: During a pause the broker's port is probed this often; a connect is tried as soon as it accepts.
PORT_PROBE_INTERVAL: Final = 0.05
CONNECT_TIMEOUT: Final = 10.0

#: A channel-level failure that closed the topology channel; retrying on a new channel can succeed.
_CHANNEL_FAILURES: Final = (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ChannelInvalidStateError)


@dataclass(eq=False)
class _Lane:
    """One topology channel and the lock that gives it to one operation at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    channel: AbstractChannel | None = None


class BrokerLink:
    """See the module docstring. ``run()`` supervises until ``close()``."""

    def __init__(
        self, amqp_url: str, names: Topology, rpc: RpcClient, metrics: Metrics, connection_name: str
    ) -> None:
        self._url = amqp_url
        parsed = urlsplit(amqp_url)
        default_port = 5671 if parsed.scheme == "amqps" else 5672
        self._address = (parsed.hostname or "localhost", parsed.port or default_port)
        self._connection_name = connection_name
        self._names = names
        self._rpc = rpc
        self._metrics = metrics
        self._hub: Hub | None = None
        self._connection: AbstractConnection | None = None
        self._lanes = [_Lane() for _ in range(TOPOLOGY_CHANNELS)]
        self._queue_name = ""
        self._generation = 0
        self._ready = False
        self._closing = False
        self._lost = asyncio.Event()

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ready(self) -> bool:
        return self._ready

    def bind_hub(self, hub: Hub) -> None:
        """The hub frames are relayed to and users are rebuilt from (set once, before :meth:`run`)."""
        self._hub = hub

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff whenever the connection is lost, until closed."""
        failures = 0
        while not self._closing:
            try:
                connection = await aio_pika.connect(
                    self._url,
                    timeout=CONNECT_TIMEOUT,
                    client_properties={"connection_name": self._connection_name},
                )
            except Exception as exc:  # the supervisor must outlive any connect failure, known or not
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("broker connect failed", error=str(exc) or type(exc).__name__, retry_in=delay)
                await self._pause(delay, probe=True)
                continue
            # A fresh event per connection: a late close callback of the previous one cannot end this one.
            lost = self._lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, event=lost: event.set())
            try:
                await self._open(connection, lost)
            except Exception as exc:  # same: a failed set-up is retried on a new connection
                log.exception("broker set-up failed", error=str(exc))
                await self._drop(connection)
                await self._pause(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)], probe=False)
                failures += 1
                continue
            failures = 0
            log.info("broker link up", queue=self._queue_name, generation=self._generation)
            if self._hub is not None:
                await self._hub.rebuild()
            await lost.wait()
            if not self._closing:
                log.warning("broker link lost; reconnecting")
            await self._drop(connection)

    async def _pause(self, delay: float, *, probe: bool) -> None:
        """Wait ``delay`` seconds; with ``probe``, end early once the broker's port starts accepting
        connections again (a broker that is back is used at once, not after the rest of the pause).

        A port that accepts from the start says the failure was something else (credentials, a vhost,
        a broker still booting): then the whole pause is waited, so a fast failure is no busy loop.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        if not probe or await self._port_accepts(delay):
            await asyncio.sleep(max(deadline - loop.time(), 0))
            return
        while not self._closing and (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(PORT_PROBE_INTERVAL, remaining))
            if await self._port_accepts(deadline - loop.time()):
                return

    async def _port_accepts(self, within: float) -> bool:
        try:
            async with asyncio.timeout(max(within, PORT_PROBE_INTERVAL)):
                _, writer = await asyncio.open_connection(*self._address)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def close(self) -> None:
        """Stop supervising and close the connection (the exclusive queue and its bindings go with it)."""
        self._closing = True
        self._lost.set()
        if self._connection is not None:
            await self._drop(self._connection)
            # aio-pika runs the close callbacks as tasks; let them finish before the loop is closed.
            await asyncio.sleep(0.05)

    async def _open(self, connection: AbstractConnection, lost: asyncio.Event) -> None:
        self._connection = connection
        consume_channel = await connection.channel(publisher_confirms=False)
        rpc_channel = await connection.channel(publisher_confirms=False)
        # Losing either channel while the connection stays up would silently stop the relay or the
        # replies: treat it as losing the link (reconnect, rebuild, sync:required).
        for channel in (consume_channel, rpc_channel):
            channel.close_callbacks.add(lambda *_: lost.set())
        names = self._names
        await consume_channel.declare_exchange(
            names.users_exchange, aio_pika.ExchangeType.DIRECT, durable=True, auto_delete=False
        )
        broadcast = await consume_channel.declare_exchange(
            names.broadcast_exchange, aio_pika.ExchangeType.FANOUT, durable=True, auto_delete=False
        )
        queue: AbstractQueue = await consume_channel.declare_queue("", exclusive=True, durable=False)
        await queue.bind(broadcast)
        # Consumed through aiormq directly: aio-pika would build an IncomingMessage and spawn a second
        # task per frame, and the relay needs neither.
        underlay = await consume_channel.get_underlay_channel()
        await underlay.basic_consume(queue.name, self._on_frame, no_ack=True)
        await self._rpc.attach(rpc_channel)
        self._queue_name = queue.name
        self._generation += 1
        self._ready = True

    async def _drop(self, connection: AbstractConnection) -> None:
        self._ready = False
        self._rpc.detach()
        self._connection = None
        for lane in self._lanes:
            lane.channel = None
        with contextlib.suppress(Exception):
            await connection.close()

    async def _on_lane(
        self, user_id: str, operation: Callable[[AbstractChannel], Awaitable[None]], gone_ok: bool
    ) -> None:
        """Run ``operation`` alone on the user's topology channel, retrying on a fresh channel when the
        broker closed it (404 included). With ``gone_ok`` a 404 means the target is gone: done."""
        lane = self._lanes[hash(user_id) % len(self._lanes)]
        async with lane.lock:
            for attempt in range(ATTACH_ATTEMPTS):
                if self._connection is None or self._connection.is_closed:
                    raise TopologyError("broker connection down")
                if lane.channel is None or lane.channel.is_closed:
                    lane.channel = await self._connection.channel(publisher_confirms=False)
                try:
                    await operation(lane.channel)
                    return
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if gone_ok:
                        return
                    self._metrics.topology_retries.inc()
                except _CHANNEL_FAILURES as exc:
                    self._metrics.topology_retries.inc()
                    log.debug("topology retried", user_id=user_id, attempt=attempt, error=str(exc))
                await asyncio.sleep(0.01 * attempt)
        raise TopologyError(f"topology for {user_id} failed {ATTACH_ATTEMPTS} times")

    async def attach(self, user_id: str) -> None:
        """Declare ``herald.user.<id>``, bind the queue to it, bind it to ``herald.users``; retry on 404.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        exchange_name = self._names.user_exchange(user_id)
        queue_name = self._queue_name

        async def operation(channel: AbstractChannel) -> None:
            # One round trip instead of three: the declare and the first bind are sent with nowait and
            # the last bind waits. AMQP runs a channel's methods in order, so its reply (or the channel
            # closing, 404 included, on any of the three) comes after all of them — and the operation
            # has the channel to itself, so that failure is this attach's.
            underlay = await channel.get_underlay_channel()
            await underlay.exchange_declare(
                exchange_name, exchange_type="fanout", durable=False, auto_delete=True, nowait=True
            )
            # Keyed by the queue name, as aio-pika's ``Queue.unbind`` in detach names it (fanout ignores it).
            await underlay.queue_bind(queue_name, exchange_name, routing_key=queue_name, nowait=True)
            await underlay.exchange_bind(exchange_name, self._names.users_exchange, routing_key=user_id)

        await self._on_lane(user_id, operation, gone_ok=False)

    async def detach(self, user_id: str, generation: int) -> None:
        """Unbind the queue from the user's exchange (which then deletes itself unless another gateway's
        queue is bound). A no-op when that binding died with an earlier connection.

        Raises:
            TopologyError: the link is down, or every attempt failed.
        """
        if generation != self._generation or not self._ready:
            return
        exchange_name = self._names.user_exchange(user_id)
        queue_name = self._queue_name

        async def operation(channel: AbstractChannel) -> None:
            queue = await channel.get_queue(queue_name, ensure=False)
            await queue.unbind(exchange_name)

        await self._on_lane(user_id, operation, gone_ok=True)

    async def _on_frame(self, message: DeliveredMessage) -> None:
        hub = self._hub
        delivery = message.delivery
        if hub is None or not isinstance(delivery, aiormq.spec.Basic.Deliver):
            return
        properties = message.header.properties
        if delivery.exchange == self._names.broadcast_exchange:
            headers = properties.headers or {}
            notification_type = headers.get(BROADCAST_TYPE_HEADER)
            hub.relay_broadcast(
                message.body,
                notification_type if isinstance(notification_type, str) else None,
                bool(headers.get(BROADCAST_CRITICAL_HEADER)),
            )
        else:
            hub.relay_user(delivery.routing_key or "", message.body, properties.message_type)
