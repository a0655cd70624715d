"""JSON-RPC 2.0 frames shared by the worker and the gateway (PROTOCOL §5).

The error shape and codes are defined once in ``herald_client.protocol`` (dependency-free, so the Python
client speaks the same vocabulary) and re-exported here.

Frames are built once, as bytes, with orjson: the worker serializes a ``notification:new`` frame a single
time and every gateway relays those bytes untouched.

The gateway → worker wire format on ``herald.rpc`` is a JSON object
``{"method", "params", "user_id", "admin"}``; the worker replies with exactly one of ``{"result": ...}`` or
``{"error": {"code", "message", "data"?}}``, so the gateway can splice the client's ``id`` in front of the
reply bytes without parsing them (:func:`splice_reply`).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from herald_client.protocol import CloseCode, ErrorCode, JsonRpcError

__all__ = [
    "VERSION",
    "CloseCode",
    "ErrorCode",
    "JsonRpcError",
    "dumps",
    "error_frame",
    "error_object",
    "notification_frame",
    "result_frame",
    "rpc_error",
    "rpc_request",
    "rpc_result",
    "splice_reply",
]

VERSION: Final = "2.0"


def dumps(value: Any) -> bytes:
    """Herald's JSON encoding of frames and message bodies: orjson, datetimes as RFC 3339 (UTC as ``Z``)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


def notification_frame(method: str, params: Any) -> bytes:
    """A server → client notification (no ``id``)."""
    return dumps({"jsonrpc": VERSION, "method": method, "params": params})


def result_frame(request_id: Any, result: Any) -> bytes:
    """A successful reply to the client request ``request_id``."""
    return dumps({"jsonrpc": VERSION, "id": request_id, "result": result})


def error_object(code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error object; ``data`` is omitted when ``None``."""
    return JsonRpcError(code, message, data).to_object()


def error_frame(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    """An error reply; ``request_id`` is ``None`` when the request's id could not be read."""
    return dumps({"jsonrpc": VERSION, "id": request_id, "error": error_object(code, message, data)})


#: Users one internal ``session.open_many`` request may name (docs/protocol.md, amendment 39).
SESSIONS_PER_REQUEST: Final = 64


def rpc_request(method: str, params: Any, user_id: str, admin: bool) -> bytes:
    """Gateway → worker request body: the client's method and params with the verified caller."""
    return dumps({"method": method, "params": params, "user_id": user_id, "admin": admin})


def rpc_result(result: Any) -> bytes:
    """Worker → gateway reply body carrying a result."""
    return dumps({"result": result})


def rpc_error(code: int, message: str, data: Any = None) -> bytes:
    """Worker → gateway reply body carrying an error."""
    return dumps({"error": error_object(code, message, data)})


def read_rpc_reply(body: bytes) -> tuple[Any, dict[str, Any] | None] | None:
    """``(result, None)`` or ``(None, error object)`` of a worker → gateway reply body; ``None`` when the
    body is neither shape. An ``error`` member that is not an object reads as ``{}``."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if "error" in document:
        error = document["error"]
        return None, error if isinstance(error, dict) else {}
    if "result" in document:
        return document["result"], None
    return None


def splice_reply(request_id: Any, reply_body: bytes) -> bytes:
    """Turn a worker reply body (``{"result": ...}`` / ``{"error": ...}``) into the client's frame.

    The reply is not parsed: the client's id and the version are written in front of its members.
    """
    head = b'{"jsonrpc":"2.0","id":' + dumps(request_id) + b","
    return head + reply_body.lstrip()[1:]
