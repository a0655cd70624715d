"""The client's JSON-RPC calls in flight: ids, the replies that settle them, and failing them all."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from herald_client.errors import HeraldConnectionError, HeraldRequestError, HeraldTimeoutError
from herald_client.protocol import ErrorCode

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


class PendingCalls:
    """Requests sent on the current socket and waiting for their reply, by JSON-RPC ``id``."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}

    async def call(self, ws: ClientConnection, method: str, params: Any, budget: float) -> Any:
        """Send one request on ``ws`` and return its ``result`` within ``budget`` seconds.

        Raises :class:`HeraldRequestError` for an error reply, :class:`HeraldTimeoutError`, or
        :class:`HeraldConnectionError` when the socket closed first.
        """
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

    def settle(self, reply: dict[str, Any]) -> None:
        """Settle the call a reply frame answers; a reply nothing waits for (timed out) is dropped."""
        future = self._pending.get(reply["id"]) if isinstance(reply["id"], int) else None
        if future is None or future.done():
            return
        error = reply.get("error")
        if isinstance(error, dict):
            code, message = error.get("code", ErrorCode.INTERNAL_ERROR), str(error.get("message", ""))
            if not isinstance(code, int) or isinstance(code, bool):
                # JSON-RPC codes are integers. Another is a protocol error that fails this call (as an
                # internal error naming it) instead of raising here, in the reader, ending the client.
                code, message = ErrorCode.INTERNAL_ERROR, f"malformed error reply (code {code!r}): {message}"
            future.set_exception(HeraldRequestError(code, message, error.get("data")))
        else:
            future.set_result(reply.get("result"))

    def fail_all(self) -> None:
        """The socket is gone: every call still waiting fails with :class:`HeraldConnectionError`."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HeraldConnectionError("connection closed before the reply"))
        self._pending.clear()
