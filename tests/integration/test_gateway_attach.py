"""The gateway's batched attach against the real broker: :class:`gateway.broker.BrokerLink` in this process.

Attaches that arrive together go out as one batch per topology lane. Every user of a batch must end up
bound (a frame published to ``herald.users`` for each reaches the link's queue once), and a user whose
exchange the broker refuses must fail alone, not take the rest of its batch with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import pytest

from gateway.broker import ATTACH_ATTEMPTS, GATEWAY_QUEUES, BrokerLink
from gateway.errors import TopologyError
from gateway.metrics import Metrics
from gateway.rpc import RpcClient
from herald_ops.testing.gateway import NAMES, publish_user, user_frame
from herald_ops.testing.stack import close_connections, fresh_id, rabbitmqctl, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aio_pika.abc import AbstractChannel

    from gateway.hub import Hub
    from herald_ops.testing.stack import Stack


class RecordingHub:
    """Stands in for the hub: counts the frames relayed per user."""

    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()

    async def rebuild(self) -> None:
        """Nobody is connected before the first attach."""

    def relay_user(self, user_id: str, body: bytes, method: str | None) -> None:
        self.frames[user_id] += 1

    def relay_broadcast(self, body: bytes, notification_type: str | None, critical: bool) -> None:
        raise AssertionError("no broadcast is published here")


@contextlib.asynccontextmanager
async def running_link(
    stack: Stack, connection_name: str
) -> AsyncIterator[tuple[BrokerLink, RecordingHub, Metrics]]:
    hub, metrics = RecordingHub(), Metrics()
    rpc = RpcClient(NAMES.rpc_queue, timeout=5.0, broker_user="guest")
    started = BrokerLink(stack.amqp_url, NAMES, rpc, metrics, connection_name=connection_name)
    started.bind_hub(cast("Hub", hub))
    supervisor = asyncio.create_task(started.run())
    try:
        await wait_until(lambda: started.ready, 15, "the link is up")
        yield started, hub, metrics
    finally:
        await started.close()
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)


@pytest.fixture
async def link(stack: Stack) -> AsyncIterator[tuple[BrokerLink, RecordingHub, Metrics]]:
    async with running_link(stack, "test-attach") as started:
        yield started


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


def retries(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("herald_gateway_topology_retries_total") or 0.0


async def frames_reach(channel: AbstractChannel, hub: RecordingHub, users: list[str]) -> None:
    for user in users:
        await publish_user(channel, user, user_frame(user, 1))
    await wait_until(
        lambda: all(hub.frames[user] == 1 for user in users), 15, "one frame relayed for every user"
    )


async def test_users_attached_together_are_all_bound(
    link: tuple[BrokerLink, RecordingHub, Metrics], channel: AbstractChannel
) -> None:
    broker, hub, metrics = link
    users = [fresh_id("batch") for _ in range(300)]
    # Started in one turn of the event loop: each lane's first batch holds every user of the lane.
    outcomes = await asyncio.gather(*(broker.attach(user) for user in users))
    assert outcomes == [broker.generation] * len(users)
    await frames_reach(channel, hub, users)
    assert retries(metrics) == 0
    assert set(hub.frames) == set(users)


async def test_users_are_spread_over_the_gateway_queues_and_broadcasts_reach_one_of_them(
    link: tuple[BrokerLink, RecordingHub, Metrics], channel: AbstractChannel, stack: Stack
) -> None:
    broker, hub, _ = link
    users = [fresh_id("spread") for _ in range(400)]
    assert await asyncio.gather(*(broker.attach(user) for user in users)) == [broker.generation] * len(users)
    await frames_reach(channel, hub, users)
    listing = rabbitmqctl(
        "list_bindings", "-q", "-p", stack.name, "source_name", "destination_name", "destination_kind"
    ).stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    bound = {
        source: queue for source, queue, kind in rows if kind == "queue" and source.startswith("herald.user.")
    }
    ours = {bound[NAMES.user_exchange(user)] for user in users}
    # A crashed gateway's queues are deleted by the broker one by one, at a cost that grows far faster
    # than the bindings of one queue: so each user's exchange is bound to one of several queues.
    assert len(ours) == GATEWAY_QUEUES
    # One queue of the process takes broadcasts (other gateways of the session may have theirs), so
    # each broadcast frame arrives once.
    broadcast_queues = {queue for source, queue, _ in rows if source == NAMES.broadcast_exchange}
    assert len(broadcast_queues & ours) == 1


async def test_a_user_whose_exchange_the_broker_refuses_fails_alone(
    link: tuple[BrokerLink, RecordingHub, Metrics], channel: AbstractChannel
) -> None:
    broker, hub, metrics = link
    refused = fresh_id("refused")
    # Another kind of exchange under the user's name: the gateway's fanout declare gets 406 every time.
    await channel.declare_exchange(
        NAMES.user_exchange(refused), aio_pika.ExchangeType.DIRECT, durable=False, auto_delete=False
    )
    users = [fresh_id("batch") for _ in range(60)]
    everyone = [*users[:30], refused, *users[30:]]
    try:
        outcomes: list[Any] = await asyncio.gather(
            *(broker.attach(user) for user in everyone), return_exceptions=True
        )
        failed = {
            user: outcome
            for user, outcome in zip(everyone, outcomes, strict=True)
            if isinstance(outcome, BaseException)
        }
        assert list(failed) == [refused]
        assert isinstance(failed[refused], TopologyError)
        await frames_reach(channel, hub, users)
        # The lone user's own attempts, and before them the failed attempts of the batches holding it.
        assert retries(metrics) > ATTACH_ATTEMPTS
    finally:
        await channel.exchange_delete(NAMES.user_exchange(refused))


def user_bindings(stack: Stack, user: str) -> list[str]:
    """The queues ``user``'s exchange is bound to."""
    listing = rabbitmqctl("list_bindings", "-q", "-p", stack.name, "source_name", "destination_name").stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    return [queue for source, queue in rows if source == NAMES.user_exchange(user)]


async def test_an_attach_that_waited_through_a_reconnect_reports_the_generation_it_bound_in(
    stack: Stack, channel: AbstractChannel
) -> None:
    name = fresh_id("test-attach-reconnect")
    async with running_link(stack, name) as (broker, hub, _):
        user = fresh_id("waited")
        before = broker.generation
        lane = broker._lane(user)
        # The lane busy (as with another batch in flight): the attach waits for it while the link reconnects.
        async with lane.lock:
            attaching = asyncio.create_task(broker.attach(user))
            assert close_connections(stack.name, client=name) == 1
            await wait_until(lambda: broker.ready and broker.generation > before, 20, "the link reconnected")
        bound_in = await attaching
        assert bound_in == broker.generation
        await frames_reach(channel, hub, [user])
        # Detaching in the generation the attach reported removes the binding; with the older one it
        # would be skipped as belonging to a dead connection, and the binding would stay.
        await broker.detach(user, bound_in)
        await wait_until(lambda: not user_bindings(stack, user), 15, "the user's binding removed")
