"""The Herald worker: a FastStream app consuming ``herald.events`` (and ``herald.rpc``, see ``worker.rpc``).

``faststream run worker.app:app``, ``herald-worker`` and ``python -m worker`` all run :data:`app`;
``faststream docs gen worker.app:app`` documents the producer event schema.

Start-up: logging, the database pool (waiting for Postgres if it is not up yet), the catalog, the §3
topology, the :class:`worker.pipeline.Pipeline`; then the broker starts consuming, and the HTTP endpoints,
the catalog refresher (every 60 s and on SIGHUP) and the retention loop start. Shutdown: the consumer is
cancelled, the pipeline flushes (commit, publish, ack), then the broker and the pool close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
import structlog
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, RabbitBroker
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import WithJsonSchema

from shared.events import BroadcastEvent, SendEvent
from shared.logs import configure_logging
from shared.settings import load_settings
from shared.topology import Topology
from worker import http, metrics, publish, state
from worker.acks import AckTracker
from worker.amqp import (
    broadcast_exchange,
    declare_topology,
    deliveries_exchange,
    events_exchange,
    events_queue,
    raw_body,
    users_exchange,
)
from worker.db import TRANSIENT_DB_ERRORS, create_pool, load_catalog
from worker.pipeline import Pipeline
from worker.retention import retention_loop
from worker.rpc import build_router
from worker.schemas import DeliveryJob, NotificationFrame

if TYPE_CHECKING:
    import asyncpg
    from faststream.rabbit.message import RabbitMessage

log = structlog.get_logger("herald.worker")

CATALOG_REFRESH_SECONDS: Final = 60.0
_STARTUP_BACKOFF_MAX: Final = 5.0
_PROBE_TIMEOUT: Final = 1.0

settings = load_settings()
topology = Topology(settings.amqp_prefix)

# logger=None: FastStream would log every message; the pipeline logs what matters itself.
broker = RabbitBroker(settings.amqp_url, logger=None)
broker.include_router(build_router(settings, topology))
app = FastStream(
    broker,
    logger=logging.getLogger("herald.worker.app"),
    specification=AsyncAPI(
        title="Herald worker",
        description="Producer events in; live frames, broadcasts and email/push jobs out (PROTOCOL §3-§4).",
    ),
)


# The handler receives bytes; the schema is the documented event shape (send or broadcast).
EventBody = Annotated[
    bytes,
    WithJsonSchema(
        {
            "oneOf": [
                SendEvent.model_json_schema(by_alias=True),
                BroadcastEvent.model_json_schema(by_alias=True),
            ],
            "description": "A producer event (PROTOCOL §4). `user_id` (or `userId`) may replace `user_ids`; "
            "`eventId` and the NestJS envelope `{pattern, data}` are accepted too.",
        }
    ),
]

events_subscriber = broker.subscriber(
    events_queue(topology, settings.delivery_limit),
    events_exchange(topology),
    channel=Channel(prefetch_count=settings.prefetch),
    ack_policy=AckPolicy.MANUAL,
    no_reply=True,
    decoder=raw_body,
    title="herald.events",
    description="Producer events (routing keys notification.send and notification.broadcast).",
)


# Documentation only: the pipeline publishes through worker.publish, and AsyncAPI lists only publishers.
broker.publisher(
    exchange=users_exchange(topology),
    title="herald.users",
    schema=NotificationFrame,
    description="Live JSON-RPC frames, routing key = user id, AMQP type = method.",
)
broker.publisher(
    exchange=broadcast_exchange(topology),
    title="herald.broadcast",
    schema=NotificationFrame,
    description="Broadcast notification:new frames: seq null, header x-herald-type = the type.",
)
broker.publisher(
    exchange=deliveries_exchange(topology),
    title="herald.deliveries",
    schema=DeliveryJob,
    description="Email/push jobs, routing key = channel; hold each until deliver_after when set.",
)


@events_subscriber
async def on_event(body: EventBody) -> None:
    """Hand one delivery to the pipeline; it acks (or dead-letters) it once stored and published."""
    # From the context, not a `msg: RabbitMessage` parameter: parameters cost a thread-pool hop each.
    message: RabbitMessage = broker.context.get_local("message")
    await runtime().pipeline.accept(message.raw_message)


@dataclass
class Runtime:
    """What the app builds at start-up and tears down at shutdown."""

    pool: asyncpg.Pool
    pipeline: Pipeline
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    server: asyncio.Server | None = None

    def spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The running app's :class:`Runtime`; raises ``RuntimeError`` before start-up."""
    if _runtime is None:
        raise RuntimeError("the worker has not started")
    return _runtime


