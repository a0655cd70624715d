"""The Herald worker: a FastStream app consuming ``herald.events`` and ``herald.rpc`` through aio-pika.

:func:`create_app` builds the app from the settings (read from the environment when not given), so importing
this module reads no configuration. ``herald-worker`` and ``python -m worker`` run it;
``faststream run --factory worker.app:create_app`` and ``faststream docs gen --factory worker.app:create_app``
work too (the latter documents the producer event schema).

Start-up: logging, the database pool (waiting for Postgres if it is not up yet), the catalog, the §3
topology, the :class:`worker.runtime.Runtime` and the :class:`worker.pipeline.Pipeline`; then the two
consumers start (:mod:`worker.rpc`, :mod:`worker.events`: FastStream's per-message machinery cost more
than the work, docs/performance.md), and the HTTP endpoints, the catalog refresher (every 60 s and on
SIGHUP) and the retention loop start. Shutdown: the consumers are cancelled, the pipeline flushes (commit,
publish, ack), then the broker and the pool close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any, Final

import structlog
from faststream import FastStream
from faststream.specification import AsyncAPI

from shared.logs import configure_logging
from shared.settings import load_settings
from shared.topology import Topology
from worker import http, metrics, probes
from worker.acks import AckTracker
from worker.amqp import broker, declare_topology
from worker.events import EventConsumer, document_events, document_publishers
from worker.pipeline import Pipeline
from worker.retention import retention_loop
from worker.rpc import RpcConsumer, document_requests
from worker.runtime import Runtime
from worker.store.catalog import load_catalog
from worker.store.pool import DatabaseUnreachable, create_pool, is_outage

if TYPE_CHECKING:
    from collections.abc import Coroutine

    import asyncpg

    from shared.settings import Settings

log = structlog.get_logger("herald.worker")

CATALOG_REFRESH_SECONDS: Final = 60.0
_STARTUP_BACKOFF_MAX: Final = 5.0


def create_app(settings: Settings | None = None) -> FastStream:
    """The worker app for ``settings`` (default: :func:`shared.settings.load_settings`)."""
    return _Worker(settings or load_settings()).app


class _Worker:
    """One worker process: the app, its broker and subscriber, and what start-up builds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.amqp_prefix)
        # logger=None: FastStream would log every message; the pipeline logs what matters itself.
        self.broker = broker(settings.amqp_url)
        self.requests = RpcConsumer(settings, self.topology, self.runtime)
        self.events = EventConsumer(settings, self.topology, self.pipeline)
        documented = document_requests(settings, self.topology, self.runtime)
        document_events(documented, settings, self.topology)
        self.app = FastStream(
            self.broker,
            logger=logging.getLogger("herald.worker.app"),
            specification=AsyncAPI(
                documented,
                title="Herald worker",
                description="Producer events in; live frames, broadcasts and email/push jobs out "
                "(PROTOCOL §3-§4).",
            ),
        )
        document_publishers(self.broker, self.topology)
        self._runtime: Runtime | None = None
        self._pipeline: Pipeline | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.app.on_startup(self._startup)
        self.app.after_startup(self._serve)
        self.app.on_shutdown(self._drain)
        self.app.after_shutdown(self._close)

    def runtime(self) -> Runtime:
        """The running worker's :class:`Runtime`; raises ``RuntimeError`` before start-up."""
        if self._runtime is None:
            raise RuntimeError("the worker has not started")
        return self._runtime

    def pipeline(self) -> Pipeline:
        """The running worker's pipeline; raises ``RuntimeError`` before start-up."""
        if self._pipeline is None:
            raise RuntimeError("the worker has not started")
        return self._pipeline

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_database(self) -> asyncpg.Pool:
        delay = 0.2
        while True:
            try:
                return await create_pool(self.settings)
            except Exception as exc:
                # At start a refusal is read for what it is: refused credentials or a missing database
                # are a misconfiguration, and exit with the server's reason rather than retry forever.
                refused = exc.__cause__ if isinstance(exc, DatabaseUnreachable) else exc
                if refused is None or not is_outage(refused):
                    raise
                log.warning("database unavailable at start; retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _STARTUP_BACKOFF_MAX)

    async def _startup(self) -> None:
        settings = self.settings
        configure_logging(settings)
        pool = await self._connect_database()
        catalog = await load_catalog(pool)
        metrics.CATALOG_TYPES.set(len(catalog))
        metrics.DB_UP.set(1)  # reached the database; an idle worker would otherwise read as one without it
        await self.broker.connect()
        publisher = await declare_topology(self.broker, self.topology, confirm_frames=settings.confirm_frames)
        runtime = Runtime(settings, self.topology, self.broker, pool, publisher, catalog)
        pipeline = Pipeline(
            settings=settings,
            pool=pool,
            publisher=publisher,
            acks=AckTracker(),
            catalog=lambda: runtime.catalog,
            reload_catalog=runtime.refresh_catalog,
        )
        pipeline.start()
        self._runtime, self._pipeline = runtime, pipeline
        await self.requests.start(self.broker)
        await self.events.start(self.broker)

    async def _serve(self) -> None:
        settings, runtime = self.settings, self.runtime()
        self._server = await http.serve(
            settings.worker_http_host,
            settings.worker_http_port,
            probes.routes(self.app, runtime.broker, runtime.pool),
        )
        self._spawn(self._refresh_catalog_periodically(), "herald-catalog")
        self._spawn(retention_loop(runtime.pool, settings), "herald-retention")
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: self._spawn(runtime.reload_catalog(), "herald-catalog-sighup")
        )
        log.info(
            "worker started",
            http=f"{settings.worker_http_host}:{settings.worker_http_port}",
            prefetch=settings.prefetch,
            batch_size=settings.batch_size,
            batch_timeout_ms=settings.batch_timeout_ms,
        )

    async def _drain(self) -> None:
        if self._pipeline is None:
            return
        await self.events.stop()
        await self.requests.stop()
        await self._pipeline.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def _close(self) -> None:
        if self._runtime is None:
            return
        if self._server is not None:
            self._server.close()
        await self._runtime.pool.close()
        log.info("worker stopped")

    async def _refresh_catalog_periodically(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_REFRESH_SECONDS)
            await self.runtime().reload_catalog()
