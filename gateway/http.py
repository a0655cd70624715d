"""Plain HTTP on the WebSocket port, and the checks a WebSocket handshake must pass (``process_request``).

Routes (anything else is 404): ``/healthz`` (the process answers), ``/readyz`` (503 while the broker link
is down), ``/metrics`` (Prometheus), ``/dev/token?user=U[&admin=1]`` (only with ``HERALD_DEV_TOKENS=1``
and a loopback ``Host``), ``/`` and ``/assets/<file>`` (the React demo inbox, built into
``clients/demo/dist/`` by ``.ci/build-clients``; ``/`` falls back to the plain page while it is not
built), ``/plain.html`` and ``/static/<file>`` (from ``gateway/static/``), ``/sw.js`` (the Web Push
service worker, from ``gateway/static/``, at the root so its scope is the whole origin),
``/client/herald.js``, the modules it imports (``/client/lib/*.js``) and
``/client/herald.d.ts`` (the browser client, from ``clients/js/``).

A WebSocket handshake must target ``/notifications`` (else 404) from an allowed Origin (else 403); a
token in ``Authorization: Bearer`` or ``?token=`` must verify (else 401), and its claims travel on the
connection to the handler. Without a token the handler expects a first-frame ``auth``.

A request with ``Host``, ``Upgrade`` or (on a handshake) ``Origin`` given more than once is 400, one with
``Authorization`` given more than once 401: which value counts would be a guess.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import mimetypes
import time
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import parse_qs, urlsplit

import orjson
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from gateway.auth import Claims, RepeatedHeader, handshake_token, rfc3339, single_header
from gateway.errors import AuthError
from gateway.limits import lagging
from shared.events import is_valid_user_id
from shared.resources import resource_dir
from shared.tokens import TokenError, mint_dev_token

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from websockets.http11 import Request

    from gateway.auth import TokenVerifier
    from gateway.metrics import Metrics
    from shared.settings import Settings

log = structlog.get_logger("gateway.http")

WS_PATH: Final = "/notifications"
DEV_TOKEN_TTL: Final = 3600.0
#: The browser client's files (``@herald/client``): the entry module, its types and the modules it imports.
CLIENT_FILES: Final = frozenset(
    {
        "herald.js",
        "herald.d.ts",
        "lib/api.js",
        "lib/client.js",
        "lib/counts.js",
        "lib/shared.js",
        "lib/tracking.js",
    }
)
_PACKAGE_DIR: Final = Path(__file__).resolve().parent


class HeraldConnection(ServerConnection):
    """A server connection that carries the claims verified during the handshake (``None`` otherwise)
    and bounds what a peer that does not read can make it hold; :func:`connection_type` sets the cap."""

    #: The send-buffer cap (``HERALD_SEND_BUFFER_BYTES``) and what is done with a connection past it.
    send_buffer_bytes: ClassVar[int | None] = None
    on_lagging: ClassVar[Callable[[ServerConnection], None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_claims: Claims | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # websockets answers pings (and close frames) itself, past the send-buffer check the hub makes
        # before relayed frames and replies: a peer that pings and never reads grew the process by
        # 560 MiB in 12 s (measured), authenticated or not. Checked after what it sent was answered.
        cap = self.send_buffer_bytes
        if cap is not None and lagging(self.transport.get_write_buffer_size(), cap):
            type(self).on_lagging(self)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """websockets' closing handshake, bounded in time.

        websockets waits for the send buffer to drain before its ``close_timeout`` starts, and a peer
        that stopped reading never lets it: the connection, its handler and a SIGTERM's shutdown waited
        for good. Past twice the close timeout the TCP connection is aborted.
        """
        if self.close_timeout is None:
            await super().close(code, reason)
            return
        try:
            async with asyncio.timeout(2 * self.close_timeout):
                await super().close(code, reason)
        except TimeoutError:
            self.transport.abort()


def connection_type(
    send_buffer_bytes: int, on_lagging: Callable[[ServerConnection], None]
) -> type[HeraldConnection]:
    """The connection class for ``serve(create_connection=...)``: a connection whose send buffer passes
    ``send_buffer_bytes`` while its peer sends is handed to ``on_lagging`` (the hub drops it at once,
    1013: :meth:`gateway.hub.Hub.drop_flooder`)."""
    return type(
        "HeraldConnection",
        (HeraldConnection,),
        {"send_buffer_bytes": send_buffer_bytes, "on_lagging": staticmethod(on_lagging)},
    )


_NO_HEADERS: Final = Headers()


def release_handshake(connection: ServerConnection) -> None:
    """Drop what the opening handshake left on ``connection`` once it is no longer needed.

    websockets keeps the request and response (headers, and the ``?token=`` credential in the path) for
    the connection's lifetime but never reads them after the handshake: ~2.5 KiB per idle connection,
    an eighth of the budget. The objects stay; their headers become one shared empty ``Headers`` (never
    mutated) and the path loses its query.
    """
    request, response = connection.request, connection.response
    if request is not None:
        request.headers = _NO_HEADERS
        request.path = request.path.partition("?")[0]
    if response is not None:
        response.headers = _NO_HEADERS
        response.body = b""


def normalize_origin(origin: str) -> str:
    """``origin`` as a browser sends it: ``scheme://host[:port]`` in lower case, without a trailing slash.

    The one spelling of ``HERALD_ALLOWED_ORIGINS`` entries for both edges: the gateway compares a
    handshake's Origin with it, and herald-api hands it to Starlette's CORS middleware, which compares
    the browser's Origin verbatim.
    """
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...] | None) -> bool:
    """The Origin policy: Origin-less clients and same-origin pages always; others only when listed.

    ``allowed`` is ``HERALD_ALLOWED_ORIGINS`` (``None`` = unset; ``"*"`` allows every origin). Origins are
    compared as ``scheme://host[:port]``, case-insensitively (:func:`normalize_origin`).
    """
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    if allowed is not None and ("*" in allowed or normalized in {normalize_origin(a) for a in allowed}):
        return True
    if host is None:
        return False
    try:
        return urlsplit(normalized).netloc == host.strip().lower()
    except ValueError:  # e.g. "http://[": not an origin, so not the same one (403, not a 500)
        return False


def loopback_host(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, ``127.x.x.x``, ``[::1]``).

    ``/dev/token`` answers only then: a page under another name that resolves to 127.0.0.1 (DNS
    rebinding), or a proxy that forwards its own Host, gets nothing.
    """
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_static(root: Path, relative: str) -> Path | None:
    """The file ``relative`` under ``root``, or ``None`` if it is missing or escapes ``root``."""
    if not relative or "\x00" in relative:
        return None
    base = root.resolve()
    try:
        candidate = (base / relative).resolve()
        if not candidate.is_relative_to(base) or not candidate.is_file():
            return None
    except (OSError, ValueError):  # a name too long for the file system, say: no such file
        return None
    return candidate