async def _connect_database() -> asyncpg.Pool:
    delay = 0.2
    while True:
        try:
            return await create_pool(settings)
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("database unavailable at start; retrying", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _STARTUP_BACKOFF_MAX)


@app.on_startup
async def _startup() -> None:
    global _runtime
    configure_logging(settings)
    pool = await _connect_database()
    catalog = await load_catalog(pool)
    metrics.CATALOG_TYPES.set(len(catalog))
    await broker.connect()
    publisher = await declare_topology(broker, topology, confirm_frames=settings.confirm_frames)
    publish.install(publisher)
    worker_state = state.WorkerState(settings, topology, broker, pool, catalog)
    state.install(worker_state)
    pipeline = Pipeline(
        settings=settings,
        pool=pool,
        publisher=publisher,
        acks=AckTracker(),
        catalog=lambda: worker_state.catalog,
        reload_catalog=_reload_catalog,
    )
    pipeline.start()
    _runtime = Runtime(pool, pipeline)


@app.after_startup
async def _serve() -> None:
    current = runtime()
    current.server = await http.serve(
        settings.worker_http_host,
        settings.worker_http_port,
        {"/healthz": _healthz, "/readyz": _readyz, "/metrics": _metrics, "/asyncapi.json": _asyncapi},
    )
    current.spawn(_refresh_catalog_periodically(), "herald-catalog")
    current.spawn(retention_loop(current.pool, settings), "herald-retention")
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, lambda: current.spawn(_reload_catalog(), "herald-catalog-sighup")
    )
    log.info(
        "worker started",
        http=f"{settings.worker_http_host}:{settings.worker_http_port}",
        prefetch=settings.prefetch,
        batch_size=settings.batch_size,
        batch_timeout_ms=settings.batch_timeout_ms,
    )


@app.on_shutdown
async def _drain() -> None:
    if _runtime is None:
        return
    await events_subscriber.stop()
    await _runtime.pipeline.close()
    for task in list(_runtime.tasks):
        task.cancel()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


@app.after_shutdown
async def _close() -> None:
    if _runtime is None:
        return
    if _runtime.server is not None:
        _runtime.server.close()
    await _runtime.pool.close()
    log.info("worker stopped")


async def _reload_catalog() -> None:
    try:
        catalog = await load_catalog(runtime().pool)
    except TRANSIENT_DB_ERRORS as exc:
        log.warning("catalog reload failed", error=repr(exc))
        return
    state.current().catalog = catalog
    metrics.CATALOG_TYPES.set(len(catalog))


async def _refresh_catalog_periodically() -> None:
    while True:
        await asyncio.sleep(CATALOG_REFRESH_SECONDS)
        await _reload_catalog()


async def _healthz() -> tuple[int, str, bytes]:
    return 200, "text/plain", b"ok\n"


async def _readyz() -> tuple[int, str, bytes]:
    """200 when the AMQP connection is up and the database answers; else 503 naming what is down."""
    problems = []
    if not await broker.ping(_PROBE_TIMEOUT):
        problems.append("amqp")
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            await runtime().pool.fetchval("SELECT 1")
    except TRANSIENT_DB_ERRORS:  # TimeoutError is an OSError
        problems.append("database")
    if problems:
        return 503, "text/plain", ("not ready: " + ", ".join(problems) + "\n").encode()
    return 200, "text/plain", b"ready\n"


async def _metrics() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest()


async def _asyncapi() -> tuple[int, str, bytes]:
    return 200, "application/json", orjson.dumps(app.schema.to_specification().to_jsonable())
