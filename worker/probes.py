"""The worker's HTTP routes: liveness, readiness, Prometheus metrics and the AsyncAPI document."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.store.pool import is_outage, ping

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg
    from faststream import FastStream
    from faststream.rabbit import RabbitBroker

    Route = Callable[[], Awaitable[tuple[int, str, bytes]]]

_PROBE_TIMEOUT: Final = 1.0


def routes(app: FastStream, broker: RabbitBroker, pool: asyncpg.Pool) -> dict[str, Route]:
    """``/healthz``, ``/readyz``, ``/metrics`` and ``/asyncapi.json`` of a running worker or delivery app."""

    async def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    async def readyz() -> tuple[int, str, bytes]:
        """200 when the AMQP connection is up and the database answers; else 503 naming what is down."""
        problems = []
        if not await broker.ping(_PROBE_TIMEOUT):
            problems.append("amqp")
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                await ping(pool)
        except Exception as exc:  # TimeoutError is an OSError, hence an outage
            if not is_outage(exc):
                raise
            problems.append("database")
        if problems:
            return 503, "text/plain", ("not ready: " + ", ".join(problems) + "\n").encode()
        return 200, "text/plain", b"ready\n"

    async def metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest()

    async def asyncapi() -> tuple[int, str, bytes]:
        return 200, "application/json", orjson.dumps(app.schema.to_specification().to_jsonable())

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics, "/asyncapi.json": asyncapi}
