"""One WebSocket connection, from authentication to close.

1. Authenticated in the handshake (claims verified by :mod:`gateway.http`), or by a first-frame ``auth``
   within ``HERALD_AUTH_TIMEOUT``: its reply is ``{"user_id", "expires_at"}``; failure (a bad token, a
   first frame that is not a valid ``auth``, or silence) sends the error, then closes 4401.
2. Admitted by the hub (one connection over ``max_connections_per_user`` closes 4008), the user attached,
   ``session.open`` asked of the worker (within ``HERALD_RPC_TIMEOUT``), ``connected`` written.
3. Serves frames: every frame takes a token from the connection's bucket and from its user's bucket on
   this gateway (4029 when either is empty); ``ping`` and ``auth.refresh`` are answered here, the other
   client methods forwarded, many at once, each answered when the worker replies. At most
   ``max_requests_in_flight`` per connection and ``max_user_requests_in_flight`` per user await the
   worker: at either cap the gateway stops reading the connection until one is answered. Every reply
   is held to the send-buffer cap (a client that does not read its replies is closed 1013), and a reply
   waits for the socket to drain before the next frame is read. Bad frames get a JSON-RPC error; the
   connection stays open.
4. Closes with 4401 when the token expires without a successful ``auth.refresh`` for the same user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final

import structlog
from websockets.exceptions import ConnectionClosed

from gateway.auth import AuthState, rfc3339
from gateway.background import spawn
from gateway.errors import AuthError, FrameError, RpcTimeout, RpcUnavailable, SubjectMismatch
from gateway.http import release_handshake
from gateway.limits import TokenBucket
from gateway.opening import SessionOpener
from gateway.protocol import (
    AUTH,
    AUTH_REFRESH,
    PING,
    Request,
    close_reason,
    forward_body,
    parse_request,
    token_param,
)
from gateway.timers import Deadline, DeadlineQueue
from shared.jsonrpc import CloseCode, ErrorCode, error_frame, notification_frame, result_frame, splice_reply

if TYPE_CHECKING:
    from gateway.auth import Claims, TokenVerifier
    from gateway.http import HeraldConnection
    from gateway.hub import Hub, UserSlot
    from gateway.metrics import Metrics
    from gateway.rpc import RpcClient
    from shared.settings import Settings

log = structlog.get_logger("gateway.session")

UNAUTHORIZED: Final = int(ErrorCode.UNAUTHORIZED)
_ERROR_PREFIX: Final = b'{"error"'


class Sessions:
    """The WebSocket handler (``serve(handler=sessions.handle)``) and what every connection shares: the
    settings, token verifier, hub, RPC client, metrics and the process-wide expiry queue."""

    def __init__(
        self, settings: Settings, verifier: TokenVerifier, hub: Hub, rpc: RpcClient, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.hub = hub
        self.rpc = rpc
        self.metrics = metrics
        self.deadlines = DeadlineQueue()
        self.opener = SessionOpener(rpc)

    async def handle(self, connection: HeraldConnection) -> None:
        """Serve ``connection`` until it closes; see the module docstring."""
        release_handshake(connection)
        auth = AuthState(connection.handshake_claims)
        if not auth.authenticated and not await self._first_frame_auth(connection, auth):
            return
        claims = auth.claims
        assert claims is not None
        admitted = self.hub.admit(connection, claims.user_id)
        if isinstance(admitted, CloseCode):
            await self._close(connection, admitted, "too many connections for this user")
            return
        session = _Session(self, connection, auth, admitted)
        try:
            await session.run()
        finally:
            session.stop()
            await self.hub.release(connection, admitted)

    async def _first_frame_auth(self, connection: HeraldConnection, auth: AuthState) -> bool:
        request_id: Any = None
        try:
            async with asyncio.timeout(self.settings.auth_timeout):
                frame = await connection.recv(decode=False)
            request = parse_request(frame)
            request_id = request.id
            if request.method != AUTH:
                raise FrameError(
                    ErrorCode.INVALID_REQUEST, "the first frame must be auth", "method", request.id
                )
            claims = await self.verifier.verify(token_param(request.params, request.id))
        except TimeoutError:
            await self._close(connection, CloseCode.UNAUTHORIZED, "authentication timed out")
            return False
        except ConnectionClosed:
            return False
        except (FrameError, AuthError) as exc:
            self.metrics.auth_failures.labels("frame").inc()
            reason = exc.reason if isinstance(exc, AuthError) else exc.message
            if isinstance(exc, FrameError):
                request_id = exc.request_id
            with contextlib.suppress(ConnectionClosed):
                await connection.send(
                    error_frame(request_id, UNAUTHORIZED, f"authentication failed: {reason}"), text=True
                )
            await self._close(connection, CloseCode.UNAUTHORIZED, f"authentication failed: {reason}")
            return False
        auth.authenticate(claims)
        with contextlib.suppress(ConnectionClosed):
            await connection.send(
                result_frame(
                    request_id, {"user_id": claims.user_id, "expires_at": rfc3339(claims.expires_at)}
                ),
                text=True,
            )
        return True

    async def _close(self, connection: HeraldConnection, code: CloseCode, reason: str) -> None:
        self.metrics.closes.labels(str(int(code))).inc()
        await connection.close(code, close_reason(reason))


class _Session:
    """State of one admitted connection: its token, rate limit, expiry timer and requests in flight."""

    __slots__ = ("_auth", "_bucket", "_connection", "_expiry", "_owner", "_requests", "_slot", "_tasks")

    _tasks: set[asyncio.Task[None]] | None
    _requests: asyncio.Semaphore | None

    def __init__(
        self, owner: Sessions, connection: HeraldConnection, auth: AuthState, slot: UserSlot
    ) -> None:
        self._owner = owner
        self._connection = connection
        self._auth = auth
        self._slot = slot
        settings = owner.settings
        loop = asyncio.get_running_loop()
        self._bucket = TokenBucket(settings.rate_limit_per_second, settings.rate_limit_burst, loop.time())
        # Both created with the first forwarded request: most connections never send one.
        self._tasks = None
        self._requests = None
        self._expiry: Deadline | None = None

    @property
    def _claims(self) -> Claims:
        claims = self._auth.claims
        assert claims is not None
        return claims

    async def run(self) -> None:
        owner, connection = self._owner, self._connection
        self._schedule_expiry()
        if not await owner.hub.attach(self._slot):
            # The hub is closing it 1013, so that its client reconnects and syncs rather than hearing
            # nothing; returning at once would close it 1000 first, as the handler's end does.
            await connection.wait_closed()
            return
        params: dict[str, Any] = {"user_id": self._claims.user_id, "connection_id": str(connection.id)}
        since = self._slot.prefs_version
        opened = await self._session_open()
        if opened is not None:
            owner.hub.set_preferences(self._slot, opened.get("preferences"), since)
            for key in ("unread_count", "unseen_count", "last_seq"):
                if key in opened:
                    params[key] = opened[key]
        try:
            await connection.send(notification_frame("connected", params), text=True)
        except ConnectionClosed:
            return
        owner.hub.go_live(connection, self._slot)
        # The receive loop lives here rather than in its own coroutine: one frame less per idle connection.
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await connection.recv(decode=False)
            except ConnectionClosed:
                return
            await self._dispatch(frame, loop.time())

    def stop(self) -> None:
        """The connection is over: cancel the expiry timer and the requests still waiting for the worker."""
        if self._expiry is not None:
            self._owner.deadlines.cancel(self._expiry)
        for task in self._tasks or ():
            task.cancel()

    async def _session_open(self) -> dict[str, Any] | None:
        user_id = self._claims.user_id
        try:
            opened = await self._owner.opener.open(user_id)
        except (RpcTimeout, RpcUnavailable) as exc:
            log.warning("session.open unanswered; connected without counts", user_id=user_id, error=str(exc))
            return None
        if opened is None:
            log.warning("session.open failed; connected without counts", user_id=user_id)
        return opened

    async def _dispatch(self, frame: bytes, now: float) -> None:
        """Answer or forward one client frame; every frame takes a rate-limit token."""
        allowed = self._bucket.take(now) and self._slot.bucket.take(now)
        try:
            request = parse_request(frame)
        except FrameError as exc:
            self._owner.metrics.requests.labels("-", "invalid").inc()
            if not exc.answered:
                return
            if allowed:
                await self._send(error_frame(exc.request_id, exc.code, exc.message, exc.data))
            else:
                await self._send(error_frame(exc.request_id, ErrorCode.RATE_LIMITED, "rate limited"))
            return
        if not allowed:
            self._owner.metrics.requests.labels(request.method, "rate_limited").inc()
            await self._reply(request, error_frame(request.id, ErrorCode.RATE_LIMITED, "rate limited"))
        elif request.method == PING:
            self._owner.metrics.requests.labels(PING, "ok").inc()
            await self._reply(request, result_frame(request.id, "pong"))
        elif request.method == AUTH_REFRESH:
            await self._reply(request, await self._refresh(request))
        elif request.method == AUTH:
            self._owner.metrics.requests.labels(AUTH, "invalid").inc()
            await self._reply(
                request,
                error_frame(request.id, ErrorCode.INVALID_REQUEST, "already authenticated; use auth.refresh"),
            )
        else:
            await self._start_forward(request)

    async def _start_forward(self, request: Request) -> None:
        """Forward ``request`` in its own task once both in-flight caps allow it.

        Awaited by the receive loop, so at a cap the connection is not read (its frames wait in the socket,
        and TCP slows the client down) until a request of the connection or its user is answered.
        """
        if self._tasks is None or self._requests is None:
            self._tasks = set()
            self._requests = asyncio.Semaphore(self._owner.settings.max_requests_in_flight)
        connection_slots, user_slots = self._requests, self._slot.requests
        await connection_slots.acquire()
        try:
            await user_slots.acquire()
        except BaseException:
            connection_slots.release()
            raise
        task = asyncio.create_task(self._forward(request))
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            # A done callback runs even for a task cancelled before it started: the slots always return.
            assert self._tasks is not None
            self._tasks.discard(done)
            connection_slots.release()
            user_slots.release()

        task.add_done_callback(finished)

    async def _refresh(self, request: Request) -> bytes:
        metrics = self._owner.metrics
        try:
            claims = await self._owner.verifier.verify(token_param(request.params, request.id))
            self._auth.refresh(claims)
        except SubjectMismatch as exc:
            metrics.auth_failures.labels("refresh").inc()
            metrics.requests.labels(AUTH_REFRESH, "error").inc()
            return error_frame(request.id, ErrorCode.FORBIDDEN, exc.reason, "token")
        except AuthError as exc:
            metrics.auth_failures.labels("refresh").inc()
            metrics.requests.labels(AUTH_REFRESH, "error").inc()
            return error_frame(request.id, ErrorCode.INVALID_PARAMS, f"token refused: {exc.reason}", "token")
        self._schedule_expiry()
        metrics.requests.labels(AUTH_REFRESH, "ok").inc()
        return result_frame(request.id, {"expires_at": rfc3339(claims.expires_at)})

    async def _forward(self, request: Request) -> None:
        metrics = self._owner.metrics
        claims = self._claims
        started = time.perf_counter()
        try:
            reply = await self._owner.rpc.call(forward_body(request, claims.user_id, claims.admin))
        except RpcTimeout:
            outcome, frame = (
                "timeout",
                error_frame(request.id, ErrorCode.UNAVAILABLE, "the worker did not answer in time"),
            )
        except RpcUnavailable:
            outcome, frame = (
                "unavailable",
                error_frame(request.id, ErrorCode.UNAVAILABLE, "service unavailable"),
            )
        else:
            outcome = "error" if reply.lstrip().startswith(_ERROR_PREFIX) else "ok"
            frame = splice_reply(request.id, reply)
        metrics.requests.labels(request.method, outcome).inc()
        metrics.request_seconds.labels(request.method).observe(time.perf_counter() - started)
        await self._reply(request, frame)

    async def _reply(self, request: Request, frame: bytes) -> None:
        if not request.is_notification:
            await self._send(frame)

    async def _send(self, frame: bytes) -> None:
        if not self._owner.hub.writable(self._connection):
            return
        with contextlib.suppress(ConnectionClosed):
            await self._connection.send(frame, text=True)

    def _schedule_expiry(self) -> None:
        deadlines = self._owner.deadlines
        if self._expiry is not None:
            deadlines.cancel(self._expiry)
        self._expiry = deadlines.schedule(self._claims.expires_at, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        if not self._auth.expired(time.time()):
            self._schedule_expiry()
            return
        self._owner.metrics.closes.labels(str(UNAUTHORIZED)).inc()
        spawn(self._connection.close(CloseCode.UNAUTHORIZED, "token expired"))
