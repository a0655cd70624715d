"""The client side of ``bench/gateway_fanout.py`` and ``bench/connect_storm.py``: raw WebSocket clients
that only count the bytes they receive and keep the first frame (so they cost almost nothing), and what
the benchmarks wait for and read off a server process."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path
from typing import Any

from herald_ops.testing.stack import http_get, rabbitmqctl


def wire_size(payload: int) -> int:
    """Bytes of an unmasked server → client text frame carrying ``payload`` bytes."""
    return payload + (2 if payload <= 125 else 4 if payload <= 65535 else 10)


class Tally:
    """Bytes received by all clients after their handshakes; wakes a waiter at a target."""

    def __init__(self) -> None:
        self.total = 0
        self.target: int | None = None
        self.reached: asyncio.Event = asyncio.Event()

    def add(self, n: int) -> None:
        self.total += n
        if self.target is not None and self.total >= self.target:
            self.reached.set()

    def expect(self, extra: int) -> None:
        self.reached.clear()
        self.target = self.total + extra
        if self.total >= self.target:
            self.reached.set()


#: Opcodes of the control frames a server may send before any message: ping and pong.
PING_PONG = (0x9, 0xA)


def first_message(data: bytes) -> bytes | None:
    """The payload of the first frame at the start of ``data`` that is not a ping or a pong (the gateway's
    keepalive may ping before anything else), or ``None`` while that frame is incomplete. Server frames
    are unmasked."""
    while len(data) >= 2:
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + length:
            return None
        if opcode not in PING_PONG:
            return data[start : start + length]
        data = data[start + length :]
    return None


class RawClient(asyncio.Protocol):
    """A WebSocket client that only performs the handshake, counts the bytes it receives and keeps the
    payload of the first message (``first_frame``: a close frame's too, but no ping or pong)."""

    def __init__(self, path: str, port: int, tally: Tally) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.tally = tally
        self.head = b""
        loop = asyncio.get_running_loop()
        self.upgraded = loop.create_future()
        self.first_frame: asyncio.Future[bytes] = loop.create_future()
        self.received = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:  # a uvloop transport is no asyncio.Transport
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(self.head[:80].decode(errors="replace")))
                return
            data = self.head[end + 4 :]
            self.head = b""
            self.upgraded.set_result(None)
        if not self.first_frame.done():
            self.head += data
            if (payload := first_message(self.head)) is not None:
                self.head = b""
                self.first_frame.set_result(payload)
        self.received += len(data)
        self.tally.add(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during handshake"))
        # Cancelled rather than failed: a benchmark that never waits for a first frame gets no warning.
        self.first_frame.cancel()


async def open_clients(port: int, paths: list[str], tally: Tally, parallel: int = 200) -> list[RawClient]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)

    async def one(path: str) -> RawClient:
        async with gate:
            _, client = await loop.create_connection(lambda: RawClient(path, port, tally), "127.0.0.1", port)
            await client.upgraded
            return client

    return list(await asyncio.gather(*(one(p) for p in paths)))


async def wait_first_frames(clients: list[RawClient]) -> None:
    """Wait until every gateway client received ``connected`` (it is sent after the user is attached)."""
    deadline = time.monotonic() + 120
    while any(c.received == 0 for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("clients never got connected")
        await asyncio.sleep(0.05)


async def wait_gateway_connections(port: int, count: int) -> None:
    """Wait until the gateway reports ``count`` connections and as many users (one per connection here)."""
    deadline = time.monotonic() + 120
    expected = {f"herald_gateway_connections {count:.1f}", f"herald_gateway_users {count:.1f}"}
    while True:
        status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        if status == 200 and expected <= set(body.decode().splitlines()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway never reported {count} connections")
        await asyncio.sleep(0.2)


def user_exchanges_left(vhost: str) -> int:
    """How many per-user exchanges (``herald.user.*``) ``vhost`` still has: each goes when its last
    binding does."""
    listing = rabbitmqctl("list_exchanges", "-q", "-p", vhost, "name").stdout
    return sum(1 for line in listing.splitlines() if line.startswith("herald.user."))


async def wait_unbound(vhost: str, deadline: float = 300.0) -> None:
    """Wait until every per-user exchange of ``vhost`` is gone, so that the server holding their bindings
    can stop without leaving the broker to delete its queue with thousands of bindings (which takes it
    minutes: rabbitmq/rabbitmq-server#12926)."""
    give_up = time.monotonic() + deadline
    while (left := await asyncio.to_thread(user_exchanges_left, vhost)) > 0:
        if time.monotonic() > give_up:
            raise TimeoutError(f"{left} user exchanges still bound after {deadline:.0f} s")
        await asyncio.sleep(0.5)


def close_clients(clients: list[RawClient]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
