"""The Python client's connection lifecycle against a real worker + gateway (herald_client/client.py).

Reconnect + sync without duplicates after the gateway is killed or shut down (1001), the gateway's
``sync:required`` after it lost RabbitMQ, token refresh before expiry, the close codes that stop the
client (4401 refusals, a failing token provider, 4008), and a first session whose ``connected`` had no
``last_seq`` anchoring its watermark once the worker answers (on a stack of its own); and the producer's
``send`` right after the broker dropped its connection. The ``herald`` fixture, ``Recorder`` and
``session`` come from test_client_python.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import pytest

from herald_client.client import (
    HeraldAuthError,
    HeraldClient,
    HeraldClosedError,
)
from herald_client.producer import Producer, PublishError
from herald_client.protocol import events_exchange
from herald_client.tokens import token_expiry
from herald_ops.testing.client import event_body, publish
from herald_ops.testing.stack import (
    close_connections,
    fresh_id,
    mint,
    rabbitmqctl,
    stack_context,
    wait_until,
)
from tests.integration.test_client_python import Recorder, herald, session

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

__all__ = ["herald"]  # the module-scoped stack fixture of test_client_python (this module gets its own)


async def test_reconnect_after_gateway_restart_syncs_without_duplicates(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    stack, gateway = herald
    user = fresh_id()
    tokens: list[str] = []

    def provider() -> str:
        tokens.append(mint(user))
        return tokens[-1]

    client = HeraldClient(gateway.ws_url, provider, backoff_base=0.05, backoff_max=0.5)
    recorder = Recorder(client)
    try:
        async with client:
            await publish(stack.amqp_url, event_body(user, title="before"))
            await wait_until(lambda: len(recorder.new_ids()) == 1, 10, "the first notification")

            gateway.kill()
            await wait_until(lambda: client.state == "reconnecting", 10, "the client to notice")
            await publish(stack.amqp_url, *(event_body(user, title=f"missed {i}") for i in range(3)))
            # The worker stores them while no gateway is up; then the gateway comes back on the same port.
            await asyncio.to_thread(gateway.launch)
            await wait_until(lambda: len(recorder.new_ids()) == 4, 20, "the missed notifications")

            assert len(set(recorder.new_ids())) == 4
            replayed = [e.params["title"] for e in recorder.named("notification:new") if e.replayed]
            assert sorted(replayed) == ["missed 0", "missed 1", "missed 2"]
            # The catch-up ends with a count fetch, after the replayed items: when the restarted gateway's
            # broker link was not up yet, ``connected`` carried no counts and only that fetch has them.
            await wait_until(lambda: client.unread_count == 4, 10, "the count after the catch-up")
            assert len(tokens) >= 2  # a fresh token for the reconnect
            assert recorder.named("disconnected")

            # Live delivery works again and nothing is repeated.
            await publish(stack.amqp_url, event_body(user, title="after"))
            await wait_until(lambda: len(recorder.new_ids()) == 5, 10, "a live notification after reconnect")
            assert len(set(recorder.new_ids())) == 5
    finally:
        await recorder.stop()
        if gateway.popen is not None and gateway.popen.poll() is not None:
            await asyncio.to_thread(gateway.launch)


async def test_token_is_refreshed_before_expiry(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald
    user = fresh_id()
    issued: list[str] = []

    def provider() -> str:
        issued.append(mint(user, ttl=6))
        return issued[-1]

    # The margin is capped at half a token's life: each refresh has about 3 s before its token expires.
    client = HeraldClient(gateway.ws_url, provider, refresh_margin=5)
    recorder = Recorder(client)
    try:
        async with client:
            first_connection = client.connection_id
            # Well past the first token's expiry the same connection is still up: auth.refresh worked.
            first_expiry = token_expiry(issued[0])
            assert first_expiry is not None
            await wait_until(
                lambda: len(issued) >= 3 and time.time() > first_expiry + 0.5, 30, "two refreshes"
            )
            assert await client.ping() == "pong"
            assert client.connection_id == first_connection
            assert not recorder.named("disconnected")
    finally:
        await recorder.stop()


async def test_refused_tokens_stop_the_client(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald
    calls: list[int] = []

    def bad_provider() -> str:
        calls.append(1)
        return mint("mallory", secret="not-the-gateway-secret-but-long-enough!!")

    client = HeraldClient(gateway.ws_url, bad_provider, backoff_base=0.05)
    with pytest.raises(HeraldAuthError) as refused:
        await client.start()
    assert refused.value.code == 4401
    assert len(calls) == 2  # one fresh token was tried before giving up
    assert client.state == "closed"
    with pytest.raises(HeraldClosedError):
        await client.ping()


async def test_token_provider_failure_stops_the_client(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald

    def failing() -> str:
        raise RuntimeError("auth service down")

    client = HeraldClient(gateway.ws_url, failing)
    with pytest.raises(HeraldAuthError, match="auth service down"):
        await client.start()
    assert client.state == "closed"


async def test_too_many_connections_stops_with_4008(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, _ = herald
    gateway = stack.start_gateway(max_connections_per_user=1)
    user = fresh_id()
    try:
        async with session(gateway.ws_url, user) as (first, _):
            extra = HeraldClient(gateway.ws_url, lambda: mint(user), backoff_base=0.05)
            with pytest.raises(HeraldClosedError) as refused:
                await extra.start()
            assert refused.value.code == 4008
            assert extra.state == "closed"
            assert first.state == "open"
    finally:
        gateway.stop()


@pytest.fixture
def workerless_stack() -> Iterator[Stack]:
    """A stack of its own with no process running yet (the test starts them)."""
    with stack_context("herald_pyanchor") as stack:
        yield stack


async def _stored_last_seq(stack: Stack, user: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        value = await conn.fetchval("SELECT last_seq FROM users WHERE user_id = $1", user)
    finally:
        await conn.close()
    return int(value or 0)


async def test_a_first_session_without_last_seq_anchors_its_watermark_when_the_worker_answers(
    workerless_stack: Stack,
) -> None:
    """Amendment 42: ``connected`` without ``last_seq`` (no worker answered the session lookup) leaves no
    watermark; the client's catch-up retries ``notifications.unread_count`` until the worker is up and
    anchors it there, so a later session resumes from it and recovers what it missed."""
    stack = workerless_stack
    user = fresh_id()
    processes: list[HeraldProcess] = []
    clients: list[HeraldClient] = []
    recorders: list[Recorder] = []
    try:
        gateway = await asyncio.to_thread(stack.start_gateway, rpc_timeout=0.5)
        processes.append(gateway)
        first = HeraldClient(gateway.ws_url, lambda: mint(user), backoff_base=0.05, backoff_max=0.5)
        clients.append(first)
        recorders.append(seen := Recorder(first))
        await asyncio.sleep(0)
        await first.start()
        [connected] = seen.named("connected")
        assert "last_seq" not in connected.params
        assert first.watermark is None

        processes.append(await asyncio.to_thread(stack.start_worker))
        await wait_until(lambda: first.watermark is not None, 20, "the watermark anchored by the catch-up")
        anchored = first.watermark
        assert anchored is not None
        assert anchored == await _stored_last_seq(stack, user)
        await first.close()

        await publish(stack.amqp_url, *(event_body(user, title=f"missed {i}") for i in range(3)))

        async def stored() -> bool:
            return await _stored_last_seq(stack, user) == anchored + 3

        await wait_until(stored, 20, "the three notifications stored")

        second = HeraldClient(gateway.ws_url, lambda: mint(user), backoff_base=0.05, backoff_max=0.5)
        second.watermark = anchored  # resumed from the first session's watermark
        clients.append(second)
        recorders.append(resumed := Recorder(second))
        await asyncio.sleep(0)
        await second.start()
        await wait_until(
            lambda: second.watermark == anchored + 3 and second.unread_count == 3, 20, "the catch-up"
        )
        replayed = resumed.named("notification:new")
        assert sorted(e.params["title"] for e in replayed) == ["missed 0", "missed 1", "missed 2"]
        assert all(e.replayed for e in replayed)
        assert len(set(resumed.new_ids())) == 3
    finally:
        for recorder in recorders:
            await recorder.stop()
        for client in clients:
            await client.close()
        for process in processes:
            await asyncio.to_thread(process.stop)


async def test_gateway_broker_loss_sends_sync_required_and_the_client_catches_up(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    """The real gateway's ``sync:required`` after its AMQP connection drops (this stack's vhost only)."""
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        first = client.connection_id
        await asyncio.to_thread(rabbitmqctl, "close_all_connections", "--vhost", stack.name, "client test")
        await wait_until(lambda: recorder.named("sync:required"), 30, "sync:required from the gateway")
        assert client.connection_id == first  # the WebSocket itself survived

        await publish(stack.amqp_url, event_body(user, title="after the broker came back"))
        await wait_until(lambda: len(recorder.new_ids()) == 1, 20, "live delivery after the rebuild")
        assert client.unread_count == 1


async def test_gateway_shutdown_closes_1001_and_the_client_comes_back(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user, backoff_base=0.05, backoff_max=0.5) as (client, recorder):
        try:
            await asyncio.to_thread(gateway.stop)  # SIGTERM: a graceful shutdown
            await wait_until(lambda: recorder.named("disconnected"), 10, "the close")
            assert recorder.named("disconnected")[0].params["code"] == 1001
            await publish(stack.amqp_url, event_body(user, title="during the restart"))
        finally:
            await asyncio.to_thread(gateway.launch)
        await wait_until(lambda: recorder.new_ids(), 20, "the notification published during the restart")
        # Recovered by the catch-up sync, which re-anchors the count with a fetch after its last page.
        await wait_until(lambda: client.unread_count == 1, 20, "the count after the catch-up")
        assert client.state == "open"


async def test_a_send_right_after_the_broker_dropped_the_producer_raises_only_publish_error(
    fresh_stack: Stack,
) -> None:
    """aio-pika refuses a publish while its robust connection reconnects (ChannelInvalidStateError, for
    its 5 s reconnect interval): ``send`` waits for the connection and publishes again, else raises
    :class:`PublishError`; never an exception of aio-pika's."""
    queue_name = fresh_id("events")
    admin = await aio_pika.connect(fresh_stack.amqp_url)
    try:
        channel = await admin.channel()
        exchange = await channel.declare_exchange(
            events_exchange(), aio_pika.ExchangeType.TOPIC, durable=True
        )
        await (await channel.declare_queue(queue_name, durable=True)).bind(exchange, "#")
    finally:
        await admin.close()
    user = fresh_id()
    sent: list[str] = []
    async with Producer(fresh_stack.amqp_url) as producer:
        sent.append(await producer.send(user, "GRADE_RELEASED", "before the drop"))
        assert await asyncio.to_thread(close_connections, fresh_stack.name) >= 1  # the producer's
        # PublishError is the documented outcome when the connection is not back in time.
        with contextlib.suppress(PublishError):
            sent.append(await producer.send(user, "GRADE_RELEASED", "right after the drop"))
        sent.append(await producer.send(user, "GRADE_RELEASED", "after the drop"))

    reader = await aio_pika.connect(fresh_stack.amqp_url)
    try:
        queue = await (await reader.channel()).get_queue(queue_name)
        received: set[str | None] = set()

        async def all_received() -> bool:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None:
                received.add(message.message_id)
            return received >= set(sent)

        await wait_until(all_received, 10, "every event sent")
    finally:
        await reader.close()
