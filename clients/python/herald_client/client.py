"""Async Python client for Herald's WebSocket protocol (PROTOCOL §5), built on ``websockets``.

Semantics (the same as ``clients/js/herald.js``):

- **Authentication** is always the first frame (``auth``), never the URL. ``token_provider`` (a plain or
  async callable returning a JWT) is called on every (re)connect and again shortly before the current
  token's ``exp`` (read from the JWT payload, not verified) to send ``auth.refresh``.
- **Reconnects** go to the next of the gateway URLs given (one or several) and, once every URL failed in
  a row, wait with exponential backoff with full jitter (:mod:`herald_client.reconnect`).
  Close code 4401 fetches a fresh token and reconnects (the client stops after two authentication
  failures in a row, or when the token provider raises); 4008 (too many connections) stops the client;
  every other close — 1001 shutdown, 1013 slow reader, network loss — reconnects.
- **Nothing missed, nothing twice**, the counts and collapsed notifications: see
  :mod:`herald_client.inbox`.

Usage::

    async with HeraldClient("ws://127.0.0.1:8765/notifications", get_token) as client:
        page = await client.list_notifications(limit=10)
        async for event in client.events():
            print(event.method, event.params)

Events (``Event.method``): the server's notification methods (``connected``, ``notification:new``,
``notification:read``, ``notification:unread``, ``notification:deleted``, ``preferences:updated``,
``notification:seen``, ``notification:archived``, ``notification:unarchived``, ``notification:acted``,
``sync:required``) plus the client's own ``unread`` and ``unseen`` (``{"count"}``), ``state`` (``{"state"}``:
one of ``connecting``, ``open``, ``reconnecting``, ``closed``), ``disconnected`` (``{"code", "reason",
"retry_in"}``) and ``closed`` (``{"code", "reason"}``: the client stopped for good). Notifications
recovered by a sync arrive as ``notification:new`` with ``Event.replayed`` true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Literal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from herald_client.calls import PendingCalls
from herald_client.errors import (
    HeraldAuthError,
    HeraldClosedError,
    HeraldConnectionError,
    HeraldError,
    HeraldRequestError,
    HeraldTimeoutError,
)
from herald_client.events import Event, EventStream
from herald_client.inbox import InboxView
from herald_client.reconnect import Reconnect
from herald_client.tokens import fetch_token, token_expiry
from herald_client.urls import url_problem

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from websockets.asyncio.client import ClientConnection

    from herald_client.tokens import TokenProvider

    Listener = Callable[["Event"], Any]

__all__ = [
    "Event",
    "HeraldAuthError",
    "HeraldClient",
    "HeraldClosedError",
    "HeraldConnectionError",
    "HeraldError",
    "HeraldRequestError",
    "HeraldTimeoutError",
]

log = logging.getLogger("herald.client")

#: Largest server frame accepted: a full sync page of maximal notifications (~10.5 KiB each) fits.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024

State = Literal["idle", "connecting", "open", "reconnecting", "closed"]


class HeraldClient(InboxView):
    """A self-healing connection to a Herald gateway; see the module docstring for the semantics.

    Parameters:
        url: ``ws(s)://HOST:PORT/notifications``, or several gateways' URLs: the client fails over
            between them (:mod:`herald_client.reconnect`).
        token_provider: returns a JWT (sync or async); called per connect and before expiry.
        request_timeout: default seconds :meth:`request` waits for a reply, including the time spent
            waiting for a connection when the client is reconnecting.
        backoff_base, backoff_max: reconnect delays, seconds (full jitter).
        refresh_margin: refresh the token this many seconds before ``exp`` (at most half its lifetime).
        open_timeout: seconds for the handshake plus authentication.

    Raises:
        ValueError: a ``url`` is no WebSocket URL (its scheme, host or port).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token_provider: TokenProvider,
        *,
        request_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        refresh_margin: float = 60.0,
        open_timeout: float = 15.0,
    ) -> None:
        super().__init__()
        urls = (url,) if isinstance(url, str) else tuple(url)
        for each in urls:
            problem = url_problem(each, ("ws", "wss"))
            if problem is not None:
                # Refused here: the reconnect loop would retry a URL it cannot parse forever.
                raise ValueError(f"url: {problem}")
        self._reconnect = Reconnect(urls, backoff_base, backoff_max)
        self._token_provider = token_provider
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.refresh_margin = refresh_margin
        self.open_timeout = open_timeout

        self.state: State = "idle"
        self.user_id: str | None = None
        self.connection_id: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""

        self._calls = PendingCalls()
        self._stream = EventStream(self._spawn)
        self._ws: ClientConnection | None = None
        self._open = asyncio.Event()
        self._opened_at = 0.0  # when the current session's ``connected`` arrived (time.monotonic)
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._first_open: asyncio.Future[None] | None = None
        self._closing = False

    @property
    def url(self) -> str:
        """The gateway URL of the current (or next) connection."""
        return self._reconnect.url

    # ----------------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> HeraldClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and authenticate; returns once the first ``connected`` frame arrived.

        Raises :class:`HeraldAuthError` / :class:`HeraldClosedError` when the client stops before that;
        network failures are retried with backoff, so this waits as long as the gateway is unreachable.
        Cancelled (or timed out), it closes the client.
        """
        if self._runner is None:
            self._first_open = asyncio.get_running_loop().create_future()
            self._runner = asyncio.create_task(self._run(), name="herald-client")
        assert self._first_open is not None
        try:
            await asyncio.shield(self._first_open)
        except BaseException:
            # ``__aexit__`` does not run when ``__aenter__`` fails, and the shield keeps the runner going:
            # without this, a timed-out start would leave a client reconnecting for the life of the loop.
            await self.close()
            self._first_open.exception()  # taken: no "exception never retrieved" for the wait given up
            raise

    async def close(self) -> None:
        """Stop for good: close the socket, fail pending requests, end every :meth:`events` iterator."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._stop(None, "closed by the client", HeraldClosedError("client closed"))

    async def wait_closed(self) -> None:
        """Wait until the client stops for good (after :meth:`close`, 4008 or an authentication failure)."""
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._runner)

    # -------------------------------------------------------------------------------------------- events

    def on(self, method: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event named ``method`` (``"*"`` = all); returns an unsubscriber.

        A listener may be a plain function or a coroutine function (its coroutine is run as a task).
        """
        return self._stream.on(method, listener)

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on, in order; ends when the client stops for good."""
        return self._stream.events()

    def _emit(self, method: str, params: Any, replayed: bool = False, replaces: bool = False) -> None:
        self._stream.emit(Event(method, params, replayed, replaces))

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self._emit("state", {"state": state})

    # ------------------------------------------------------------------------------------------ requests

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request budget is the documented API
    ) -> Any:
        """Send a JSON-RPC request and return its ``result``.

        Waits for the connection when the client is reconnecting; the whole wait is bounded by ``timeout``
        (default :attr:`request_timeout`). Raises :class:`HeraldRequestError` for an error reply,
        :class:`HeraldTimeoutError`, :class:`HeraldConnectionError` if the socket dropped meanwhile, or
        :class:`HeraldClosedError` once the client stopped.
        """
        budget = self.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        try:
            async with asyncio.timeout(budget):
                while True:
                    if self.state == "closed":
                        raise HeraldClosedError("client is closed", self.close_code, self.close_reason)
                    await self._open.wait()
                    ws = self._ws
                    if self.state == "open" and ws is not None:
                        break
                return await self._calls.call(ws, method, params, deadline - time.monotonic())
        except TimeoutError as exc:
            if isinstance(exc, HeraldTimeoutError):
                raise
            raise HeraldTimeoutError(f"{method}: no reply within {budget}s") from None

    # ------------------------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        while not self._closing:
            self._set_state("connecting" if self.state in ("idle", "connecting") else "reconnecting")
            try:
                token = await fetch_token(self._token_provider)
            except Exception as exc:
                reason = f"token provider failed: {exc}"
                self._stop(None, reason, HeraldAuthError(reason))
                return
            try:
                code, reason = await self._session(token)
            except (InvalidHandshake, OSError, TimeoutError) as exc:  # refused, timed out, an HTTP status
                code, reason = None, f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                # A bug or an unusable environment (a SOCKS proxy without python-socks): stopping says why,
                # where a dead runner would leave start() and every request waiting forever.
                log.exception("herald client: stopped by an unexpected error")
                reason = f"{type(exc).__name__}: {exc}"
                self._stop(None, reason, HeraldClosedError(f"client failed: {reason}", None, reason))
                return
            opened = self._open.is_set()
            open_for = time.monotonic() - self._opened_at if opened else None
            self._open.clear()
            self._ws = None
            self._calls.fail_all()
            if self._closing:
                return
            self.close_code, self.close_reason = code, reason
            refusal = self._reconnect.refusal(code, reason, opened=opened)
            if refusal is not None:
                self._stop(code, reason, refusal)
                return
            delay = self._reconnect.ended(open_for=open_for, code=code)
            self._emit("disconnected", {"code": code, "reason": reason, "retry_in": delay})
            self._set_state("reconnecting")
            await asyncio.sleep(delay)

    async def _session(self, token: str) -> tuple[int | None, str]:
        """One connection: handshake, ``auth``, frames until it closes; returns (close code, reason).

        Failures before the WebSocket is open (refused, timed out, bad HTTP answer) raise instead.
        """
        connected = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(self.open_timeout):
            ws = await connect(self.url, open_timeout=None, max_size=MAX_FRAME_BYTES, compression=None)
        self._ws = ws
        reader = asyncio.create_task(self._read(ws, connected))
        auth = asyncio.create_task(self._calls.call(ws, "auth", {"token": token}, self.open_timeout))
        refresher: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(self.open_timeout):
                    await asyncio.wait({connected, reader}, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                await ws.close(1000, "authentication timed out")
            if not connected.done():
                await asyncio.wait({reader})  # the close code says why
            else:
                refresher = asyncio.create_task(self._refresh_loop(ws, token))
            await reader
        finally:
            tasks = [task for task in (auth, reader, refresher) if task is not None]
            for task in tasks:
                task.cancel()
            # Collect the outcomes so a refused ``auth`` is not reported as "never retrieved".
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()
        return ws.close_code, ws.close_reason or ""

    async def _read(self, ws: ClientConnection, connected: asyncio.Future[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("herald client: unparseable frame dropped")
                    continue
                if not isinstance(frame, dict):
                    continue
                if "id" in frame and "method" not in frame:
                    self._calls.settle(frame)
                elif frame.get("method") == "connected":
                    if not connected.done():
                        # Taken before the next frame is read: the frames the gateway held back during the
                        # session's lookup follow ``connected`` at once, and count against its counts.
                        params = frame.get("params")
                        params = params if isinstance(params, dict) else {}
                        self._on_open(params)
                        connected.set_result(params)
                else:
                    self._on_notification(str(frame.get("method")), frame.get("params"))

    def _on_open(self, params: dict[str, Any]) -> None:
        self.user_id = params.get("user_id")
        self.connection_id = params.get("connection_id")
        catch_up = self._take_connected(params)
        self._opened_at = time.monotonic()
        self._open.set()
        self._set_state("open")
        self._emit("connected", params)
        if self._first_open is not None and not self._first_open.done():
            self._first_open.set_result(None)
        if catch_up:
            self._spawn(self._catch_up())

    async def _refresh_loop(self, ws: ClientConnection, token: str) -> None:
        """Send ``auth.refresh`` with a fresh token shortly before the current one expires."""
        while True:
            exp = token_expiry(token)
            if exp is None:
                return
            lifetime = exp - time.time()
            await asyncio.sleep(max(lifetime - min(self.refresh_margin, lifetime / 2), 0.0))
            try:
                token = await fetch_token(self._token_provider)
                await self._calls.call(ws, "auth.refresh", {"token": token}, self.request_timeout)
            except (HeraldError, ConnectionClosed):
                # The server closes with 4401 at expiry; the reconnect asks for a token again.
                return
            except Exception as exc:
                reason = f"token provider failed: {exc}"
                self._stop(None, reason, HeraldAuthError(reason))
                await ws.close(1000, "token provider failed")
                return

    # ---------------------------------------------------------------------------------------- internals

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop(self, code: int | None, reason: str, error: HeraldClosedError) -> None:
        """Enter the terminal state once: wake waiters, end iterators, emit ``closed``."""
        if self.state == "closed":
            return
        self._closing = True
        self.close_code, self.close_reason = code, reason
        self._calls.fail_all()
        for task in self._tasks:
            task.cancel()
        self._set_state("closed")
        self._emit("closed", {"code": code, "reason": reason})
        if self._first_open is not None and not self._first_open.done():
            self._first_open.set_exception(error)
        # Requests waiting for a connection see state "closed" once woken.
        self._open.set()
        self._stream.end()
