"""Helpers for the gateway tests: tokens, WebSocket clients, a test responder on ``herald.rpc``, and
looking at the broker's bindings through ``rabbitmqctl``.

The responder stands in for the worker's request handlers: ``session.open`` answers counts and the
preferences set for the user in :attr:`Responder.preferences`, and ``session.open_many`` the same for
each of its users (unless :attr:`Responder.knows_open_many` is false: then -32601, as from an older
worker). Every other method echoes what the gateway sent (``{"echo": {method, params, user_id,
admin}}``) after ``params["delay"]`` seconds when given, or, with ``params["hold"]`` true, once
:meth:`Responder.release_held` is called. It records every request
(:attr:`Responder.seen`) and, per user, the most requests it held at once (:attr:`Responder.peak_in_flight`),
which is what a gateway's in-flight caps bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING, Any, Final

import aio_pika
import orjson
from websockets.asyncio.client import connect

from herald_ops.testing.stack import fresh_id, http_get, mint, rabbitmqctl
from shared.jsonrpc import ErrorCode, notification_frame, rpc_error, rpc_result
from shared.topology import Topology

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
    from websockets.asyncio.client import ClientConnection

    from herald_ops.testing.stack import HeraldProcess

NAMES = Topology("herald")
SESSION_COUNTS = {"unread_count": 2, "last_seq": 5}
_ids = itertools.count(1)


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame, parsed."""
    async with asyncio.timeout(timeout):
        frame = await ws.recv()
    parsed: dict[str, Any] = orjson.loads(frame)
    return parsed


async def open_client(
    gateway: HeraldProcess, user: str | None = None, *, jwt: str | None = None, **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect with ``?token=`` (a fresh token for ``user`` unless ``jwt``), return the socket and the
    ``connected`` params."""
    credential = jwt if jwt is not None else mint(user or fresh_id())
    ws = await connect(f"{gateway.ws_url}?token={credential}", compression=None, **kwargs)
    frame = await recv_json(ws)
    assert frame["method"] == "connected", frame
    return ws, frame["params"]


async def call(
    ws: ClientConnection, method: str, params: Any = None, timeout: float = 10.0
) -> dict[str, Any]:
    """Send one request and return its reply (frames that are not the reply are skipped)."""
    request_id = next(_ids)
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        request["params"] = params
    await ws.send(orjson.dumps(request).decode())
    async with asyncio.timeout(timeout):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame.get("id") == request_id:
                reply: dict[str, Any] = frame
                return reply


async def wait_closed(ws: ClientConnection, timeout: float = 15.0) -> tuple[int | None, str | None]:
    """Read until the connection closes; return the close code and reason the server sent."""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(Exception):
            while True:
                await ws.recv()
    await ws.wait_closed()
    return ws.close_code, ws.close_reason


def metric(gateway: HeraldProcess, series: str) -> float:
    """The value of one exposition line of ``gateway``'s ``/metrics`` (0 when absent)."""
    for line in http_get(f"{gateway.url}/metrics")[1].decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def user_frame(user: str, n: int) -> bytes:
    """A recognizable ``notification:new`` frame for ``user``."""
    return notification_frame("notification:new", {"id": f"{user}-{n}", "seq": n, "type": "NEW_COMMENT"})


async def publish_user(
    channel: AbstractChannel, user: str, body: bytes, method: str = "notification:new"
) -> None:
    """Publish a frame to ``herald.users`` the way the worker does."""
    exchange = await channel.get_exchange(NAMES.users_exchange)
    message = aio_pika.Message(body, content_type="application/json", type=method)
    await exchange.publish(message, routing_key=user, mandatory=False)


async def publish_broadcast(channel: AbstractChannel, notification_type: str, body: bytes) -> None:
    """Publish a frame to ``herald.broadcast`` the way the worker does."""
    exchange = await channel.get_exchange(NAMES.broadcast_exchange)
    message = aio_pika.Message(
        body,
        content_type="application/json",
        type="notification:new",
        headers={"x-herald-type": notification_type},
    )
    await exchange.publish(message, routing_key="", mandatory=False)


#: Seconds to wait for the broker's topology to settle: every look at it is a ``rabbitmqctl`` run, which
#: takes seconds on a loaded machine, so a short deadline allows too few looks.
BROKER_SETTLES: Final = 45.0


def user_bindings(vhost: str, user: str) -> int:
    """How many queues are bound to ``herald.user.<user>`` right now (0 when the exchange is gone)."""
    listing = rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_kind").stdout
    source = NAMES.user_exchange(user)
    return sum(1 for line in listing.splitlines() if line.split("\t")[:2] == [source, "queue"])


def user_exchanges(vhost: str) -> set[str]:
    """Names of the per-user exchanges that exist in ``vhost``."""
    listing = rabbitmqctl("list_exchanges", "-p", vhost, "name").stdout
    return {line.strip() for line in listing.splitlines() if line.startswith(f"{NAMES.prefix}.user.")}


def stray_user_bindings(vhost: str) -> list[str]:
    """Every binding that has a per-user exchange as source or destination."""
    listing = rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name").stdout
    marker = f"{NAMES.prefix}.user."
    return [line for line in listing.splitlines() if marker in line]


class Responder:
    """A stand-in worker on ``herald.rpc``; see the module docstring."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self.preferences: dict[str, Any] = {}
        self.knows_open_many = True
        self.seen: list[dict[str, Any]] = []
        self.peak_in_flight: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._released = asyncio.Event()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect(self.amqp_url)
        self._channel = await self._connection.channel()
        queue = await self._channel.declare_queue(NAMES.rpc_queue, durable=True)
        await queue.consume(self._on_request)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    def release_held(self) -> None:
        """Answer the requests held by ``params["hold"]``, and every later one at once."""
        self._released.set()

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            request = orjson.loads(message.body)
            self.seen.append(request)
            if request["method"] == "session.open":
                reply = rpc_result(self._session(request["user_id"]))
            elif request["method"] == "session.open_many" and self.knows_open_many:
                users = request["params"]["user_ids"]
                reply = rpc_result({"sessions": {user: self._session(user) for user in users}})
            elif request["method"] == "session.open_many":
                reply = rpc_error(ErrorCode.METHOD_NOT_FOUND, "method not found: session.open_many")
            else:
                reply = await self._echo(request)
            assert self._channel is not None
            assert message.reply_to
            await self._channel.default_exchange.publish(
                aio_pika.Message(reply, correlation_id=message.correlation_id), routing_key=message.reply_to
            )

    def _session(self, user: str) -> dict[str, Any]:
        return {**SESSION_COUNTS, "preferences": self.preferences.get(user, {})}

    async def _echo(self, request: dict[str, Any]) -> bytes:
        user = request["user_id"]
        held = self._in_flight[user] = self._in_flight.get(user, 0) + 1
        self.peak_in_flight[user] = max(held, self.peak_in_flight.get(user, 0))
        try:
            params = request["params"] if isinstance(request["params"], dict) else {}
            delay = params.get("delay")
            if isinstance(delay, int | float):
                await asyncio.sleep(delay)
            if params.get("hold") is True:
                await self._released.wait()
            return rpc_result({"echo": request})
        finally:
            self._in_flight[user] -= 1
