"""The gateway end to end: real gateway processes, real WebSocket clients, real RabbitMQ.

Relay to every connection of a user across two gateways and to nobody else, bindings gone after the last
connection, churn without stray bindings or lost frames, and broadcast filtering by in-app preferences.
The fixtures here (a stack, a responder standing in for the workers, two gateways) serve
``test_gateway_forwarding`` (requests, bad frames, health and metrics, ``session.open_many``) and
``test_gateway_http`` (handshakes, static files, dev tokens) too. Limits, JWT and broker faults have their
own files.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import aio_pika
import orjson
import pytest
from websockets.asyncio.client import connect

from herald_ops.testing.gateway import (
    BROKER_SETTLES,
    SESSION_COUNTS,
    Responder,
    open_client,
    publish_broadcast,
    publish_user,
    stray_user_bindings,
    user_bindings,
    user_exchanges,
    user_frame,
    wait_closed,
)
from herald_ops.testing.stack import fresh_id, mint, stack_context, wait_until
from shared.jsonrpc import CloseCode, notification_frame
from shared.topology import Topology

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from aio_pika.abc import AbstractChannel
    from websockets.asyncio.client import ClientConnection

    from herald_ops.testing.stack import HeraldProcess, Stack


@pytest.fixture(scope="module")
def gw_stack() -> Iterator[Stack]:
    with stack_context("herald_gw") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(gw_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(gw_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(scope="module")
def gateways(gw_stack: Stack, responder: Responder) -> tuple[HeraldProcess, HeraldProcess]:
    # Generous rate limits: these tests send many frames; test_gateway_limits covers 4029.
    limits = {"rate_limit_per_second": 10_000, "rate_limit_burst": 10_000, "max_connections_per_user": 64}
    return gw_stack.start_gateway(**limits), gw_stack.start_gateway(**limits)


@pytest.fixture(scope="module")
async def channel(gw_stack: Stack) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(gw_stack.amqp_url)
    yield await connection.channel()
    await connection.close()


async def close_all(clients: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in clients))


async def test_connected_carries_session_counts_and_user(gateways: tuple[HeraldProcess, ...]) -> None:
    user = fresh_id()
    ws, params = await open_client(gateways[0], user)
    try:
        assert params["user_id"] == user
        assert params["unread_count"] == SESSION_COUNTS["unread_count"]
        assert params["last_seq"] == SESSION_COUNTS["last_seq"]
        assert params["connection_id"]
    finally:
        await ws.close()


async def test_user_frame_reaches_every_connection_of_the_user_on_both_gateways_and_nobody_else(
    gw_stack: Stack, gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel
) -> None:
    alice, bob = fresh_id("alice"), fresh_id("bob")
    a, b = gateways
    alice_clients = [(await open_client(gw, alice))[0] for gw in (a, a, b)]
    bob_clients = [(await open_client(gw, bob))[0] for gw in (a, b)]
    try:
        await wait_until(
            lambda: user_bindings(gw_stack.name, alice) == 2, BROKER_SETTLES, "alice bound on both gateways"
        )
        frame = user_frame(alice, 1)
        await publish_user(channel, alice, frame)
        for ws in alice_clients:
            assert (await ws.recv()).encode() == frame  # the worker's bytes, untouched
        # Bob's first frame is his own: alice's frame never reached him.
        await publish_user(channel, bob, user_frame(bob, 1))
        for ws in bob_clients:
            assert orjson.loads(await ws.recv())["params"]["id"] == f"{bob}-1"
    finally:
        await close_all(alice_clients + bob_clients)


async def test_binding_goes_with_the_last_connection_of_a_user_on_each_gateway(
    gw_stack: Stack, gateways: tuple[HeraldProcess, HeraldProcess]
) -> None:
    user = fresh_id()
    a, b = gateways
    on_a1, on_a2, on_b = [(await open_client(gw, user))[0] for gw in (a, a, b)]
    vhost = gw_stack.name
    await wait_until(lambda: user_bindings(vhost, user) == 2, BROKER_SETTLES, "one binding per gateway")
    await on_a1.close()
    await on_b.close()
    await wait_until(
        lambda: user_bindings(vhost, user) == 1, BROKER_SETTLES, "gateway b unbound, a still bound"
    )
    await on_a2.close()
    await wait_until(lambda: user_bindings(vhost, user) == 0, BROKER_SETTLES, "last binding gone")
    await wait_until(
        lambda: f"herald.user.{user}" not in user_exchanges(vhost), 10, "the auto-delete exchange went too"
    )


async def test_churn_leaves_no_stray_bindings_and_loses_no_frame_for_users_who_stayed(
    gw_stack: Stack, gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel
) -> None:
    users = [fresh_id("churn") for _ in range(20)]
    stayers = users[:10]
    rng = random.Random(7)
    stayed: dict[str, list[ClientConnection]] = {}
    for user in stayers:
        stayed[user] = [(await open_client(gateways[rng.randrange(2)], user))[0]]
    received: dict[ClientConnection, list[bytes]] = {ws: [] for clients in stayed.values() for ws in clients}

    async def read(ws: ClientConnection) -> None:
        async for frame in ws:
            received[ws].append(frame.encode() if isinstance(frame, str) else frame)

    readers = [asyncio.create_task(read(ws)) for ws in received]
    churn_slots = asyncio.Semaphore(20)

    async def churn_one(i: int) -> None:
        async with churn_slots:
            ws, _ = await open_client(gateways[i % 2], users[rng.randrange(20)])
            await asyncio.sleep(rng.random() * 0.05)
            await ws.close()

    sent: dict[str, list[bytes]] = {user: [] for user in stayers}

    async def publish_during_churn() -> None:
        for n in range(30):
            for user in stayers:
                frame = user_frame(user, n)
                sent[user].append(frame)
                await publish_user(channel, user, frame)
            await asyncio.sleep(0.02)

    await asyncio.gather(publish_during_churn(), *(churn_one(i) for i in range(200)))
    try:
        await wait_until(
            lambda: all(received[ws] == sent[user] for user, clients in stayed.items() for ws in clients),
            15,
            "every frame, in order, for every user who stayed",
        )
        vhost = gw_stack.name
        # Detaches of the churned connections finish after their close: wait for the topology to settle
        # (each look is a rabbitmqctl run, which takes seconds on a loaded machine).
        await wait_until(
            lambda: sorted(user_exchanges(vhost)) == sorted(f"herald.user.{u}" for u in stayers),
            BROKER_SETTLES,
            "exactly the stayers' exchanges remain",
        )
        await wait_until(
            lambda: all(user_bindings(vhost, user) == 1 for user in stayers),
            BROKER_SETTLES,
            "each stayer bound once",
        )
    finally:
        await close_all([ws for clients in stayed.values() for ws in clients])
        await asyncio.gather(*readers, return_exceptions=True)
    await wait_until(
        lambda: not stray_user_bindings(gw_stack.name), BROKER_SETTLES, "no per-user binding left"
    )


async def test_broadcast_follows_each_users_in_app_switches(
    gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel, responder: Responder
) -> None:
    loud, quiet = fresh_id("loud"), fresh_id("quiet")
    responder.preferences[quiet] = {
        "channels": {"in_app": True},
        "types": {"COURSE_UPDATE": {"in_app": False}},
    }
    loud_ws, _ = await open_client(gateways[0], loud)
    quiet_ws, _ = await open_client(gateways[1], quiet)
    try:
        muted = notification_frame("notification:new", {"id": "b1", "seq": None, "type": "COURSE_UPDATE"})
        other = notification_frame("notification:new", {"id": "b2", "seq": None, "type": "NEW_COMMENT"})
        await publish_broadcast(channel, "COURSE_UPDATE", muted)
        await publish_broadcast(channel, "NEW_COMMENT", other)
        assert [(await loud_ws.recv()).encode() for _ in range(2)] == [muted, other]
        assert (await quiet_ws.recv()).encode() == other  # the muted type never reached quiet
        # Turning the type back on arrives as a preferences:updated frame, which the gateway learns from.
        updated = notification_frame("preferences:updated", {"channels": {"in_app": True}, "types": {}})
        await publish_user(channel, quiet, updated, method="preferences:updated")
        assert (await quiet_ws.recv()).encode() == updated
        await publish_broadcast(channel, "COURSE_UPDATE", muted)
        assert (await quiet_ws.recv()).encode() == muted
    finally:
        await close_all([loud_ws, quiet_ws])


async def test_a_user_whose_attach_the_broker_refuses_is_closed_1013_not_left_deaf(
    gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel
) -> None:
    # An exchange of another type under the user's name: every declare of it is refused (406) on a live
    # link. Connected anyway, the client would get no frame ever, and no reconnect would come to repair it.
    user = fresh_id()
    conflicting = await channel.declare_exchange(
        Topology().user_exchange(user), aio_pika.ExchangeType.DIRECT, durable=True
    )
    try:
        ws = await connect(f"{gateways[0].ws_url}?token={mint(user)}", compression=None)
        code, reason = await wait_closed(ws, timeout=60)
        assert (code, reason) == (CloseCode.TRY_AGAIN_LATER, "subscription failed")
    finally:
        await conflicting.delete()
    ws, params = await open_client(gateways[0], user)  # the broker takes it again: the reconnect works
    await ws.close()
    assert params["user_id"] == user