def _is_upgrade(headers: Headers) -> bool:
    return "websocket" in (single_header(headers, "Upgrade") or "").lower()


def _response(
    status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
) -> Response:
    code = HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    for name, value in (extra or {}).items():
        headers[name] = value
    return Response(code.value, code.phrase, headers, body)


def _text(status: int, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


class HttpRoutes:
    """The ``process_request`` callable; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier,
        metrics: Metrics,
        ready: Callable[[], bool],
        static_dir: Path | None = None,
        client_dir: Path | None = None,
        demo_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._metrics = metrics
        self._ready = ready
        self._static_dir = static_dir or _PACKAGE_DIR / "static"
        self._client_dir = client_dir or resource_dir("clients", "js")
        self._demo_dir = demo_dir or resource_dir("clients", "demo", "dist")

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        try:
            host = single_header(request.headers, "Host")
            if _is_upgrade(request.headers):
                return await self._handshake(connection, request.headers, host, path, query)
            return self._route(path, query, host)
        except RepeatedHeader as exc:  # RFC 9112 §3.2 asks 400 of two Hosts, and the rest is as ambiguous
            return _text(400, f"Bad Request: {exc}\n")

    async def _handshake(
        self, connection: ServerConnection, headers: Headers, host: str | None, path: str, query: str
    ) -> Response | None:
        if path != WS_PATH:
            return _text(404, "Not Found\n")
        if not origin_allowed(single_header(headers, "Origin"), host, self._settings.allowed_origins):
            return _text(403, "Forbidden: origin not allowed\n")
        try:
            token = handshake_token(headers, query)
            if token is None:
                return None
            claims = await self._verifier.verify(token)
        except AuthError as exc:
            self._metrics.auth_failures.labels("handshake").inc()
            return _text(401, f"Unauthorized: {exc.reason}\n")
        if isinstance(connection, HeraldConnection):
            connection.handshake_claims = claims
        return None

    def _route(self, path: str, query: str, host: str | None) -> Response:
        if path == "/healthz":
            return _text(200, "ok\n")
        if path == "/readyz":
            return _text(200, "ready\n") if self._ready() else _text(503, "broker link down\n")
        if path == "/metrics":
            return _response(200, self._metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/dev/token":
            return self._dev_token(query) if loopback_host(host) else _text(404, "Not Found\n")
        if path in ("/", "/index.html"):
            if resolve_static(self._demo_dir, "index.html") is None:  # not built: the plain page
                return self._file(self._static_dir, "plain.html")
            return self._file(self._demo_dir, "index.html")
        if path.startswith("/assets/"):
            return self._file(self._demo_dir, path.removeprefix("/"))
        if path == "/plain.html":
            return self._file(self._static_dir, "plain.html")
        if path == "/sw.js":  # at the root, so its scope is the whole origin
            return self._file(self._static_dir, "sw.js")
        if path.startswith("/static/"):
            return self._file(self._static_dir, path.removeprefix("/static/"))
        if path.startswith("/client/") and path.removeprefix("/client/") in CLIENT_FILES:
            return self._file(self._client_dir, path.removeprefix("/client/"))
        return _text(404, "Not Found\n")

    def _file(self, root: Path, relative: str) -> Response:
        found = resolve_static(root, relative)
        if found is None:
            return _text(404, "Not Found\n")
        content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        if found.suffix == ".ts":
            content_type = "application/typescript"
        if content_type.startswith("text/") or content_type.endswith(("javascript", "typescript", "json")):
            content_type += "; charset=utf-8"
        return _response(200, found.read_bytes(), content_type)

    def _dev_token(self, query: str) -> Response:
        if not self._settings.dev_tokens:
            return _text(404, "Not Found\n")
        params = parse_qs(query)
        user = params.get("user", [""])[0]
        if not is_valid_user_id(user):
            return _text(400, "Bad Request: user must be 1-128 characters of [A-Za-z0-9._:@-]\n")
        admin = params.get("admin", ["0"])[0] in ("1", "true", "yes")
        try:
            token = mint_dev_token(self._settings, user, admin=admin, ttl=DEV_TOKEN_TTL)
        except TokenError as exc:
            return _text(500, f"cannot mint a dev token: {exc}\n")
        body = {
            "token": token,
            "user_id": user,
            "admin": admin,
            "expires_at": rfc3339(time.time() + DEV_TOKEN_TTL),
        }
        return _response(200, orjson.dumps(body), "application/json")
