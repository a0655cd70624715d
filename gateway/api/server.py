"""uvicorn's httptools protocol with a cap on a request's head and a deadline for receiving it.

httptools buffers a request line and headers for as long as they keep coming: one connection sending a
200 MB header grew the process by 280 MB (measured), and one that sends nothing, or a byte now and then,
stays open for good, since uvicorn's keep-alive timer only runs between requests. h11 has a cap
(``h11_max_incomplete_event_size``) but parses in Python, slower than httptools on every request; so
this protocol keeps httptools and bounds what reaches it:

- the bytes received while a request's head is incomplete are counted, and past ``max_head_bytes`` the
  connection gets ``431`` and is closed. A head completed within one read is accepted, so the most that
  can be buffered is the cap plus one read of the event loop (256 KiB with uvloop);
- a head must be complete within ``head_timeout`` seconds of the connection opening, or of the previous
  response; otherwise ``408`` and the connection is closed (an idle keep-alive connection is closed
  sooner, by uvicorn's ``timeout_keep_alive``).

The gateway's WebSocket port needs neither: websockets caps the handshake's lines and headers itself, and
the gateway bounds the handshake's time (``HERALD_AUTH_TIMEOUT`` and the opening handshake timeout).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    import asyncio


def _refusal(status: HTTPStatus) -> bytes:
    reason = status.phrase.encode("ascii")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status.value, reason, len(reason), reason)
    )


_TOO_LARGE = _refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
_TIMED_OUT = _refusal(HTTPStatus.REQUEST_TIMEOUT)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; :func:`bounded_http` sets the limits."""

    max_head_bytes: ClassVar[int] = 16384
    head_timeout: ClassVar[float] = 10.0

    #: Bytes of the current head received so far; ``None`` once it is complete (body and response).
    _head_bytes: int | None = 0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_bytes is not None and self._head_bytes > self.max_head_bytes:
            self._refuse(_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._cancel_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # What follows is the next request's head, counted even while this one's response is computed: a
        # head sent meanwhile is buffered too (uvicorn stops reading only once it is complete).
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # A pipelined request already has its head; its response completing arms the deadline instead.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._refuse, _TIMED_OUT)

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _refuse(self, response: bytes) -> None:
        self._cancel_deadline()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


def bounded_http(max_head_bytes: int, head_timeout: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits (uvicorn instantiates it)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )
