"""Broker connection loss: the gateway reports the outage on ``/readyz``, recovers by
itself, rebuilds the bindings of the users still connected (and only those), tells them to sync, and
relays the next frame.

Only this test's own vhost is disturbed: its gateway connection is closed with ``rabbitmqctl
close_connection`` while guest's permissions on the vhost are withdrawn (so the outage lasts until the
test restores them). Other tests' connections and vhosts are untouched.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aio_pika
import orjson
import pytest

from herald_ops.testing.gateway import (
    BROKER_SETTLES,
    Responder,
    open_client,
    publish_user,
    recv_json,
    user_bindings,
    user_exchanges,
    user_frame,
)
from herald_ops.testing.stack import (
    close_connections,
    fresh_id,
    http_status,
    rabbitmqctl,
    stack_context,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[Stack]:
    with stack_context("herald_gwfault") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(fault_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(fault_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


async def test_gateway_recovers_from_a_broker_side_drop(fault_stack: Stack, responder: Responder) -> None:
    gateway: HeraldProcess = fault_stack.start_gateway()
    vhost = fault_stack.name
    stayer, leaver = fresh_id("stay"), fresh_id("leave")
    stay_ws, _ = await open_client(gateway, stayer)
    leave_ws, _ = await open_client(gateway, leaver)
    await wait_until(
        lambda: user_bindings(vhost, stayer) == 1 and user_bindings(vhost, leaver) == 1,
        BROKER_SETTLES,
        "both bound",
    )
    rabbitmqctl("clear_permissions", "-p", vhost, "guest")
    try:
        assert close_connections(vhost, client="herald-gateway") == 1
        await wait_until(
            lambda: http_status(f"{gateway.url}/readyz") == 503, 10, "/readyz reports the outage"
        )
        assert http_status(f"{gateway.url}/healthz") == 200
        await leave_ws.close()  # leaves during the outage: must not be rebuilt
    finally:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    await wait_until(lambda: http_status(f"{gateway.url}/readyz") == 200, 30, "the gateway reconnected")
    assert (await recv_json(stay_ws, timeout=15))["method"] == "sync:required"
    await wait_until(lambda: user_bindings(vhost, stayer) == 1, BROKER_SETTLES, "the stayer rebound")
    assert user_bindings(vhost, leaver) == 0
    assert f"herald.user.{leaver}" not in user_exchanges(vhost)
    connection = await aio_pika.connect(fault_stack.amqp_url)
    try:
        frame = user_frame(stayer, 1)
        await publish_user(await connection.channel(), stayer, frame)
        assert (await stay_ws.recv()).encode() == frame
    finally:
        await connection.close()
        await stay_ws.close()
    # The stayer's requests work again too (the RPC client re-attached on the new connection).
    ws, params = await open_client(gateway, stayer)
    assert "last_seq" in params
    await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "notifications.unread_count"}).decode())
    assert (await recv_json(ws))["result"]["echo"]["user_id"] == stayer
    await asyncio.gather(ws.close())
