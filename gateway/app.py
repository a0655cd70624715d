"""The gateway process: wiring, serving, and orderly shutdown.

Start: the HTTP/WebSocket server listens at once (``/healthz`` answers, ``/readyz`` says 503 until the
broker link is up) while the broker link connects in the background. SIGTERM or SIGINT: stop accepting,
close every client with 1001, let each handler detach its user (unbinding the queue), close the broker
link, and return so the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING, Final

import structlog
from websockets.asyncio.server import serve

from gateway.auth import TokenVerifier
from gateway.broker import BrokerLink
from gateway.http import HttpRoutes, connection_type
from gateway.hub import Hub
from gateway.limits import UserLimits
from gateway.metrics import Metrics
from gateway.rpc import RpcClient
from gateway.session import Sessions
from gateway.timers import Keepalive
from shared.topology import Topology

if TYPE_CHECKING:
    from shared.settings import Settings

log = structlog.get_logger("gateway")

#: Frames from a client that may wait unread in its connection (each ≤ ``max_frame_bytes``).
MAX_QUEUE: Final = 8
CLOSE_TIMEOUT: Final = 5.0
LISTEN_BACKLOG: Final = 4096


class Gateway:
    """One gateway process; :meth:`run` serves until :meth:`stop` (or a signal)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.verifier = TokenVerifier(settings)
        names = Topology(settings.amqp_prefix)
        self.rpc = RpcClient(names.rpc_queue, settings.rpc_timeout, settings.amqp_user)
        self.broker = BrokerLink(
            settings.amqp_url,
            names,
            self.rpc,
            self.metrics,
            f"herald-gateway {settings.gateway_host}:{settings.gateway_port} pid {os.getpid()}",
        )
        self.hub = Hub(
            self.broker,
            self.metrics,
            settings.send_buffer_bytes,
            settings.max_connections_per_user,
            UserLimits(
                settings.user_rate_limit_per_second,
                settings.user_rate_limit_burst,
                settings.max_user_requests_in_flight,
            ),
        )
        self.broker.bind_hub(self.hub)
        self.sessions = Sessions(settings, self.verifier, self.hub, self.rpc, self.metrics)
        self.routes = HttpRoutes(settings, self.verifier, self.metrics, lambda: self.broker.ready)
        self.metrics.watch(
            lambda: self.hub.connection_count, lambda: len(self.hub.users), lambda: self.broker.ready
        )
        self.keepalive = Keepalive(self.hub.connections, settings.ping_interval, settings.ping_timeout)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Begin the orderly shutdown (idempotent; safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        settings = self.settings
        if settings.dev_tokens:
            log.warning(
                "HERALD_DEV_TOKENS=1: /dev/token mints a valid token for ANY user without credentials, for "
                "anyone who can reach this port; never enable this outside local development"
            )
        if self.verifier.lacks_audience:
            log.warning(
                "HERALD_JWT_AUDIENCE is not set while a public key or JWKS is: tokens the identity "
                "provider issued for any other application are accepted; set HERALD_JWT_AUDIENCE "
                "(and HERALD_JWT_ISSUER)"
            )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        broker_task = asyncio.create_task(self.broker.run(), name="broker-link")
        keepalive_task = asyncio.create_task(self.keepalive.run(), name="keepalive")
        server = await serve(
            self.sessions.handle,  # type: ignore[arg-type]  # serve() builds HeraldConnection (create_connection)
            settings.gateway_host,
            settings.gateway_port,
            process_request=self.routes,
            create_connection=connection_type(settings.send_buffer_bytes, self.hub.drop_flooder),
            compression=None,  # permessage-deflate costs ~36 KiB per idle connection
            max_size=settings.max_frame_bytes,
            max_queue=MAX_QUEUE,
            ping_interval=None,  # one process-wide Keepalive instead of a task per connection
            close_timeout=CLOSE_TIMEOUT,
            server_header=None,
            # asyncio's default of 100 drops the SYNs of a reconnect storm (clients retry after 1 s, 3 s);
            # the kernel caps it at net.core.somaxconn.
            backlog=LISTEN_BACKLOG,
        )
        log.info("gateway listening", host=settings.gateway_host, port=settings.gateway_port)
        try:
            await self._stop.wait()
        finally:
            log.info("gateway stopping", connections=self.hub.connection_count)
            server.close(close_connections=True)  # 1001 to every client; handlers detach their users
            await server.wait_closed()
            await self.broker.close()
            broker_task.cancel()
            keepalive_task.cancel()
            await asyncio.gather(broker_task, keepalive_task, return_exceptions=True)
            log.info("gateway stopped")
