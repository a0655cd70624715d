"""The gateway's keepalive (gateway/timers.py ``Keepalive``) over real loopback WebSocket connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.protocol import State

from gateway.timers import Keepalive
from herald_ops.testing.stack import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from websockets.asyncio.server import ServerConnection


@contextlib.contextmanager
def peer_that_never_reads(port: int, path: str) -> Iterator[socket.socket]:
    """A WebSocket client that sends its upgrade request and then reads nothing, not even the answer,
    with the smallest receive window, so what the server sends it queues on the server's side."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # before connecting: it sets the window
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        yield sock
    finally:
        sock.close()


async def test_a_peer_that_stopped_reading_is_dropped_and_stalls_nobody() -> None:
    """A peer that stopped reading with output queued for it cannot answer pings: its ping waits behind
    that output. It is dropped like a silent peer, and nobody else's keepalive waits for it."""
    connections: dict[str, ServerConnection] = {}
    queued = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        name = connection.request.path.strip("/") if connection.request else ""
        connections[name] = connection
        if name == "stalled":
            # A small kernel buffer on this side too, so the output queues in the transport.
            connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            send = asyncio.ensure_future(connection.send("x" * 500_000))
            await wait_until(connection.transport.get_write_buffer_size, 10, "output queued for the peer")
            queued.set()
            with contextlib.suppress(Exception):  # the connection is dropped under it
                await send
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        rounds = 0

        def pinged() -> list[ServerConnection]:
            nonlocal rounds
            rounds += 1
            return list(connections.values())

        keepalive: asyncio.Future[None] | None = None
        try:
            with peer_that_never_reads(port, "stalled"), peer_that_never_reads(port, "silent"):
                async with connect(f"ws://127.0.0.1:{port}/healthy", ping_interval=None) as healthy:
                    await asyncio.wait_for(queued.wait(), 10)
                    await wait_until(lambda: len(connections) == 3, 10, "three connections")
                    keepalive = asyncio.ensure_future(Keepalive(pinged, 0.2, 0.3).run())

                    def dropped(name: str) -> bool:
                        return connections[name].protocol.state is State.CLOSED

                    await wait_until(lambda: dropped("stalled") and dropped("silent"), 10, "both dropped")
                    later = rounds + 3
                    await wait_until(lambda: rounds >= later, 10, "three more keepalive rounds")
                    # The healthy peer answers every ping (its connection reads and pongs on its own).
                    assert connections["healthy"].protocol.state is State.OPEN
                    assert healthy.protocol.state is State.OPEN
        finally:
            if keepalive is not None:
                keepalive.cancel()
