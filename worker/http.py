"""A minimal asyncio HTTP/1.1 server for ``/healthz``, ``/readyz``, ``/metrics`` and the AsyncAPI document.

Four fixed GET routes do not justify a web framework: each request is read up to its blank line, answered
and closed. Anything else is 404; a request line that is not a GET of a known path is never executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Final

from shared.settings import exit_with_config_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT: Final = 5.0
_MAX_HEADER_BYTES: Final = 16 * 1024


async def serve(
    host: str, port: int, routes: Mapping[str, Callable[[], Awaitable[tuple[int, str, bytes]]]]
) -> asyncio.Server:
    """Start serving ``routes`` (path → coroutine returning status, content type, body)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER_BYTES:
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            route = routes.get(path)
            if route is None:
                status, content_type, body = 404, "text/plain", b"not found\n"
            elif method not in ("GET", "HEAD"):
                status, content_type, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, content_type, body = await route()
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # No reuse_port: a second process on the same port would share it, and each scrape would reach one of
    # them at random (metrics mixed, one's /readyz hidden). Every process needs a port of its own.
    try:
        return await asyncio.start_server(handle, host, port, limit=_MAX_HEADER_BYTES)
    except OSError as exc:
        exit_with_config_error(
            f"cannot listen for HTTP on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}"
            " (another process on this port? each worker and delivery process needs its own HTTP port)"
        )
