"""The gateway's exception tree.

::

    GatewayError
    ├── FrameError          a client frame is not an acceptable request → a JSON-RPC error reply
    ├── AuthError           a token is refused → HTTP 401 in the handshake, close 4401 afterwards
    │   └── SubjectMismatch     ``auth.refresh`` with a valid token for another user → error 4003
    ├── RpcError            a forwarded request got no reply → error 5003
    │   ├── RpcTimeout          the worker did not answer within ``HERALD_RPC_TIMEOUT``
    │   └── RpcUnavailable      the broker link is down (or went down while waiting)
    └── TopologyError       attaching or detaching a user kept failing

Everything raised across module boundaries inside ``gateway`` is one of these; library exceptions
(PyJWT, aiormq) are translated where they occur.
"""

from __future__ import annotations

from typing import Any

from shared.jsonrpc import JsonRpcError


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class FrameError(GatewayError, JsonRpcError):
    """A client frame cannot be served; becomes the error reply ``{code, message, data}``.

    The error shape is Herald's one :class:`~herald_client.protocol.JsonRpcError`, which the worker and
    the client use too. ``request_id`` is the frame's id when it could be read (and was valid), else
    ``None``. ``answered`` is false for a notification (a JSON object without an ``id`` member): JSON-RPC
    answers those with nothing, not even an error.
    """

    def __init__(self, code: int, message: str, data: Any = None, request_id: Any = None) -> None:
        JsonRpcError.__init__(self, code, message, data)
        self.request_id = request_id
        self.answered = True


class AuthError(GatewayError):
    """A token was refused; ``reason`` is short, safe to show to the client, and never echoes the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SubjectMismatch(AuthError):
    """``auth.refresh`` carried a valid token whose ``sub`` is not the connection's user."""


class RpcError(GatewayError):
    """A request forwarded to the worker got no reply."""


class RpcTimeout(RpcError):
    """The worker did not answer in time."""


class RpcUnavailable(RpcError):
    """The broker link is down, so the request could not be sent or its reply cannot arrive."""


class TopologyError(GatewayError):
    """Declaring or binding a user's exchange failed after every retry."""
