"""Gateway protections (PROTOCOL §7): each close code and the rate limit shown on a real
gateway process, plus a slow reader that never delays a fast one."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import TYPE_CHECKING

import aio_pika
import orjson
import pytest
from websockets.asyncio.client import connect

from herald_ops.testing.gateway import (
    BROKER_SETTLES,
    Responder,
    call,
    metric,
    open_client,
    publish_user,
    recv_json,
    user_bindings,
    wait_closed,
)
from herald_ops.testing.stack import fresh_id, mint, stack_context, wait_until
from shared.jsonrpc import notification_frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack


@pytest.fixture(scope="module")
def limits_stack() -> Iterator[Stack]:
    with stack_context("herald_gwlim") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(limits_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(limits_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(scope="module")
def gateway(limits_stack: Stack, responder: Responder) -> HeraldProcess:
    return limits_stack.start_gateway(
        rate_limit_per_second=2,
        rate_limit_burst=3,
        max_connections_per_user=2,
        send_buffer_bytes=64 * 1024,
    )


async def test_frame_over_64_kib_closes_1009(gateway: HeraldProcess) -> None:
    ws, _ = await open_client(gateway)
    await ws.send("x" * (64 * 1024 + 1))
    code, _ = await wait_closed(ws)
    assert code == 1009


async def test_request_rate_is_limited_per_connection_with_4029_and_the_connection_stays(
    gateway: HeraldProcess,
) -> None:
    ws, _ = await open_client(gateway)
    other, _ = await open_client(gateway)
    try:
        for i in range(10):
            await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"}).decode())
        replies = [await recv_json(ws) for _ in range(10)]
        assert [r["id"] for r in replies] == list(range(10))
        limited = [r for r in replies if "error" in r]
        assert limited
        assert all(r["error"]["code"] == 4029 for r in limited)
        assert sum(1 for r in replies if r.get("result") == "pong") >= 3  # the burst
        # Another connection has its own bucket.
        assert (await call(other, "ping"))["result"] == "pong"

        async def pong_again() -> bool:
            return (await call(ws, "ping")).get("result") == "pong"

        await wait_until(pong_again, 10, "the bucket refilled")
    finally:
        await asyncio.gather(ws.close(), other.close())


async def test_connections_per_user_are_capped_with_4008(gateway: HeraldProcess) -> None:
    user = fresh_id()
    first, _ = await open_client(gateway, user)
    second, _ = await open_client(gateway, user)
    try:
        async with connect(f"{gateway.ws_url}?token={mint(user)}") as third:
            code, _ = await wait_closed(third)
            assert code == 4008
        someone_else, _ = await open_client(gateway)  # the cap is per user
        await someone_else.close()
        await first.close()
        await wait_until(lambda: metric(gateway, "herald_gateway_connections") <= 1, 10, "first released")
        replacement, _ = await open_client(gateway, user)
        await replacement.close()
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_slow_reader_is_closed_1013_and_never_delays_a_fast_one(
    limits_stack: Stack, gateway: HeraldProcess
) -> None:
    user = fresh_id()
    fast, _ = await open_client(gateway, user)
    # The slow reader never reads: a tiny receive buffer and a one-frame queue make the gateway's
    # transport buffer grow as soon as the kernel buffers are full.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    slow = await connect(f"{gateway.ws_url}?token={mint(user)}", sock=sock, max_queue=1, compression=None)
    assert (await recv_json(slow))["method"] == "connected"
    filler = "y" * 32_000
    frames = [notification_frame("notification:new", {"id": str(n), "pad": filler}) for n in range(400)]
    connection = await aio_pika.connect(limits_stack.amqp_url)
    try:
        channel = await connection.channel()
        # The fast reader keeps up (each frame is read before the next is published) and gets every
        # frame in order, while the slow one reads nothing and falls ever further behind.
        for frame in frames:
            await publish_user(channel, user, frame)
            assert (await fast.recv()).encode() == frame
        await wait_until(
            lambda: metric(gateway, 'herald_gateway_closes_total{code="1013"}') >= 1, 15, "the laggard closed"
        )
        code, _ = await wait_closed(slow)
        assert code == 1013
        assert (await call(fast, "ping"))["result"] == "pong"
    finally:
        await connection.close()
        await asyncio.gather(fast.close(), slow.close())


async def test_sigterm_closes_every_client_1001_unbinds_and_exits_0(
    limits_stack: Stack, responder: Responder
) -> None:
    gateway = limits_stack.start_gateway()
    user = fresh_id()
    clients = [(await open_client(gateway, user))[0], (await open_client(gateway))[0]]
    await wait_until(lambda: user_bindings(limits_stack.name, user) == 1, BROKER_SETTLES, "user bound")
    gateway.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(wait_closed(ws) for ws in clients))
    assert [code for code, _ in codes] == [1001, 1001]
    assert await asyncio.to_thread(gateway.stop) == 0
    assert user_bindings(limits_stack.name, user) == 0
    assert "gateway stopped" in gateway.logs()


async def test_keepalive_drops_a_peer_that_stops_answering_pings(
    limits_stack: Stack, responder: Responder
) -> None:
    gateway = limits_stack.start_gateway(ping_interval=0.3, ping_timeout=0.3)
    user = fresh_id()
    # A client that stops reading (its one-frame queue is full) also stops answering pings.
    # close_timeout: the mute client no longer reads, so its own close would wait for an answer it
    # cannot see.
    mute = await connect(
        f"{gateway.ws_url}?token={mint(user)}", max_queue=1, compression=None, close_timeout=0.1
    )
    assert (await recv_json(mute))["method"] == "connected"
    connection = await aio_pika.connect(limits_stack.amqp_url)
    try:
        channel = await connection.channel()
        for n in range(3):
            await publish_user(channel, user, notification_frame("notification:new", {"id": str(n)}))
        await wait_until(
            lambda: metric(gateway, "herald_gateway_connections") == 0, 15, "the silent peer was dropped"
        )
    finally:
        await connection.close()
        await mute.close()
        await asyncio.to_thread(gateway.stop)
