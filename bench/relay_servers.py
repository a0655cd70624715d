"""The two baselines ``bench/gateway_fanout.py`` measures Herald's gateway against, each in its own process.

Run: ``python -m bench.relay_servers {bare-server,bare-relay} PORT [AMQP_URL]``; prints ``ready`` once it
listens. Both use the same websockets server settings (uvloop, compression off, no keepalive, the
gateway's listen backlog).

- **bare-server**: websockets only, no broker. It writes frames it generates itself when a ``/control``
  connection asks (``user N SIZE``: N frames round-robin over its connections; ``broadcast N SIZE``: N
  calls of ``websockets.broadcast`` to all). The floor for writing frames to sockets.
- **bare-relay**: websockets + aio-pika, what a competent engineer would write without Herald to relay
  the worker's frames, and the floor for relaying from RabbitMQ. It has the gateway's topology
  (docs/protocol.md §3), so both consume the same way: one exclusive, server-named queue bound to
  ``herald.broadcast`` and, for every user with a connection here, to ``herald.user.<id>`` (fanout,
  auto-delete), itself bound to ``herald.users`` with key ``<id>``. The user id is the URL path
  (``/<id>``): no JWT, no ``session.open``, no rate limits, no send-buffer cap, no in-app filter. The
  first connection of a user attaches the user, the last one unbinds the queue; both run on the one
  channel, whose calls aio-pika serializes, so a reconnect racing an unbind ends bound. Each message is
  consumed through aio-pika's ``Queue.consume`` (no acks) and its body written unchanged, as a text
  frame, to the user's connections (or to all of them for a broadcast) with ``websockets.broadcast``.
  It writes ``attached`` to each connection once its user's bindings are made (a later connection of
  an attached user gets it at once), so the benchmark, which opens one connection per user, knows when
  frames will reach it, as Herald's ``connected`` tells.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING, Any, Final

import aio_pika
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from shared.jsonrpc import notification_frame
from shared.topology import Topology

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aio_pika.abc import AbstractIncomingMessage

#: The websockets server settings both baselines share: compression off, no keepalive pings, and the
#: gateway's listen backlog, so all three accept a burst of 5,000 connects alike.
SERVE_OPTIONS: Final[dict[str, Any]] = {
    "compression": None,
    "ping_interval": None,
    "max_queue": 8,
    "backlog": 4096,
}


def frame_of_size(n: int, payload_bytes: int) -> bytes:
    """A ``notification:new`` frame of exactly ``payload_bytes`` bytes (all frames equal in size)."""
    base = notification_frame(
        "notification:new", {"id": f"{n:08d}", "seq": None, "type": "NEW_COMMENT", "m": ""}
    )
    pad = payload_bytes - len(base)
    return notification_frame(
        "notification:new", {"id": f"{n:08d}", "seq": None, "type": "NEW_COMMENT", "m": "x" * max(pad, 0)}
    )


async def listen(handler: Callable[[ServerConnection], Awaitable[None]], port: int) -> None:
    async with serve(handler, "127.0.0.1", port, **SERVE_OPTIONS):
        print("ready", flush=True)
        await asyncio.Future()


async def bare_server(port: int) -> None:
    """Writes frames generated in-process, on command: see the module docstring."""
    clients: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path != "/control":
            clients.append(ws)
            try:
                await ws.wait_closed()
            finally:
                clients.remove(ws)
            return
        async for command in ws:
            kind, count, size = str(command).split()
            frames = [frame_of_size(n, int(size)) for n in range(min(int(count), 1000))]
            targets = list(clients)
            for n in range(int(count)):
                frame = frames[n % len(frames)]
                if kind == "broadcast":
                    broadcast(targets, frame, text=True)
                else:
                    broadcast((targets[n % len(targets)],), frame, text=True)
            await ws.send("sent")

    await listen(handler, port)


async def bare_relay(port: int, amqp_url: str) -> None:
    """Relays the frames of ``herald.users`` and ``herald.broadcast``: see the module docstring."""
    names = Topology()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    users_exchange = await channel.declare_exchange(
        names.users_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    broadcast_exchange = await channel.declare_exchange(
        names.broadcast_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(broadcast_exchange)
    users: dict[str, set[ServerConnection]] = {}

    async def on_message(message: AbstractIncomingMessage) -> None:
        if message.exchange == names.broadcast_exchange:
            broadcast(itertools.chain.from_iterable(users.values()), message.body, text=True)
        else:
            broadcast(users.get(message.routing_key or "", ()), message.body, text=True)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        user_id = ws.request.path.removeprefix("/")
        connections = users.setdefault(user_id, set())
        first = not connections
        connections.add(ws)
        try:
            if first:
                exchange = await channel.declare_exchange(
                    names.user_exchange(user_id), aio_pika.ExchangeType.FANOUT, auto_delete=True
                )
                await queue.bind(exchange)
                await exchange.bind(users_exchange, routing_key=user_id)
            with contextlib.suppress(ConnectionClosed):  # the client may be gone already
                await ws.send("attached")
            await ws.wait_closed()
        finally:
            connections.discard(ws)
            if not connections and users.get(user_id) is connections:
                del users[user_id]
                await queue.unbind(names.user_exchange(user_id))

    await queue.consume(on_message, no_ack=True)
    await listen(handler, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["bare-server", "bare-relay"])
    parser.add_argument("port", type=int)
    parser.add_argument("amqp_url", nargs="?", help="the vhost the bare relay consumes from")
    args = parser.parse_args()
    if args.server == "bare-server":
        uvloop.run(bare_server(args.port))
    elif args.amqp_url is None:
        parser.error("bare-relay needs AMQP_URL")
    else:
        uvloop.run(bare_relay(args.port, args.amqp_url))


if __name__ == "__main__":
    main()
