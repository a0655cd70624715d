"""Async Python client for Herald's WebSocket protocol (PROTOCOL §5), built on ``websockets``.

Semantics (the same as ``clients/js/herald.js``):

- **Authentication** is always the first frame (``auth``), never the URL. ``token_provider`` (a plain or
  async callable returning a JWT) is called on every (re)connect and again shortly before the current
  token's ``exp`` (read from the JWT payload, not verified) to send ``auth.refresh``.
- **Reconnects** go to the next of the gateway URLs given (one or several) and, once every URL failed in
  a row, wait with exponential backoff with full jitter, which starts over as soon as a gateway answers.
  Close code 4401 fetches a fresh token and reconnects (the client stops after two authentication
  failures in a row, or when the token provider raises); 4008 (too many connections) stops the client;
  every other close — 1001 shutdown, 1013 slow reader, network loss — reconnects. A failed catch-up
  ``notifications.sync`` is retried with backoff until it succeeds.
- **Nothing missed, nothing twice**: after a reconnect, or on ``sync:required``, the client calls
  ``notifications.sync`` from its *watermark* and pages while ``has_more``; notifications it already
  delivered are dropped by ``id``. The watermark is the highest ``seq`` below which no notification can be
  missing: it advances over contiguous ``seq`` values of live frames and to the last item of each sync
  page, so a frame published out of order by a second worker just before a disconnect is not skipped.
  A first ``connected`` without ``last_seq`` (the worker did not answer the gateway in time) leaves no
  watermark: the client then anchors it from the ``last_seq`` of a ``notifications.unread_count`` reply,
  which it fetches at once, retried until the worker answers, so its next reconnect can still catch up.
- **unread_count** and **unseen_count** (the bell's badge, PROTOCOL §10) follow ``connected``,
  ``notification:*`` frames and request results.
- **Collapsed notifications** come back with the same ``id`` and a higher ``seq``: they are delivered
  again as ``notification:new`` with ``Event.replaces`` true (replace the item, do not add it), and the
  counts are fetched again (the client cannot tell whether the replaced item had been seen). A repeat
  with a ``seq`` already delivered is dropped.

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
import base64
import contextlib
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Literal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from herald_client.errors import (
    HeraldAuthError,
    HeraldClosedError,
    HeraldConnectionError,
    HeraldError,
    HeraldRequestError,
    HeraldTimeoutError,
)
from herald_client.events import Event, EventStream
from herald_client.methods import InboxMethods
from herald_client.protocol import CloseCode
from herald_client.reconnect import Reconnect, backoff_delay
from herald_client.tracking import DeliveryTracker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from websockets.asyncio.client import ClientConnection

    TokenProvider = Callable[[], Awaitable[str] | str]
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

CLOSE_UNAUTHORIZED: Final = CloseCode.UNAUTHORIZED
CLOSE_TOO_MANY_CONNECTIONS: Final = CloseCode.TOO_MANY_CONNECTIONS
#: Consecutive authentication failures (4401 or a failed ``auth``) after which the client gives up.
MAX_AUTH_FAILURES: Final = 2
SYNC_PAGE: Final = 500
#: Largest server frame accepted: a full sync page of maximal notifications (~10.5 KiB each) fits.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024

State = Literal["idle", "connecting", "open", "reconnecting", "closed"]


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, read without verifying it; ``None`` if absent."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


class HeraldClient(InboxMethods):
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
        self._reconnect = Reconnect((url,) if isinstance(url, str) else tuple(url), backoff_base, backoff_max)
        self._token_provider = token_provider
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.refresh_margin = refresh_margin
        self.open_timeout = open_timeout

        self.state: State = "idle"
        self.user_id: str | None = None
        self.connection_id: str | None = None
        #: The user's unread count as last reported or derived; ``None`` until known.
        self.unread_count: int | None = None
        #: The user's unseen count (the badge) as last reported or derived; ``None`` until known.
        self.unseen_count: int | None = None
        self.tracker = DeliveryTracker()
        self.close_code: int | None = None
        self.close_reason = ""

        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._stream = EventStream(self._spawn)
        self._ws: ClientConnection | None = None
        self._open = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._first_open: asyncio.Future[None] | None = None
        self._closing = False
        self._sync_lock = asyncio.Lock()
        self._recount: asyncio.Task[None] | None = None
        self._recount_again = False

    @property
    def url(self) -> str:
        """The gateway URL of the current (or next) connection."""
        return self._reconnect.url

    @property
    def watermark(self) -> int | None:
        """Highest ``seq`` below which nothing can be missing (``None`` until anchored by a ``last_seq``
        from ``connected`` or, when that had none, from ``notifications.unread_count``)."""
        return self.tracker.watermark

    @watermark.setter
    def watermark(self, value: int | None) -> None:
        self.tracker.watermark = value

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
        """
        if self._runner is None:
            self._first_open = asyncio.get_running_loop().create_future()
            self._runner = asyncio.create_task(self._run(), name="herald-client")
        assert self._first_open is not None
        await asyncio.shield(self._first_open)

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
        return self._stream.events(ended=self.state == "closed")

    def _emit(self, method: str, params: Any, replayed: bool = False, replaces: bool = False) -> None:
        self._stream.emit(Event(method, params, replayed, replaces))

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self._emit("state", {"state": state})

    def _set_unread(self, count: Any) -> None:
        if isinstance(count, int) and count != self.unread_count:
            self.unread_count = count
            self._emit("unread", {"count": count})

    def _set_unseen(self, count: Any) -> None:
        if isinstance(count, int) and count != self.unseen_count:
            self.unseen_count = count
            self._emit("unseen", {"count": count})

    def _anchor(self, last_seq: Any) -> None:
        if isinstance(last_seq, int) and self.tracker.watermark is None:
            self.tracker.anchor(last_seq)

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
                return await self._call(ws, method, params, deadline - time.monotonic())
        except TimeoutError as exc:
            if isinstance(exc, HeraldTimeoutError):
                raise
            raise HeraldTimeoutError(f"{method}: no reply within {budget}s") from None

    async def _call(self, ws: ClientConnection, method: str, params: Any, budget: float) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        try:
            await ws.send(json.dumps(frame, separators=(",", ":")))
            async with asyncio.timeout(max(budget, 0.0)):
                return await future
        except TimeoutError:
            raise HeraldTimeoutError(f"{method}: no reply within the timeout") from None
        except ConnectionClosed:
            raise HeraldConnectionError(f"{method}: connection closed") from None
        finally:
            self._pending.pop(request_id, None)

    # ------------------------------------------------------------------------------------ connection loop

    async def _token(self) -> str:
        outcome = self._token_provider()
        token = (
            await outcome if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future) else outcome
        )
        if not isinstance(token, str) or not token:
            raise TypeError(f"token provider returned {type(token).__name__}, not a JWT string")
        return token

    async def _run(self) -> None:
        auth_failures = 0
        while not self._closing:
            self._set_state("connecting" if self.state in ("idle", "connecting") else "reconnecting")
            try:
                token = await self._token()
            except Exception as exc:
                self._stop(
                    None, f"token provider failed: {exc}", HeraldAuthError(f"token provider failed: {exc}")
                )
                return
            code: int | None
            answered = True
            try:
                code, reason = await self._session(token)
            except InvalidHandshake as exc:  # the gateway answered, with something else than 101
                code, reason = None, f"{type(exc).__name__}: {exc}"
            except (OSError, TimeoutError) as exc:
                answered = False
                code, reason = None, f"{type(exc).__name__}: {exc}"
            opened = self._open.is_set()
            self._open.clear()
            self._ws = None
            self._fail_pending()
            if self._closing:
                return
            self.close_code, self.close_reason = code, reason
            if code == CLOSE_TOO_MANY_CONNECTIONS:
                self._stop(
                    code, reason, HeraldClosedError("too many connections for this user", code, reason)
                )
                return
            # A 4401 after a working session is an expired token: only refusals of fresh tokens count.
            auth_failures = auth_failures + 1 if code == CLOSE_UNAUTHORIZED and not opened else 0
            if auth_failures >= MAX_AUTH_FAILURES:
                self._stop(code, reason, HeraldAuthError("authentication refused", code, reason))
                return
            delay = self._reconnect.ended(opened=opened, answered=answered, code=code)
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
        auth = asyncio.create_task(self._call(ws, "auth", {"token": token}, self.open_timeout))
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
                self._on_open(connected.result())
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
                    self._resolve(frame)
                elif frame.get("method") == "connected":
                    if not connected.done():
                        connected.set_result(frame.get("params") or {})
                else:
                    self._on_notification(str(frame.get("method")), frame.get("params"))

    def _resolve(self, frame: dict[str, Any]) -> None:
        future = self._pending.get(frame["id"]) if isinstance(frame["id"], int) else None
        if future is None or future.done():
            return
        error = frame.get("error")
        if isinstance(error, dict):
            code, message = error.get("code", -32603), str(error.get("message", ""))
            future.set_exception(HeraldRequestError(int(code), message, error.get("data")))
        else:
            future.set_result(frame.get("result"))

    def _on_open(self, params: dict[str, Any]) -> None:
        self.user_id = params.get("user_id")
        self.connection_id = params.get("connection_id")
        server_seq = params.get("last_seq")
        resume_from = self.watermark
        if resume_from is None and isinstance(server_seq, int):
            # First session: history is what notifications.list is for; live starts now. Live frames seen
            # by an earlier session that never got a last_seq keep the watermark below them (anchor).
            self.tracker.anchor(server_seq)
        self._set_unread(params.get("unread_count"))
        self._set_unseen(params.get("unseen_count"))
        self._open.set()
        self._set_state("open")
        self._emit("connected", params)
        if self._first_open is not None and not self._first_open.done():
            self._first_open.set_result(None)
        if resume_from is not None:
            catch_up = not isinstance(server_seq, int) or server_seq > resume_from
        else:
            # No last_seq: the catch-up anchors the watermark with notifications.unread_count. Anchored
            # below last_seq: live frames were seen while unanchored, so some may be missing.
            mark = self.watermark
            catch_up = mark is None or (isinstance(server_seq, int) and mark < server_seq)
        if catch_up:
            self._spawn(self._catch_up())

    def _on_notification(self, method: str, params: Any) -> None:
        if method == "notification:new" and isinstance(params, dict):
            self._deliver(params, replayed=False)
            return
        if isinstance(params, dict) and method.startswith("notification:"):
            self._set_unread(params.get("unread_count"))
            self._set_unseen(params.get("unseen_count"))
        self._emit(method, params)
        if method == "sync:required":
            self._spawn(self._catch_up())

    def _deliver(self, item: dict[str, Any], replayed: bool) -> None:
        """Emit a notification unless this version was delivered already; advance the watermark."""
        seq = item.get("seq")
        if isinstance(seq, int):
            self.tracker.advance(seq)
        delivery = self.tracker.deliver(str(item.get("id")), seq if isinstance(seq, int) else None)
        if delivery == "repeat":
            return
        # Replayed items are counted by the unread_count fetch that ends every catch-up.
        if delivery == "replacement" and not replayed:
            self._spawn(self._recount_soon())
        elif not replayed:
            if item.get("read_at") is None and self.unread_count is not None:
                self._set_unread(self.unread_count + 1)
            if item.get("seen_at") is None and self.unseen_count is not None:
                self._set_unseen(self.unseen_count + 1)
        self._emit("notification:new", item, replayed, delivery == "replacement")

    async def _recount_soon(self) -> None:
        """Fetch the counts again; replacements arriving meanwhile are covered by one more fetch."""
        if self._recount is not None and not self._recount.done():
            self._recount_again = True
            return
        self._recount = asyncio.current_task()
        try:
            self._recount_again = True
            while self._recount_again:
                self._recount_again = False
                await self.fetch_unread_count()
        except HeraldError as exc:
            log.warning("herald client: count refresh failed: %s", exc)
        finally:
            self._recount = None

    async def _catch_up(self) -> None:
        """Page ``notifications.sync`` from the watermark while ``has_more``, then refresh the count
        (without a watermark, fetch the count first: its ``last_seq`` anchors the watermark).

        A failed sync (e.g. 5003 while the worker reconnects) is retried with backoff until it succeeds
        or the client closes: the notifications it would recover are otherwise only seen at the next
        reconnect.
        """
        async with self._sync_lock:
            failures = 0
            while not self._closing and not await self._catch_up_once():
                delay = backoff_delay(failures, self.backoff_base, self.backoff_max)
                failures += 1
                log.warning("herald client: sync failed; retrying in %.2fs", delay)
                await asyncio.sleep(delay)

    async def _catch_up_once(self) -> bool:
        """One catch-up; ``False`` when a request failed (the watermark then has not moved past it).

        Without a watermark (``connected`` had no ``last_seq``) it first fetches the counts, whose
        ``last_seq`` anchors it; that fetch failing (5003 while the worker is down) is retried as a sync is.
        """
        try:
            counted = recovered = False
            if self.watermark is None:
                await self.fetch_unread_count()
                counted = True
            while self.watermark is not None:
                page = await self.sync(self.watermark, SYNC_PAGE)
                items = page.get("items") or []
                recovered = recovered or bool(items)
                for item in items:
                    self._deliver(item, replayed=True)
                if items:
                    last = items[-1].get("seq")
                    if isinstance(last, int):
                        self.tracker.synced_up_to(last)
                if not page.get("has_more") or not items:
                    break
            # Re-anchor the count: it covers what the sync recovered and any frame counted twice
            # between ``connected`` and the sync (the leading fetch did, if the sync found nothing).
            if not counted or recovered:
                await self.fetch_unread_count()
        except HeraldError as exc:
            log.warning("herald client: sync failed: %s", exc)
            return False
        return True

    async def _refresh_loop(self, ws: ClientConnection, token: str) -> None:
        """Send ``auth.refresh`` with a fresh token shortly before the current one expires."""
        while True:
            exp = token_expiry(token)
            if exp is None:
                return
            lifetime = exp - time.time()
            await asyncio.sleep(max(lifetime - min(self.refresh_margin, lifetime / 2), 0.0))
            try:
                token = await self._token()
                await self._call(ws, "auth.refresh", {"token": token}, self.request_timeout)
            except (HeraldError, ConnectionClosed):
                # The server closes with 4401 at expiry; the reconnect asks for a token again.
                return
            except Exception as exc:
                self._stop(
                    None, f"token provider failed: {exc}", HeraldAuthError(f"token provider failed: {exc}")
                )
                await ws.close(1000, "token provider failed")
                return

    # ---------------------------------------------------------------------------------------- internals

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HeraldConnectionError("connection closed before the reply"))
        self._pending.clear()

    def _stop(self, code: int | None, reason: str, error: HeraldClosedError) -> None:
        """Enter the terminal state once: wake waiters, end iterators, emit ``closed``."""
        if self.state == "closed":
            return
        self._closing = True
        self.close_code, self.close_reason = code, reason
        self._fail_pending()
        for task in self._tasks:
            task.cancel()
        self._set_state("closed")
        self._emit("closed", {"code": code, "reason": reason})
        if self._first_open is not None and not self._first_open.done():
            self._first_open.set_exception(error)
        # Requests waiting for a connection see state "closed" once woken.
        self._open.set()
        self._stream.end()
