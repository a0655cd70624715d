"""The worker's ``herald.rpc`` consumer against the real broker: one slow request holds up nobody.

The consumer (``worker.rpc.RpcConsumer``) and the gateway's RPC client (``gateway.rpc.RpcClient``) run
in this process on a vhost of the test's own, with two test methods registered for the test's duration.
"""

from __future__ import annotations

import asyncio
import types
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import orjson
from faststream.rabbit import RabbitBroker

import worker.rpc
from gateway.rpc import RpcClient
from shared.settings import Settings
from shared.topology import Topology
from worker.requests.common import Method, NoParams

if TYPE_CHECKING:
    from herald_ops.testing.stack import Stack

PREFETCH = 8


async def test_a_slow_request_does_not_stop_the_requests_behind_it(fresh_stack: Stack) -> None:
    release = asyncio.Event()

    async def slow(runtime: Any, caller: Any, params: Any) -> str:
        await release.wait()
        return "slow"

    async def fast(runtime: Any, caller: Any, params: Any) -> str:
        return "fast"

    worker.rpc.METHODS["test.slow"] = Method(NoParams, slow)
    worker.rpc.METHODS["test.fast"] = Method(NoParams, fast)
    settings = Settings(database_url=fresh_stack.database_url, rpc_prefetch=PREFETCH)
    topology = Topology()
    broker = RabbitBroker(fresh_stack.amqp_url, logger=None)
    consumer = worker.rpc.RpcConsumer(settings, topology, lambda: cast("Any", types.SimpleNamespace()))
    connection = await aio_pika.connect(fresh_stack.amqp_url)
    try:
        await broker.connect()
        await consumer.start(broker)
        client = RpcClient(topology.rpc_queue, 10.0, "guest")
        await client.attach(await connection.channel(publisher_confirms=False))

        def body(method: str) -> bytes:
            return orjson.dumps({"method": method, "params": {}, "user_id": "u1", "admin": False})

        slow_reply = asyncio.ensure_future(client.call(body("test.slow")))
        # Three prefetch windows of quick requests while the slow one runs: each answered one must be
        # acked without waiting for the slow one's tag, or the broker stops delivering after PREFETCH - 1.
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.call(body("test.fast")) for _ in range(3 * PREFETCH))), 20
        )
        assert all(b'"fast"' in reply for reply in replies)
        assert not slow_reply.done()
        release.set()
        assert b'"slow"' in await asyncio.wait_for(slow_reply, 10)
    finally:
        release.set()
        del worker.rpc.METHODS["test.slow"], worker.rpc.METHODS["test.fast"]
        await consumer.stop()
        await connection.close()
        await broker.stop()
