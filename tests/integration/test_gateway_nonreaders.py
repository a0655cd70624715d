"""Peers that send but never read cannot make the gateway hold more than its send buffer, nor keep a
connection (or the process's shutdown) waiting: a real gateway, clients on sockets with a tiny receive
buffer that never read what they are sent.

websockets answers pings by itself, past the send-buffer check the hub makes before relayed frames and
replies; and its closing handshake first waits for the send buffer to drain, which such a peer never lets
happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from typing import TYPE_CHECKING

import aio_pika
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from herald_ops.testing.gateway import Responder, metric, publish_user, recv_json
from herald_ops.testing.stack import fresh_id, mint, stack_context, wait_until
from shared.jsonrpc import notification_frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(180)

DROPPED = 'herald_gateway_closes_total{code="1013"}'


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    with stack_context("herald_gwmute") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(own_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(own_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


async def non_reader(gateway: HeraldProcess, token: str | None) -> ClientConnection:
    """A client whose socket takes 4 KiB at most and that never reads (after ``connected``, if it has a
    token): the gateway's transport buffer grows with everything sent to it once the kernel's are full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    url = gateway.ws_url if token is None else f"{gateway.ws_url}?token={token}"
    client = await connect(url, sock=sock, max_queue=1, compression=None, ping_interval=None, close_timeout=1)
    if token is not None:
        assert (await recv_json(client))["method"] == "connected"
    return client


async def ping_until_dropped(gateway: HeraldProcess, client: ClientConnection) -> float:
    """Send pings (never reading the pongs) until the gateway drops the client or 100,000 were sent; the
    gateway's count of 1013 drops then."""
    before = metric(gateway, DROPPED)
    with contextlib.suppress(ConnectionClosed, ConnectionError):
        for n in range(100_000):
            await client.ping(n.to_bytes(4, "big") + b"p" * 121)  # 125 bytes: the largest control frame
            if n % 2000 == 0 and metric(gateway, DROPPED) > before:
                break
    return metric(gateway, DROPPED) - before


@pytest.mark.parametrize("authenticated", [True, False], ids=["connected", "waiting-for-auth"])
async def test_a_peer_that_pings_and_never_reads_is_dropped_at_the_send_buffer(
    own_stack: Stack, responder: Responder, authenticated: bool
) -> None:
    gateway = own_stack.start_gateway(send_buffer_bytes=64 * 1024, auth_timeout=120)
    try:
        client = await non_reader(gateway, mint(fresh_id()) if authenticated else None)
        # Unchecked, the pongs piled up in the gateway's memory: 560 MiB in 12 s (measured), and a
        # connection still waiting for its `auth` frame is not even pinged by the keepalive.
        assert await ping_until_dropped(gateway, client) == 1
        client.transport.abort()
    finally:
        await asyncio.to_thread(gateway.stop)


async def test_a_dropped_non_reader_is_gone_and_sigterm_still_exits_0(
    own_stack: Stack, responder: Responder
) -> None:
    gateway = own_stack.start_gateway(send_buffer_bytes=64 * 1024)
    user = fresh_id()
    client = await non_reader(gateway, mint(user))
    connection = await aio_pika.connect(own_stack.amqp_url)
    try:
        channel = await connection.channel()
        before = metric(gateway, DROPPED)
        for n in range(200):  # 6.4 MB that the client never reads: past the send buffer, so 1013
            frame = notification_frame("notification:new", {"id": str(n), "pad": "y" * 32_000})
            await publish_user(channel, user, frame)
        await wait_until(lambda: metric(gateway, DROPPED) > before, 30, "the non-reader dropped")
        await connection.close()
        gateway.signal(signal.SIGTERM)
        # Closed with a closing handshake, the dropped connection waited for its send buffer to drain,
        # for good: its handler never ended, and the shutdown waited for it (`stop` then kills the
        # process after 60 s: exit code -9).
        assert await asyncio.to_thread(gateway.stop, 60.0) == 0
        assert "gateway stopped" in gateway.logs()
    finally:
        client.transport.abort()
