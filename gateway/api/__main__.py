"""``herald-api`` / ``python -m gateway.api``: serve the HTTP API on uvicorn (uvloop, httptools with a
bounded request head, :mod:`gateway.api.server`)."""

from __future__ import annotations

from typing import Final

import uvicorn

from gateway.api.app import HttpApi
from gateway.api.server import bounded_http
from gateway.auth import load_edge_settings
from shared.process import tune_garbage_collector

#: Seconds uvicorn waits for requests in flight after SIGTERM (longer than an RPC timeout by default).
GRACEFUL_SHUTDOWN_SECONDS: Final = 10


def main() -> None:
    """Load settings (exit 2 naming a bad variable), then serve until SIGTERM/SIGINT; exit 0."""
    settings = load_edge_settings()
    config = uvicorn.Config(
        HttpApi(settings).app,
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http=bounded_http(settings.api_max_head_bytes, settings.api_head_timeout),
        lifespan="on",
        log_config=None,  # structlog (configure_logging) owns the output
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    tune_garbage_collector()
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
