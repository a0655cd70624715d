"""The client's exception tree.

::

    HeraldError
    ├── HeraldRequestError      the server answered with a JSON-RPC error (also a ``JsonRpcError``)
    ├── HeraldTimeoutError      no reply within the request timeout (also a ``TimeoutError``)
    ├── HeraldConnectionError   the socket dropped while the request was in flight (a ``ConnectionError``)
    └── HeraldClosedError       the client has stopped for good
        └── HeraldAuthError         authentication gave up
"""

from __future__ import annotations

from typing import Any

from herald_client.protocol import JsonRpcError


class HeraldError(Exception):
    """Base class of every error this module raises."""


class HeraldRequestError(HeraldError, JsonRpcError):
    """The server answered a request with a JSON-RPC error.

    ``code`` is the JSON-RPC code (PROTOCOL §5: ``-32602`` invalid params with ``data`` naming the field,
    ``4003`` forbidden, ``4029`` rate limited, ``5003`` worker unavailable, ...), ``message`` the server's
    text and ``data`` its optional details.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        JsonRpcError.__init__(self, code, message, data)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.data!r})" if self.data is not None else "")


class HeraldTimeoutError(HeraldError, TimeoutError):
    """No reply within the request timeout (the request may still have been applied)."""


class HeraldConnectionError(HeraldError, ConnectionError):
    """The connection dropped while the request was in flight (it may or may not have been applied)."""


class HeraldClosedError(HeraldError):
    """The client has stopped for good (closed by the caller, 4008, or authentication gave up).

    ``code``/``reason`` are the last close code and reason, or ``None`` when the caller closed it.
    """

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class HeraldAuthError(HeraldClosedError):
    """The token provider raised, or the server refused fresh tokens repeatedly (4401)."""
