"""The ``herald-delivery`` app: one :class:`ChannelRunner` per channel, a listener, and one FastStream
subscriber per channel for jobs other services publish.

The worker records its jobs in Postgres and ``NOTIFY`` wakes the runners (:mod:`worker.delivery.wakeup`).
Each channel has its own runner (its concurrency, rate cap and claims), so a dead SMTP relay never slows
push, nor the reverse, and its own queue (``herald.deliveries.email``, ``herald.deliveries.push``, bound by
the channel's routing key on ``herald.deliveries``) whose messages are recorded like the worker's jobs. A
channel whose sender is not configured (no ``HERALD_SMTP_URL``, no ``HERALD_VAPID_PRIVATE_KEY``) is not
sent: its jobs wait (scheduled in Postgres, or in its queue) until a process that can send them starts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated, Any, Final

import structlog
from aiolimiter import AsyncLimiter
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, QueueType, RabbitQueue
from faststream.specification import AsyncAPI
from pydantic import WithJsonSchema

from shared.logs import configure_logging
from shared.topology import Topology
from worker import http, probes
from worker.amqp import broker, deliveries_exchange, raw_body
from worker.delivery.render import EmailRenderer
from worker.delivery.runner import ChannelRunner
from worker.delivery.senders.email import EmailSender, SmtpTarget
from worker.delivery.senders.webpush import WebPushSender
from worker.delivery.settings import load_delivery_settings
from worker.delivery.wakeup import Wakeup
from worker.schemas import DeliveryJob
from worker.store.catalog import load_catalog
from worker.store.pool import create_pool
from worker.vapid import load_vapid

if TYPE_CHECKING:
    import asyncpg
    from faststream.rabbit.message import RabbitMessage

    from shared.preferences import Catalog
    from worker.delivery.senders.base import Sender
    from worker.delivery.settings import DeliverySettings

log = structlog.get_logger("herald.delivery")

CHANNELS: Final = ("email", "push")
_CATALOG_REFRESH_SECONDS: Final = 60.0
# The handler takes the raw body (the runner parses it); the schema documents the job's shape.
JobBody = Annotated[bytes, WithJsonSchema(DeliveryJob.model_json_schema())]


def create_app(settings: DeliverySettings | None = None) -> FastStream:
    """The delivery app for ``settings`` (default: read from the environment)."""
    return _Delivery(settings or load_delivery_settings()).app


class _Delivery:
    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        self.broker = broker(settings.amqp_url)
        self.app = FastStream(
            self.broker,
            logger=logging.getLogger("herald.delivery.app"),
            specification=AsyncAPI(title="Herald delivery", description="Email and Web Push jobs in."),
        )
        self.runners: dict[str, ChannelRunner] = {}
        self._wakeup = Wakeup(settings.database_url, self.runners)
        self._pool: asyncpg.Pool | None = None
        self._catalog: Catalog | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None
        for channel in self._configured_channels():
            self._subscribe(channel)
        self.app.on_startup(self._startup)
        self.app.after_startup(self._serve)
        self.app.on_shutdown(self._drain)
        self.app.after_shutdown(self._close)

    def _configured_channels(self) -> list[str]:
        channels = []
        if self.settings.smtp_url is not None:
            channels.append("email")
        else:
            log.warning("HERALD_SMTP_URL is not set: email jobs are not consumed")
        if self.settings.vapid_private_key is not None:
            channels.append("push")
        else:
            log.warning("HERALD_VAPID_PRIVATE_KEY is not set: push jobs are not consumed")
        return channels

    def _concurrency(self, channel: str) -> int:
        settings = self.settings
        return settings.email_concurrency if channel == "email" else settings.push_concurrency

    def _subscribe(self, channel: str) -> None:
        subscriber = self.broker.subscriber(
            RabbitQueue(
                self.topology.delivery_queue(channel), QueueType.QUORUM, durable=True, routing_key=channel
            ),
            deliveries_exchange(self.topology),
            channel=Channel(prefetch_count=self._concurrency(channel)),
            ack_policy=AckPolicy.MANUAL,
            no_reply=True,
            decoder=raw_body,
            title=self.topology.delivery_queue(channel),
            description=f"{channel} jobs from other services (routing key {channel}); the worker's own"
            " jobs go through Postgres.",
        )
        broker = self.broker

        @subscriber
        async def on_job(body: JobBody) -> None:
            # From the context, not a `msg: RabbitMessage` parameter: parameters cost a thread-pool hop.
            message: RabbitMessage = broker.context.get_local("message")
            await self.runners[channel].on_message(message.raw_message)

    def _sender(self, channel: str, pool: asyncpg.Pool) -> Sender:
        settings = self.settings
        if channel == "email":
            assert settings.smtp_url is not None
            renderer = EmailRenderer(
                templates_dir=settings.templates_dir,
                app_name=settings.app_name,
                sender=settings.email_from,
                unsubscribe_url=settings.unsubscribe_url,
            )
            target = SmtpTarget.from_url(settings.smtp_url.get_secret_value())
            return EmailSender(
                target,
                timeout=settings.smtp_timeout,
                renderer=renderer,
                connections=settings.smtp_connections,
            )
        assert settings.vapid_private_key is not None
        return WebPushSender(
            load_vapid(settings.vapid_private_key.get_secret_value()),
            subject=settings.vapid_subject,
            ttl=settings.push_ttl,
            timeout=settings.push_timeout,
            max_connections=settings.push_concurrency,
            pool=pool,
            is_critical=self._is_critical,
            hosts=settings.push_hosts,
            allow_local=settings.push_allow_http,
        )

    def _is_critical(self, notification_type: str) -> bool:
        catalog = self._catalog
        return catalog is not None and notification_type in catalog and catalog[notification_type].critical

    async def _startup(self) -> None:
        settings = self.settings
        configure_logging(settings)
        pool = self._pool = await create_pool(settings, custom_plans=True)
        self._catalog = await load_catalog(pool)
        await self.broker.connect()
        dead_queue = self.topology.deliveries_dead_queue
        await self.broker.declare_queue(RabbitQueue(dead_queue, durable=True))
        for channel in self._configured_channels():
            rate = settings.smtp_rate if channel == "email" else settings.push_rate
            self.runners[channel] = ChannelRunner(
                sender=self._sender(channel, pool),
                settings=settings,
                pool=pool,
                broker=self.broker,
                dead_queue=dead_queue,
                limiter=rate_limiter(rate),
                concurrency=self._concurrency(channel),
            )

    async def _serve(self) -> None:
        settings = self.settings
        assert self._pool is not None
        self._server = await http.serve(
            settings.delivery_http_host,
            settings.delivery_http_port,
            probes.routes(self.app, self.broker, self._pool),
        )
        self._pumps = [
            asyncio.create_task(runner.pump(), name=f"herald-pump-{channel}")
            for channel, runner in self.runners.items()
        ]
        self._tasks = [
            asyncio.create_task(
                self._wakeup.keep_listening(settings.delivery_poll_seconds), name="herald-wakeup"
            ),
            asyncio.create_task(self._refresh_catalog(), name="herald-catalog"),
        ]
        log.info("delivery started", channels=sorted(self.runners), http=settings.delivery_http_port)

    async def _refresh_catalog(self) -> None:
        while True:
            await asyncio.sleep(_CATALOG_REFRESH_SECONDS)
            if self._pool is not None:
                try:
                    self._catalog = await load_catalog(self._pool)
                except Exception as exc:
                    log.warning("catalog reload failed", error=repr(exc))

    async def _drain(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._pumps, *self._tasks, return_exceptions=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for runner in self.runners.values():
            await runner.close()
        await self._wakeup.close()
        if self._pool is not None:
            await self._pool.close()
        log.info("delivery stopped")


def rate_limiter(rate: float) -> AsyncLimiter:
    """At most ``rate`` sends a second: ``rate`` per second, or, below one a second, one per ``1 / rate``
    seconds (aiolimiter refuses every acquire when its capacity is below one)."""
    return AsyncLimiter(rate, 1.0) if rate >= 1 else AsyncLimiter(1, 1.0 / rate)
