"""Helpers for the client tests (Python, JS and browser): tokens, publishing events, a running stack.

The stack these tests use is one worker and one gateway (``HERALD_DEV_TOKENS=1``) in a vhost and
database of their own; :func:`running_stack` starts it and stops it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import uuid
from typing import TYPE_CHECKING, Any

import aio_pika
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from herald_ops.testing.stack import ROOT, create_stack, destroy_stack
from shared.jsonrpc import notification_frame
from shared.topology import SEND_ROUTING_KEY, Topology

if TYPE_CHECKING:
    from collections.abc import Iterator

    from websockets.asyncio.server import Server, ServerConnection

    from herald_ops.testing.stack import HeraldProcess, Stack


def event_body(user_id: str, **fields: Any) -> dict[str, Any]:
    """A valid ``notification.send`` body; ``fields`` override the defaults."""
    body: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "user_id": user_id,
        "type": "COURSE_NEW_CONTENT",
        "title": "New lesson available",
        "message": "Lesson 7 was added to Databases 101",
        "data": {"courseId": "42"},
    }
    body.update(fields)
    return body


async def publish(amqp_url: str, *bodies: dict[str, Any]) -> None:
    """Publish producer events to ``herald.events`` exactly as a producer service would (PROTOCOL §4)."""
    topology = Topology()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
        for body in bodies:
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key=SEND_ROUTING_KEY)
    finally:
        await connection.close()


@contextlib.contextmanager
def running_stack(**gateway_overrides: Any) -> Iterator[tuple[Stack, HeraldProcess]]:
    """A fresh vhost + database with one worker and one dev-token gateway; yields (stack, gateway)."""
    stack = create_stack("herald_client")
    try:
        stack.start_worker()
        gateway = stack.start_gateway(dev_tokens=1, **gateway_overrides)
        yield stack, gateway
    finally:
        destroy_stack(stack)


def doc_snippet(name: str) -> str:
    """The code block after ``<!-- snippet:NAME -->`` in docs/clients.md (what the README copies)."""
    text = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    after = text.split(f"<!-- snippet:{name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


#: The gateway address the snippets print; tests substitute their own gateway's.
DOC_GATEWAY = "ws://127.0.0.1:8765/notifications"


class ScriptedGateway:
    """A stand-in gateway for the close codes and frames a real one only emits under failure.

    It speaks the client side of the protocol: first-frame ``auth`` (any token whose payload has a
    ``sub``; the token is recorded), ``connected`` with ``last_seq`` = the number of stored notifications,
    ``notifications.sync`` over :attr:`stored` in pages of at most :attr:`page_size`,
    ``notifications.unread_count`` (with ``last_seq``), ``ping``. While :attr:`worker_up` is false it
    behaves as a gateway whose worker does not answer: ``connected`` without the counts and ``last_seq``,
    and 5003 for every request but ``ping``. Tests
    store notifications with :meth:`store` (optionally pushing them live) and drive the connections with
    :meth:`send_all` and :meth:`close_all`.
    """

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.stored: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.sync_calls: list[int] = []
        #: The next this many ``notifications.sync`` requests answer 5003, as while a worker reconnects.
        self.failing_syncs = 0
        self.worker_up = True
        #: What the next connection gets right after ``connected``, as a real gateway writes the frames it
        #: held back while the session's lookup ran: stored items (published late: in the counts already)
        #: and titles, stored once the lookup has read the counts (not in them).
        self.held_back: list[dict[str, Any] | str] = []
        self.connections: set[ServerConnection] = set()
        self.url = ""
        self._server: Server | None = None

    async def __aenter__(self) -> ScriptedGateway:
        self._server = await serve(self._handler, "127.0.0.1", 0)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/notifications"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def store(self, title: str) -> dict[str, Any]:
        seq = len(self.stored) + 1
        item = {
            "id": f"n{seq}",
            "seq": seq,
            "type": "COURSE_UPDATE",
            "category": "course",
            "title": title,
            "message": "",
            "data": {},
            "created_at": "2026-01-01T00:00:00Z",
            "read_at": None,
        }
        self.stored.append(item)
        return item

    async def send_all(self, method: str, params: Any) -> None:
        for connection in list(self.connections):
            await connection.send(notification_frame(method, params), text=True)

    async def close_all(self, code: int, reason: str = "") -> None:
        for connection in list(self.connections):
            await connection.close(code, reason)

    async def _handler(self, connection: ServerConnection) -> None:
        first = json.loads(await connection.recv())
        token = first["params"]["token"]
        self.tokens.append(token)
        payload = token.split(".")[1]
        user = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
        await connection.send(json.dumps({"jsonrpc": "2.0", "id": first["id"], "result": {"user_id": user}}))
        unread = sum(1 for item in self.stored if item["read_at"] is None)
        connected: dict[str, Any] = {"user_id": user, "connection_id": uuid.uuid4().hex}
        if self.worker_up:
            connected |= {"unread_count": unread, "last_seq": len(self.stored)}
        held = [entry if isinstance(entry, dict) else self.store(entry) for entry in self.held_back]
        self.held_back.clear()
        await connection.send(notification_frame("connected", connected), text=True)
        for item in held:
            await connection.send(notification_frame("notification:new", item), text=True)
        self.connections.add(connection)
        try:
            async for raw in connection:
                request = json.loads(raw)
                await connection.send(
                    json.dumps({"jsonrpc": "2.0", "id": request["id"]} | self._answer(request))
                )
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(connection)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        params = request.get("params") or {}
        if request["method"] == "ping":
            return {"result": "pong"}
        if not self.worker_up:
            return {"error": {"code": 5003, "message": "service unavailable"}}
        if request["method"] == "notifications.sync":
            self.sync_calls.append(params["since"])
            if self.failing_syncs:
                self.failing_syncs -= 1
                return {"error": {"code": 5003, "message": "service unavailable"}}
            newer = [item for item in self.stored if item["seq"] > params["since"]]
            page = newer[: min(params.get("limit", 100), self.page_size)]
            return {"result": {"items": page, "has_more": len(newer) > len(page)}}
        if request["method"] == "notifications.unread_count":
            unread = sum(1 for item in self.stored if item["read_at"] is None)
            return {"result": {"count": unread, "last_seq": len(self.stored)}}
        return {"error": {"code": -32601, "message": "not scripted"}}


async def _serve_scripted(page_size: int) -> None:
    async with ScriptedGateway(page_size) as fake:
        print(json.dumps({"url": fake.url}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = json.loads(line)
            result: Any = None
            if command["op"] == "store":
                result = fake.store(command["title"])
            elif command["op"] == "send_all":
                await fake.send_all(command["method"], command["params"])
            elif command["op"] == "hold_back":
                fake.held_back.append(
                    fake.stored[command["seq"] - 1] if "seq" in command else command["title"]
                )
            elif command["op"] == "worker":
                fake.worker_up = command["up"]
            elif command["op"] == "close_all":
                await fake.close_all(command["code"], command.get("reason", ""))
            elif command["op"] == "state":
                result = {
                    "sync_calls": fake.sync_calls,
                    "tokens": len(fake.tokens),
                    "open": len(fake.connections),
                }
            print(json.dumps({"result": result}), flush=True)


def serve_scripted(page_size: int = 2) -> None:
    """Run a :class:`ScriptedGateway` driven by JSON lines on stdin (for the JS client's tests).

    Prints ``{"url"}`` first; then each command ``{"op": "store", "title"}``, ``{"op": "send_all",
    "method", "params"}``, ``{"op": "close_all", "code", "reason"}``, ``{"op": "worker", "up"}``,
    ``{"op": "hold_back", "seq"}`` or ``{"op": "hold_back", "title"}`` (:attr:`ScriptedGateway.held_back`)
    or ``{"op": "state"}`` is answered
    with one ``{"result"}`` line. Ends when stdin closes.
    """
    asyncio.run(_serve_scripted(page_size))
