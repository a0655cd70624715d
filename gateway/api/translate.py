"""HTTP ⇄ ``herald.rpc``: params from a request, the HTTP answer from a worker reply, ETags. Sans-I/O.

The worker validates every param (it owns the params models); this module only moves values from where
HTTP puts them into the params object, converting query-string text to the JSON types the worker's strict
models expect, and refuses what cannot be converted with the same error the worker would give (400,
``-32602``, ``data`` naming the member as the client spelled it).
"""

from __future__ import annotations

import hashlib
import math
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import orjson

from gateway.api.routes import Kind, Source
from gateway.protocol import MAX_NESTING, ORJSON_DEPTH_ERROR, too_deep
from shared.jsonrpc import ErrorCode, JsonRpcError, dumps, read_rpc_reply

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from gateway.api.routes import QueryParam, Route

#: The seed's page defaults (``?page=1&limit=20``), which the HTTP API keeps.
DEFAULT_PAGE: Final = 1
DEFAULT_LIMIT: Final = 20
MAX_INT: Final = 2**63 - 1
#: A refused token: the HTTP API's own code (§5 closes a socket with 4401 for the same cause).
UNAUTHORIZED_CODE: Final = int(ErrorCode.UNAUTHORIZED)

_STATUS_BY_CODE: Final = {
    ErrorCode.PARSE_ERROR: HTTPStatus.BAD_REQUEST,
    ErrorCode.INVALID_REQUEST: HTTPStatus.BAD_REQUEST,
    ErrorCode.INVALID_PARAMS: HTTPStatus.BAD_REQUEST,
    # The route exists but this deployment's worker does not serve its method (yet).
    ErrorCode.METHOD_NOT_FOUND: HTTPStatus.NOT_IMPLEMENTED,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    UNAUTHORIZED_CODE: HTTPStatus.UNAUTHORIZED,
}
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


class ApiError(JsonRpcError):
    """An error answer: Herald's error object ``{code, message, data}`` with its HTTP status."""

    def __init__(self, code: int, message: str, data: Any = None, status: int | None = None) -> None:
        super().__init__(code, message, data)
        self.status = status if status is not None else status_of(code)

    def body(self) -> bytes:
        return error_body(self.code, self.message, self.data)


def status_of(code: int) -> int:
    """The HTTP status of a JSON-RPC error code (500 for a code this version does not know)."""
    return int(_STATUS_BY_CODE.get(code, HTTPStatus.INTERNAL_SERVER_ERROR))


def error_body(code: int, message: str, data: Any = None) -> bytes:
    """``{"error": {"code", "message", "data"}}`` (``data`` is ``null`` when there is none)."""
    return dumps({"error": {"code": int(code), "message": message, "data": data}})


def bad_field(field: str, reason: str) -> ApiError:
    """400 / -32602 naming ``field``, worded like the worker's own invalid-params errors."""
    return ApiError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {reason}", field)


def _convert(param: QueryParam, spelling: str, values: list[str]) -> Any:
    if param.kind is Kind.LIST:
        return [item.strip() for value in values for item in value.split(",") if item.strip()]
    if len(values) > 1:
        raise bad_field(spelling, "given more than once")
    value = values[0].strip()
    if param.kind is Kind.INT:
        try:
            number = int(value)
        except ValueError:
            raise bad_field(spelling, "must be an integer") from None
        if not -MAX_INT <= number <= MAX_INT:
            raise bad_field(spelling, "out of range")
        return number
    lowered = value.lower()
    if param.kind is Kind.TRISTATE and lowered == "all":
        return None
    if param.kind in (Kind.BOOL, Kind.TRISTATE):
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        allowed = "true, false or all" if param.kind is Kind.TRISTATE else "true or false"
        raise bad_field(spelling, f"must be {allowed}")
    return value


