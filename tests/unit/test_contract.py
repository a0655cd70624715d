"""The wire vocabulary stays in step across the SDK, the gateway and the worker (no I/O).

``herald_client.protocol`` defines the codes and limits once and the server imports them; the method
names are defined by each side on its own, so these tests hold them against one another.
"""

from __future__ import annotations

import herald_client.protocol as wire
from gateway import protocol as gateway_protocol
from shared import events, jsonrpc
from worker.requests.registry import METHODS as WORKER_METHODS


def test_every_method_the_python_client_calls_is_served() -> None:
    assert wire.CLIENT_METHODS <= gateway_protocol.METHODS


def test_the_gateway_forwards_exactly_the_worker_methods_a_client_may_call() -> None:
    internal = {gateway_protocol.SESSION_OPEN, gateway_protocol.SESSION_OPEN_MANY}
    assert set(gateway_protocol.FORWARDED) == set(WORKER_METHODS) - internal


def test_the_server_speaks_the_sdk_codes_and_limits() -> None:
    assert jsonrpc.ErrorCode is wire.ErrorCode
    assert jsonrpc.CloseCode is wire.CloseCode
    assert jsonrpc.JsonRpcError is wire.JsonRpcError
    for limit in (
        "MAX_BODY_BYTES",
        "MAX_TITLE_CHARS",
        "MAX_MESSAGE_CHARS",
        "USER_ID_PATTERN",
        "TYPE_PATTERN",
        "MAX_ACTIONS",
        "MAX_ACTION_LABEL_CHARS",
        "ACTION_ID_PATTERN",
        "MAX_URL_CHARS",
        "MAX_COLLAPSE_KEY_CHARS",
        "SOURCE_PATTERN",
    ):
        assert getattr(events, limit) == getattr(wire, limit), limit


def test_an_error_reply_has_one_shape_everywhere() -> None:
    error = wire.JsonRpcError(wire.ErrorCode.INVALID_PARAMS, "invalid params: limit: too big", "limit")
    assert jsonrpc.error_object(error.code, error.message, error.data) == error.to_object()
    assert error.to_object() == {"code": -32602, "message": "invalid params: limit: too big", "data": "limit"}


def test_every_method_a_client_may_call_has_an_http_route() -> None:
    """herald-api offers every client method the worker serves (docs/protocol.md §11)."""
    from gateway.api.routes import ROUTES

    internal = {gateway_protocol.SESSION_OPEN, gateway_protocol.SESSION_OPEN_MANY}
    assert set(WORKER_METHODS) - internal <= {route.method for route in ROUTES}
