"""``session.open`` for the connections of one event-loop turn in one request.

A reconnect storm opens thousands of sessions at once. One internal ``session.open_many`` request for up
to :data:`~shared.jsonrpc.SESSIONS_PER_REQUEST` users costs the broker, the worker and this process about
what one ``session.open`` costs, so the connects that arrive while a request runs share the next one
(:class:`shared.coalesce.Coalescer`, no timer), with up to :data:`CONCURRENT_REQUESTS` requests in flight
so the worker's consumer has more than one to work on. A worker that does not know the method (an older
one, during a rolling upgrade) answers -32601; then each of those users gets its own ``session.open``, as
before, and the next batch tries ``session.open_many`` again.

Each connect waits at most ``HERALD_RPC_TIMEOUT`` in all, queued or in flight: with the worker down, a storm
of 5,000 connects is ``connected`` (without counts) after one timeout, not after one timeout per batch.
A connect that gave up, or whose client left, is dropped from the batches that had not started yet.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import structlog

from gateway.errors import RpcError, RpcTimeout
from gateway.protocol import session_open_body, session_open_many_body
from shared.coalesce import Coalescer
from shared.jsonrpc import SESSIONS_PER_REQUEST, ErrorCode, read_rpc_reply

if TYPE_CHECKING:
    from gateway.rpc import RpcClient

log = structlog.get_logger("gateway.opening")

#: ``session.open_many`` requests in flight at once.
CONCURRENT_REQUESTS: Final = 4

#: What one user's lookup yields: the ``session.open`` result, ``None`` when the worker's reply had no
#: usable one, or the error of that user's own request (when each user got one).
Opened = dict[str, Any] | RpcError | None


def _result_or_code(body: bytes) -> tuple[Any, int | None]:
    """(result, error code) of a reply body; (``None``, ``None``) when it is neither."""
    read = read_rpc_reply(body)
    if read is None:
        return None, None
    result, error = read
    code = error.get("code") if error is not None else None
    return result, code if isinstance(code, int) else None


class SessionOpener:
    """``session.open`` lookups by user id, batched; see the module docstring."""

    def __init__(self, rpc: RpcClient) -> None:
        self._rpc = rpc
        self._lookups: Coalescer[str, Opened] = Coalescer(
            self._open_many, SESSIONS_PER_REQUEST, CONCURRENT_REQUESTS
        )

    async def open(self, user_id: str) -> dict[str, Any] | None:
        """The user's counters and effective preferences; ``None`` when the worker's reply had none.

        Raises:
            RpcTimeout: no answer within the RPC timeout of the call (queued for a batch included).
            RpcUnavailable: the broker link is down (or went down while waiting).
        """
        try:
            async with asyncio.timeout(self._rpc.timeout):
                opened = await self._lookups.get(user_id)
        except TimeoutError:
            raise RpcTimeout(f"no session within {self._rpc.timeout}s") from None
        if isinstance(opened, RpcError):
            raise opened
        return opened

    async def _open_many(self, user_ids: list[str]) -> dict[str, Opened]:
        body = await self._rpc.call(session_open_many_body(user_ids))
        result, code = _result_or_code(body)
        if code == ErrorCode.METHOD_NOT_FOUND:
            return dict(zip(user_ids, await asyncio.gather(*map(self._open_one, user_ids)), strict=True))
        sessions = result.get("sessions") if isinstance(result, dict) else None
        if not isinstance(sessions, dict):
            log.warning("session.open_many failed", users=len(user_ids), reply=body[:200])
            return dict.fromkeys(user_ids)
        return {user_id: _usable(sessions.get(user_id)) for user_id in user_ids}

    async def _open_one(self, user_id: str) -> Opened:
        try:
            body = await self._rpc.call(session_open_body(user_id, False))
        except RpcError as exc:
            return exc
        result, _ = _result_or_code(body)
        if not isinstance(result, dict):
            log.warning("session.open failed", user_id=user_id, reply=body[:200])
            return None
        return result


def _usable(opened: Any) -> dict[str, Any] | None:
    return opened if isinstance(opened, dict) else None