def query_params(route: Route, items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Params from the query string; unknown members are refused (naming them), like unknown params."""
    by_spelling = {spelling: param for param in route.query for spelling in param.spellings}
    collected: dict[str, tuple[str, list[str]]] = {}
    for key, value in items:
        param = by_spelling.get(key)
        if param is None:
            raise bad_field(key, "unknown query parameter")
        spelling, values = collected.setdefault(param.name, (key, []))
        if spelling != key:
            raise bad_field(key, f"given twice (also as {spelling})")
        values.append(value)
    return {
        name: _convert(by_spelling[spelling], spelling, values)
        for name, (spelling, values) in collected.items()
    }


def _nested_too_deep() -> ApiError:
    return bad_field("body", f"nested deeper than {MAX_NESTING} levels")


def body_params(body: bytes) -> dict[str, Any]:
    """The JSON body as params (``{}`` when empty); 400 / -32700 when it is not JSON, 400 / -32602 naming
    ``body`` when it is not an object or nests deeper than can be forwarded (the rule of WebSocket frames,
    :func:`gateway.protocol.too_deep`)."""
    if not body.strip():
        return {}
    try:
        params = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson stops at its own limit (1024 levels) with this one message, before reading the rest: the
        # body is refused for its depth, as one over 253 levels that orjson can read is, not as "not JSON".
        if exc.msg == ORJSON_DEPTH_ERROR:
            raise _nested_too_deep() from None
        raise ApiError(ErrorCode.PARSE_ERROR, "parse error: the body is not JSON", "body") from None
    if not isinstance(params, dict):
        raise bad_field("body", "must be a JSON object")
    if too_deep(body, params):
        raise _nested_too_deep()
    return params


def params_for(route: Route, path: Mapping[str, str], query: Iterable[tuple[str, str]], body: bytes) -> Any:
    """The params object of ``route`` for one request (see :mod:`gateway.api.routes` for the sources).

    The query string is read on every route, so a member the route does not take is refused (400 naming
    it) wherever its params come from: a route without query params takes none."""
    from_query = query_params(route, query)
    if route.source is Source.QUERY:
        params: Any = from_query
        if route.shape == "page":
            params.setdefault("limit", DEFAULT_LIMIT)
            if "before" not in params:
                params.setdefault("page", DEFAULT_PAGE)
    elif route.source is Source.BODY:
        params = body_params(body)
    elif route.source is Source.PATH_ID:
        params = {"ids": [path["id"]]}
    elif route.source is Source.PATH_ACTION:
        params = {"id": path["id"], "action_id": path["action_id"]}
    else:
        params = {}
    if route.fixed and isinstance(params, dict):
        params.update(route.fixed)
    return params


def page_shape(params: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's page ``{data, total, page, limit, totalPages}`` beside Herald's cursor and counters
    (the badge's ``unseen_count`` too, as over WebSocket: amendment 10)."""
    limit = params["limit"]
    total = result["total"]
    return {
        "data": result["items"],
        "total": total,
        "page": params.get("page"),
        "limit": limit,
        "totalPages": math.ceil(total / limit),
        "next_cursor": result["next_cursor"],
        "unread_count": result["unread_count"],
        "unseen_count": result["unseen_count"],
    }


def answer(route: Route, params: Any, reply: bytes) -> tuple[int, bytes]:
    """The HTTP status and JSON body for the worker's reply to ``route``'s request."""
    read = read_rpc_reply(reply)
    if read is None:
        raise ApiError(ErrorCode.INTERNAL_ERROR, "internal error: unreadable reply from the worker")
    result, error = read
    if error is not None:
        code = int(error.get("code", ErrorCode.INTERNAL_ERROR))
        message = str(error.get("message", "error"))
        if code == ErrorCode.METHOD_NOT_FOUND:
            message = f"not implemented: this deployment does not serve {route.method} yet"
        return status_of(code), error_body(code, message, error.get("data"))
    if route.shape == "page":
        result = page_shape(params, result)
    return HTTPStatus.OK, dumps(result)


def etag_of(body: bytes) -> str:
    """A strong ETag of a response body (BLAKE2b, 128 bits)."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110 §13.1.2)."""
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates
