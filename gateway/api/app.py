"""``herald-api``'s ASGI application (Starlette): every route of :data:`gateway.api.routes.ROUTES`.

One request: verify ``Authorization: Bearer`` with the gateway's :class:`~gateway.auth.TokenVerifier`
(401), take a token of the user's bucket and one of the user's ``HERALD_MAX_USER_REQUESTS_IN_FLIGHT``
slots (429 when either is spent; the slot is held until the answer), build the params (400 naming the
member), send the same ``herald.rpc`` request a WebSocket client's frame becomes, with the verified user
id (:func:`shared.jsonrpc.rpc_request`) — so the worker runs the same method and publishes the same
events to the user's sockets — and translate the reply (:mod:`gateway.api.translate`). List and count
answers carry an ``ETag``; a matching ``If-None-Match`` gets 304.

Also served: ``/healthz``, ``/readyz`` (503 while the broker link is down), ``/metrics``, and the OpenAPI
document at ``/api/openapi.json`` (generated offline from the worker's params models and shipped with the
package). CORS follows ``HERALD_ALLOWED_ORIGINS`` (Starlette's ``CORSMiddleware``; unset = no cross-origin
access, since same-origin pages need none), spelled as the gateway compares them
(:func:`gateway.http.normalize_origin`).

Every request of a route is counted in ``herald_api_requests_total{method, status}`` and timed, whatever
ends it: a bug is counted ``500``; a client that hangs up before its body has arrived ``499`` (nginx's
"client closed request"), logged at debug level only, since it is the client's doing and nothing is left
to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from starlette.routing import Route as StarletteRoute

from gateway.api.routes import ROUTES
from gateway.api.translate import (
    UNAUTHORIZED_CODE,
    ApiError,
    answer,
    error_body,
    etag_of,
    matches,
    params_for,
)
from gateway.auth import TokenVerifier, bearer_token
from gateway.errors import AuthError, RpcTimeout, RpcUnavailable
from gateway.http import normalize_origin
from gateway.limits import KeyedBuckets, KeyedSlots
from gateway.rpc import RpcClient, RpcLink
from shared.jsonrpc import ErrorCode, rpc_request
from shared.topology import Topology

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

    from gateway.api.routes import Route
    from gateway.auth import Claims
    from shared.settings import Settings

log = structlog.get_logger("gateway.api")

OPENAPI_PATH: Final = Path(__file__).resolve().parent / "openapi.json"
#: Users whose rate-limit buckets are remembered at once (least recently seen forgotten first).
MAX_RATE_LIMITED_USERS: Final = 100_000
JSON: Final = "application/json"
#: The status label of a request whose client disconnected before it could be answered (nginx's).
CLIENT_CLOSED: Final = 499


class ApiMetrics:
    """The API's Prometheus series, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "herald_api_requests",
            "HTTP API requests by Herald method and HTTP status",
            ["method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "herald_api_request_seconds",
            "Latency of HTTP API requests, including the hop through the worker",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    # Answers are per user: no shared cache may keep them (list and count set their own policy).
    return Response(body, status, headers or {"Cache-Control": "no-store"}, media_type=JSON)


def _limited(message: str) -> Response:
    limited = ApiError(ErrorCode.RATE_LIMITED, message)
    # A token comes back within 1/rate seconds, a slot within HERALD_RPC_TIMEOUT; a whole second is the
    # HTTP granularity.
    return _json(limited.status, limited.body(), {"Retry-After": "1"})


class HttpApi:
    """The process's state (verifier, rate limits, RPC link) and its Starlette application (``.app``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings)
        self.buckets = KeyedBuckets(
            settings.rate_limit_per_second, settings.rate_limit_burst, MAX_RATE_LIMITED_USERS
        )
        self.in_flight = KeyedSlots(settings.max_user_requests_in_flight)
        self.rpc = RpcClient(
            Topology(settings.amqp_prefix).rpc_queue, settings.rpc_timeout, settings.amqp_user
        )
        self.link = RpcLink(
            settings.amqp_url,
            self.rpc,
            f"herald-api {settings.api_host}:{settings.api_port} pid {os.getpid()}",
        )
        self.metrics = ApiMetrics()
        self.openapi = OPENAPI_PATH.read_bytes()
        routes = [
            StarletteRoute(route.path, self._endpoint(route), methods=[route.verb], name=route.method)
            for route in ROUTES
        ]
        routes += [
            StarletteRoute("/healthz", self._healthz, methods=["GET"]),
            StarletteRoute("/readyz", self._readyz, methods=["GET"]),
            StarletteRoute("/metrics", self._metrics, methods=["GET"]),
            StarletteRoute("/api/openapi.json", self._openapi, methods=["GET"]),
        ]
        middleware = [
            Middleware(
                CORSMiddleware,
                allow_origins=[normalize_origin(origin) for origin in settings.allowed_origins or ()],
                allow_methods=sorted({route.verb for route in ROUTES}),
                allow_headers=["Authorization", "Content-Type", "If-None-Match"],
                expose_headers=["ETag"],
                max_age=600,
            )
        ]
        self.app = Starlette(
            routes=routes,
            middleware=middleware,
            exception_handlers={HTTPException: self._http_error, Exception: self._internal_error},
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self.link.run(), name="rpc-link")
        log.info("api listening", host=self.settings.api_host, port=self.settings.api_port)
        try:
            yield
        finally:
            await self.link.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.info("api stopped")

    def _endpoint(self, route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            # Anything that escapes (a bug, a cancellation) is answered 500 by _internal_error, if at all.
            status = HTTPStatus.INTERNAL_SERVER_ERROR.value
            try:
                response = await self._answer(route, request)
                status = response.status_code
                return response
            finally:
                self.metrics.requests.labels(route.method, str(status)).inc()
                self.metrics.request_seconds.labels(route.method).observe(time.perf_counter() - started)

        return endpoint

    async def _answer(self, route: Route, request: Request) -> Response:
        """The route's response, an :class:`ApiError`'s, or 499 for a client gone before its body came."""
        try:
            return await self._serve(route, request)
        except ApiError as exc:
            return _json(exc.status, exc.body())
        except ClientDisconnect:
            log.debug("api_client_disconnected", method=route.method, path=request.url.path)
            # Never sent (uvicorn drops a response to a gone client); returned rather than raised, which
            # Starlette would turn into a logged 500.
            return Response(status_code=CLIENT_CLOSED)

    async def _serve(self, route: Route, request: Request) -> Response:
        claims = await self._authenticate(request)
        if not self.buckets.take(claims.user_id, time.monotonic()):
            return _limited("rate limited")
        if not self.in_flight.take(claims.user_id):
            return _limited("rate limited: too many requests in flight")
        try:
            return await self._forward(route, request, claims)
        finally:
            self.in_flight.release(claims.user_id)

    async def _forward(self, route: Route, request: Request, claims: Claims) -> Response:
        body = await self._body(request)
        params = params_for(route, request.path_params, request.query_params.multi_items(), body)
        try:
            reply = await self.rpc.call(rpc_request(route.method, params, claims.user_id, claims.admin))
        except RpcTimeout:
            log.warning("rpc_timeout", method=route.method)
            raise ApiError(ErrorCode.UNAVAILABLE, "unavailable: the worker did not answer in time") from None
        except RpcUnavailable:
            log.warning("rpc_unavailable", method=route.method)
            raise ApiError(ErrorCode.UNAVAILABLE, "unavailable: no broker connection") from None
        status, payload = answer(route, params, reply)
        if not route.cacheable or status != 200:
            return _json(status, payload)
        etag = etag_of(payload)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if matches(request.headers.get("If-None-Match"), etag):
            return Response(status_code=304, headers=headers)
        return _json(status, payload, headers)

    async def _authenticate(self, request: Request) -> Claims:
        try:
            token = bearer_token(request.headers)  # AuthError when repeated, as at the gateway
            if not token:
                raise AuthError("missing bearer token" if token is None else "malformed Authorization header")
            return await self.verifier.verify(token)
        except AuthError as exc:
            raise ApiError(UNAUTHORIZED_CODE, f"unauthorized: {exc.reason}") from None

    async def _body(self, request: Request) -> bytes:
        """The request body, refused with 413 past ``HERALD_API_MAX_BODY_BYTES`` (before reading it all)."""
        limit = self.settings.api_max_body_bytes
        too_large = ApiError(
            ErrorCode.INVALID_REQUEST, f"request body over {limit} bytes", "body", status=413
        )
        declared = request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own 404 / 405 in Herald's error shape, with the exception's headers (a 405's
        ``Allow``, RFC 9110 §15.5.6)."""
        assert isinstance(exc, HTTPException)
        headers = {"Cache-Control": "no-store", **(exc.headers or {})}
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED and (allowed := self._allowed(request)):
            headers["Allow"] = allowed
        body = error_body(ErrorCode.METHOD_NOT_FOUND, exc.detail, request.url.path)
        return _json(exc.status_code, body, headers)

    def _allowed(self, request: Request) -> str:
        """Every verb served at the request's path. Starlette's ``Allow`` names only the first route whose
        path matches, but one path can have several (``GET`` and ``PUT …/preferences``; ``POST …/read`` and
        ``DELETE …/{id}``, whose ``{id}`` matches ``read``)."""
        verbs: set[str] = set()
        for route in self.app.routes:
            if isinstance(route, StarletteRoute) and route.matches(request.scope)[0] is not Match.NONE:
                verbs |= route.methods or set()
        return ", ".join(sorted(verbs))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        """A bug: logged with its traceback, answered in Herald's error shape (never a traceback)."""
        log.error("api_failed", path=request.url.path, exc_info=exc)
        return _json(500, error_body(ErrorCode.INTERNAL_ERROR, "internal error"))

    async def _healthz(self, request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def _readyz(self, request: Request) -> Response:
        if self.link.ready:
            return Response("ready\n", media_type="text/plain")
        return Response("broker link down\n", 503, media_type="text/plain")

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type="text/plain; version=0.0.4")

    async def _openapi(self, request: Request) -> Response:
        return _json(200, self.openapi)
