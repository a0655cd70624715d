"""The gateway's broker link comes back promptly: retries are at most a second apart, and it connects as
soon as the broker's port accepts again (the broker is cut off by a loopback proxy, not stopped)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import orjson

from herald_ops.testing.gateway import Responder, call, open_client, recv_json
from herald_ops.testing.proxy import TcpProxy
from herald_ops.testing.stack import free_port, http_status, wait_until

if TYPE_CHECKING:
    from herald_ops.testing.stack import HeraldProcess, Stack


def through(amqp_url: str, port: int) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))


def retry_delays(gateway: HeraldProcess) -> list[float]:
    lines = [orjson.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    return [line["retry_in"] for line in lines if line.get("event") == "broker connect failed"]


async def test_the_broker_link_retries_at_most_a_second_apart_and_comes_back(fresh_stack: Stack) -> None:
    responder = Responder(fresh_stack.amqp_url)
    await responder.start()
    broker = urlsplit(fresh_stack.amqp_url)
    proxy = TcpProxy(free_port(), broker.hostname or "127.0.0.1", broker.port or 5672)
    await proxy.start()
    # Started from a thread: waiting for /readyz blocks, and the proxy runs on this event loop.
    gateway = await asyncio.to_thread(
        fresh_stack.start_gateway, amqp_url=through(fresh_stack.amqp_url, proxy.port)
    )
    try:
        ws, _ = await open_client(gateway)
        await proxy.stop()
        await wait_until(lambda: http_status(f"{gateway.url}/readyz") == 503, 20, "the link noticed the cut")
        # Long enough for an uncapped doubling backoff to pass one second several times over.
        await wait_until(lambda: len(retry_delays(gateway)) >= 8, 60, "eight failed reconnects")
        await proxy.start()
        await wait_until(lambda: http_status(f"{gateway.url}/readyz") == 200, 20, "the link back up")
        assert max(retry_delays(gateway)) <= 1.0
        assert (await recv_json(ws))["method"] == "sync:required"
        assert (await call(ws, "ping"))["result"] == "pong"
        await ws.close()
    finally:
        await asyncio.to_thread(gateway.stop)
        await proxy.stop()
        await responder.stop()
