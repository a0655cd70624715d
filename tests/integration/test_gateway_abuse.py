"""One user cannot exhaust a gateway: replies count against the send buffer, requests in flight are
capped per connection and per user, and a user's connections share one rate budget."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

import orjson
import pytest
from websockets.asyncio.client import connect

from herald_ops.testing.gateway import Responder, call, metric, open_client, recv_json, wait_closed
from herald_ops.testing.stack import fresh_id, mint, stack_context, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from websockets.asyncio.client import ClientConnection

    from herald_ops.testing.stack import HeraldProcess, Stack


@pytest.fixture(scope="module")
def abuse_stack() -> Iterator[Stack]:
    with stack_context("herald_abuse") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(abuse_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(abuse_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(scope="module")
def gateway(abuse_stack: Stack, responder: Responder) -> HeraldProcess:
    # Rate limits out of the way: these tests are about memory and in-flight work.
    return abuse_stack.start_gateway(
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        user_rate_limit_per_second=1000,
        user_rate_limit_burst=1000,
        send_buffer_bytes=64 * 1024,
        max_requests_in_flight=4,
        max_user_requests_in_flight=6,
    )


def request(n: int, method: str = "notifications.list", **params: object) -> str:
    return orjson.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params}).decode()


async def test_a_client_that_never_reads_its_replies_is_closed_1013(gateway: HeraldProcess) -> None:
    # The responder echoes each request, so every reply carries the 60 kB pad back: 80 replies are far
    # more than the 64 KiB send buffer plus what the kernel absorbs.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    mute = await connect(
        f"{gateway.ws_url}?token={mint(fresh_id())}", sock=sock, max_queue=1, compression=None
    )
    assert (await recv_json(mute))["method"] == "connected"
    before = metric(gateway, 'herald_gateway_closes_total{code="1013"}')

    async def flood() -> None:
        for n in range(80):
            await mute.send(request(n, pad="p" * 60_000))

    # The gateway stops reading once replies back up, so the flood may never finish writing.
    flooding = asyncio.create_task(flood())
    try:
        await wait_until(
            lambda: metric(gateway, 'herald_gateway_closes_total{code="1013"}') > before,
            20,
            "the non-reading client closed 1013",
        )
    finally:
        flooding.cancel()
        with contextlib.suppress(BaseException):
            await flooding
    code, _ = await wait_closed(mute)
    assert code == 1013
    healthy, _ = await open_client(gateway)
    assert (await call(healthy, "ping"))["result"] == "pong"
    await healthy.close()


async def answers(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    return [await recv_json(ws, timeout=30) for _ in range(count)]


async def test_requests_in_flight_are_capped_per_connection_and_none_is_lost(
    gateway: HeraldProcess, responder: Responder
) -> None:
    user = fresh_id()
    ws, _ = await open_client(gateway, user)
    try:
        for n in range(10):
            await ws.send(request(n, delay=0.2))
        replies = await answers(ws, 10)
        assert sorted(r["id"] for r in replies) == list(range(10))  # type: ignore[type-var]
        assert all("result" in r for r in replies)
        assert responder.peak_in_flight[user] == 4
    finally:
        await ws.close()


async def test_requests_in_flight_are_capped_per_user_across_connections(
    gateway: HeraldProcess, responder: Responder
) -> None:
    user = fresh_id()
    clients = [(await open_client(gateway, user))[0] for _ in range(3)]
    try:
        for ws in clients:
            for n in range(4):
                await ws.send(request(n, delay=0.3))
        for ws in clients:
            assert len([r for r in await answers(ws, 4) if "result" in r]) == 4
        assert responder.peak_in_flight[user] == 6
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_a_users_connections_share_one_rate_budget(abuse_stack: Stack, responder: Responder) -> None:
    # A refill of one token per 1,000 s: the budget is the burst, whatever the machine's speed.
    gateway = abuse_stack.start_gateway(
        rate_limit_per_second=100,
        rate_limit_burst=100,
        user_rate_limit_per_second=0.001,
        user_rate_limit_burst=4,
    )
    user = fresh_id()
    try:
        first, _ = await open_client(gateway, user)
        second, _ = await open_client(gateway, user)
        stranger, _ = await open_client(gateway)
        assert [(await call(first, "ping")).get("result") for _ in range(4)] == ["pong"] * 4
        refused = await call(second, "ping")
        assert refused["error"]["code"] == 4029  # type: ignore[index]
        assert (await call(stranger, "ping"))["result"] == "pong"  # the budget is per user
        await asyncio.gather(first.close(), second.close(), stranger.close())
    finally:
        await asyncio.to_thread(gateway.stop)
