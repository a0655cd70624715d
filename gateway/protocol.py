"""Client → gateway JSON-RPC frames: parsing, validation and the method table (PROTOCOL §5). Sans-I/O.

:func:`parse_request` turns one text frame into a :class:`Request` or raises :class:`FrameError` carrying
the JSON-RPC error the client gets back. The gateway answers ``auth``, ``auth.refresh`` and ``ping`` itself
and forwards the :data:`FORWARDED` methods to the worker with the params object untouched: the worker owns
their validation. Rules the gateway enforces on every frame:

- the frame is a JSON object with ``"jsonrpc": "2.0"`` and a string ``method`` (else -32700 / -32600);
- ``id`` is absent (a notification: served, never answered), ``null``, a string of at most
  :data:`MAX_ID_CHARS` characters, or an integer with ``|id| ≤ 2**53`` (else -32600, answered with id null);
- ``params`` is absent or an object that can be forwarded: at most :data:`MAX_NESTING` levels deep, what
  orjson writes (else -32602, ``data`` = ``"params"``);
- ``method`` is in the table (else -32601); the internal ``session.open`` is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.errors import FrameError
from shared.jsonrpc import VERSION, ErrorCode, rpc_request

MAX_ID_CHARS: Final = 128
MAX_INT_ID: Final = 2**53
MAX_TOKEN_CHARS: Final = 16 * 1024
#: RFC 6455 §5.5: a control frame's payload is at most 125 bytes, two of them the close code.
MAX_CLOSE_REASON_BYTES: Final = 123
#: orjson reads 1,024 levels of nesting but writes at most 254, and the body forwarded to the worker holds
#: ``params`` one level down: deeper params could not be forwarded.
MAX_NESTING: Final = 253
#: The message (``msg``) of ``orjson.JSONDecodeError`` for a document nested past orjson's own limit.
ORJSON_DEPTH_ERROR: Final = "depth limit exceeded"

AUTH: Final = "auth"
AUTH_REFRESH: Final = "auth.refresh"
PING: Final = "ping"
SESSION_OPEN: Final = "session.open"
SESSION_OPEN_MANY: Final = "session.open_many"
LOCAL: Final = frozenset({AUTH, AUTH_REFRESH, PING})
FORWARDED: Final = frozenset(
    {
        "notifications.list",
        "notifications.sync",
        "notifications.unread_count",
        "notifications.mark_read",
        "notifications.mark_unread",
        "notifications.mark_all_read",
        "notifications.delete",
        "notifications.mark_seen",
        "notifications.archive",
        "notifications.unarchive",
        "notifications.act",
        "preferences.get",
        "preferences.update",
        "preferences.reset",
        "notifications.broadcast",
        "profile.get",
        "push.vapid_key",
        "push.subscribe",
        "push.unsubscribe",
        "push.list",
        "deliveries.list",
    }
)
METHODS: Final = LOCAL | FORWARDED

_NO_ID: Final = object()


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request. ``is_notification`` requests (no ``id`` member) are served but never answered."""

    method: str
    params: dict[str, Any]
    id: Any = None
    is_notification: bool = False


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= MAX_ID_CHARS
    # bool is an int subclass; true/false are not ids.
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT_ID <= value <= MAX_INT_ID


def parse_request(frame: str | bytes) -> Request:
    """Parse and validate one client frame.

    Raises:
        FrameError: with the JSON-RPC error code for the first rule broken; ``request_id`` is the frame's
            id when that id itself is valid, so the client can match the error to its request.
    """
    try:
        document = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        if exc.msg == ORJSON_DEPTH_ERROR:
            # Nested past orjson's own limit (1024 levels) the frame cannot be read, its id neither; it
            # is refused for its depth (amendment 30), as one over MAX_NESTING levels that orjson reads.
            raise _nested_too_deep(None) from None
        raise FrameError(ErrorCode.PARSE_ERROR, "parse error: the frame is not JSON") from None
    if not isinstance(document, dict):
        raise FrameError(ErrorCode.INVALID_REQUEST, "invalid request: the frame must be a JSON object")
    try:
        return _request(document, frame)
    except FrameError as exc:
        # An object without "id" is a notification: refused as a request would be, but never answered.
        exc.answered = "id" in document
        raise


