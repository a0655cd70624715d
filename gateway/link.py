"""A supervised AMQP connection: connect, set up, and reconnect with backoff whenever it is lost.

Both edges need one: the WebSocket gateway (:class:`gateway.broker.BrokerLink`: its queue, per-user
topology and the RPC client) and the HTTP API (:class:`gateway.rpc.RpcLink`: the RPC client alone). The
connection is a plain (non-robust) aio-pika connection supervised here rather than by aio-pika's robust
reconnect, because what must be rebuilt after a reconnect is the subclass's business (see
:class:`~gateway.broker.BrokerLink` for why robust re-declaration is wrong for the gateway).

Subclasses implement :meth:`SupervisedLink._open` (channels, declarations; call :meth:`_watch` on every
channel whose loss must count as losing the link), and may override :meth:`_on_up` (after a successful
set-up) and :meth:`_on_down` (the link is gone: fail what waited on it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import aio_pika
import structlog

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection

log = structlog.get_logger("gateway.link")

#: Pause after each failed connect, capped at one second: a gateway whose link is down strands every
#: frame the worker publishes meanwhile, so waiting longer than the broker takes to come back is costly.
RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0)
#: During a pause the broker's port is probed this often; a connect is tried as soon as it accepts.
PORT_PROBE_INTERVAL: Final = 0.05
CONNECT_TIMEOUT: Final = 10.0


class SupervisedLink:
    """See the module docstring. ``run()`` supervises until ``close()``."""

    def __init__(self, amqp_url: str, connection_name: str) -> None:
        self._url = amqp_url
        parsed = urlsplit(amqp_url)
        default_port = 5671 if parsed.scheme == "amqps" else 5672
        self._address = (parsed.hostname or "localhost", parsed.port or default_port)
        self._connection_name = connection_name
        self._connection: AbstractConnection | None = None
        self._ready = False
        self._closing = False
        self._lost = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Whether the connection is up and set up."""
        return self._ready

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
                self._connection = connection
                await self._open(connection, lost)
            except Exception as exc:  # same: a failed set-up is retried on a new connection
                log.exception("broker set-up failed", error=str(exc))
                await self._drop(connection)
                await self._pause(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)], probe=False)
                failures += 1
                continue
            failures = 0
            self._ready = True
            log.info("broker link up", name=self._connection_name)
            await self._on_up()
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
        """Stop supervising and close the connection."""
        self._closing = True
        self._lost.set()
        if self._connection is not None:
            await self._drop(self._connection)
            # aio-pika runs the close callbacks as tasks; let them finish before the loop is closed.
            await asyncio.sleep(0.05)

    @staticmethod
    def _watch(channel: AbstractChannel, lost: asyncio.Event) -> None:
        """Losing ``channel`` while the connection stays up counts as losing the link (reconnect)."""
        channel.close_callbacks.add(lambda *_: lost.set())

    async def _open(self, connection: AbstractConnection, lost: asyncio.Event) -> None:
        """Set up channels and declarations on a new connection (``self._connection`` is set)."""
        raise NotImplementedError

    async def _on_up(self) -> None:
        """Called after each successful set-up."""

    def _on_down(self) -> None:
        """Called whenever the connection is dropped (before it is closed)."""

    async def _drop(self, connection: AbstractConnection) -> None:
        self._ready = False
        self._on_down()
        self._connection = None
        with contextlib.suppress(Exception):
            await connection.close()