def _request(document: dict[str, Any], frame: str | bytes) -> Request:
    """The rules of :func:`parse_request` past "a JSON object"."""
    raw_id = document.get("id", _NO_ID)
    request_id = raw_id if raw_id is not _NO_ID and _valid_id(raw_id) else None
    if raw_id is not _NO_ID and not _valid_id(raw_id):
        raise FrameError(
            ErrorCode.INVALID_REQUEST,
            f"invalid request: id must be null, a string of at most {MAX_ID_CHARS} characters or an "
            f"integer of magnitude at most 2**53",
            "id",
        )
    if document.get("jsonrpc") != VERSION:
        raise FrameError(
            ErrorCode.INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', "jsonrpc", request_id
        )
    method = document.get("method")
    if not isinstance(method, str):
        raise FrameError(
            ErrorCode.INVALID_REQUEST, "invalid request: method must be a string", "method", request_id
        )
    if method not in METHODS:
        raise FrameError(ErrorCode.METHOD_NOT_FOUND, f"method not found: {method[:64]}", None, request_id)
    params = document.get("params", {})
    if not isinstance(params, dict):
        raise FrameError(
            ErrorCode.INVALID_PARAMS, "invalid params: params must be an object", "params", request_id
        )
    if too_deep(frame, params):
        raise _nested_too_deep(request_id)
    if method in (AUTH, AUTH_REFRESH):
        token_param(params, request_id)
    return Request(method, params, request_id, raw_id is _NO_ID)


def _nested_too_deep(request_id: Any) -> FrameError:
    return FrameError(
        ErrorCode.INVALID_PARAMS,
        f"invalid params: nested deeper than {MAX_NESTING} levels",
        "params",
        request_id,
    )


def too_deep(document: str | bytes, params: dict[str, Any]) -> bool:
    """Whether ``params``, read from ``document``, nest deeper than :data:`MAX_NESTING` levels: more than
    can be forwarded to the worker. The rule of frames here and of the HTTP API's bodies."""
    # Counting brackets is a cheap necessary condition; only a document with that many is re-encoded.
    raw = document.encode() if isinstance(document, str) else document
    if raw.count(b"{") + raw.count(b"[") <= MAX_NESTING:
        return False
    try:
        orjson.dumps({"params": params})  # at the depth the forwarded body holds them
    except orjson.JSONEncodeError:
        return True
    return False


def token_param(params: dict[str, Any], request_id: Any = None) -> str:
    """The ``token`` of ``auth`` / ``auth.refresh`` params; :class:`FrameError` -32602 naming it otherwise."""
    token = params.get("token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise FrameError(
            ErrorCode.INVALID_PARAMS,
            f"invalid params: token must be a non-empty string of at most {MAX_TOKEN_CHARS} characters",
            "token",
            request_id,
        )
    return token


def forward_body(request: Request, user_id: str, admin: bool) -> bytes:
    """The ``herald.rpc`` request body of the gateway ↔ worker contract."""
    return rpc_request(request.method, request.params, user_id, admin)


def session_open_body(user_id: str, admin: bool) -> bytes:
    """The ``session.open`` request body of one connect."""
    return rpc_request(SESSION_OPEN, {}, user_id, admin)


def session_open_many_body(user_ids: list[str]) -> bytes:
    """The ``session.open_many`` request body of concurrent connects; the envelope names the first user
    (it must name one), whom the method does not treat otherwise."""
    return rpc_request(SESSION_OPEN_MANY, {"user_ids": user_ids}, user_ids[0], False)


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry (:data:`MAX_CLOSE_REASON_BYTES` of UTF-8), never inside
    a character: a reason may quote the client's input, and a longer one fails the close itself."""
    return text.encode()[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
