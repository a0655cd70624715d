"""Least privilege on the broker: ``herald broker setup`` creates one user per role in the module's own
vhost (deleted afterwards); Herald runs on them (herald-api on the gateway's user: it calls the workers
the same way); a producer can write only to ``herald.events``; the worker serves requests only from the
gateway's user, which the broker vouches for through ``user_id``."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

import aio_pika
import aiormq
import asyncpg
import httpx
import orjson
import pytest

from gateway.rpc import RpcClient
from herald_client.producer import Producer, PublishError
from herald_ops.broker import ROLES, commands, password_changes
from herald_ops.testing.delivery import running_mailbox
from herald_ops.testing.gateway import call, open_client
from herald_ops.testing.stack import AMQP_BASE, ROOT, fresh_id, mint, rabbitmqctl, stack_context, wait_until
from shared.jsonrpc import rpc_request
from shared.topology import Topology
from worker.vapid import new_key_pair

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.stack import Stack


def role_url(stack: Stack, user: str, password: str) -> str:
    host = AMQP_BASE.split("@", 1)[1]
    return f"amqp://{quote(user)}:{quote(password)}@{host}/{stack.name}"


@pytest.fixture(scope="module")
def users_stack() -> Iterator[Stack]:
    """One vhost and database for the module: ``rabbitmqctl`` starts an Erlang VM per call, so the
    users are created once (``roles``) and each test starts and stops its own processes on them."""
    with stack_context("herald_users") as created:
        yield created


@pytest.fixture
def stack(users_stack: Stack) -> Iterator[Stack]:
    """The module's stack, with the processes this test started stopped afterwards."""
    try:
        yield users_stack
    finally:
        users_stack.stop_all()


@contextmanager
def broker_setup(stack: Stack, *options: str) -> Iterator[dict[str, str]]:
    """``herald broker setup`` in the stack's vhost: role → AMQP URL of its new user (deleted after)."""
    name_prefix = fresh_id("t")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "herald_ops.cli",
            "broker",
            "setup",
            "--vhost",
            stack.name,
            "--name-prefix",
            name_prefix,
            *options,
        ],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    created = [line.split("\t") for line in done.stdout.splitlines()]
    try:
        assert done.returncode == 0, done.stderr
        assert [role for role, _, _ in created] == list(ROLES)
        yield {role: role_url(stack, user, password) for role, user, password in created}
    finally:
        with ThreadPoolExecutor(max_workers=len(ROLES)) as pool:  # an Erlang VM per call: in parallel
            list(
                pool.map(lambda role: rabbitmqctl("delete_user", f"{name_prefix}-{role}", check=False), ROLES)
            )


@pytest.fixture(scope="module")
def roles(users_stack: Stack) -> Iterator[dict[str, str]]:
    """``herald broker setup`` in the module's vhost: role → AMQP URL of its new user."""
    with broker_setup(users_stack) as created:
        yield created


def nest_emit(producer_url: str, user: str, title: str) -> subprocess.CompletedProcess[str]:
    """One event from a real NestJS ``ClientRMQ`` set up as the README shows (clients/scripts)."""
    return subprocess.run(
        ["node", "scripts/nest-emit.cjs", producer_url, user, title],
        cwd=ROOT / "clients",
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_herald_runs_on_least_privilege_users(stack: Stack, roles: dict[str, str]) -> None:
    gateway_user = roles["gateway"].split("//")[1].split(":")[0]
    stack.start_worker(amqp_url=roles["worker"], rpc_trusted_users=gateway_user)
    gateway = stack.start_gateway(amqp_url=roles["gateway"])
    api = stack.start_api(amqp_url=roles["gateway"])
    stack.start_delivery(amqp_url=roles["delivery"])  # ready: its queues declared and consumed
    user = fresh_id()
    ws, _ = await open_client(gateway, user)
    assert "result" in await call(ws, "notifications.unread_count")
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as http:
        count = await http.get(
            "/api/notifications/realtime/unread-count", headers={"Authorization": f"Bearer {mint(user)}"}
        )
    assert count.status_code == 200, count.text

    producer = await aio_pika.connect(roles["producer"])
    pg = await asyncpg.connect(stack.database_url)
    try:
        # The SDK's producer (and `herald send`) on the producer's user: it checks the exchange, which
        # needs no permission, instead of declaring it, which would be refused.
        async with Producer(roles["producer"]) as sdk:
            await sdk.send(user, "SYSTEM_ANNOUNCEMENT", "least privilege")

        async def stored() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", user))

        await wait_until(stored, 20, "the producer's event stored")
        # Nothing else: not the RPC queue through the default exchange, not the users' frames.
        forged = rpc_request("notifications.broadcast", {"title": "x"}, "attacker", True)
        for exchange, key in (("", "herald.rpc"), ("herald.users", user)):
            refused = await producer.channel()
            target = (
                refused.default_exchange
                if exchange == ""
                else await refused.get_exchange(exchange, ensure=False)
            )
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await target.publish(aio_pika.Message(forged), routing_key=key)
    finally:
        await pg.close()
        await producer.close()
        await ws.close()


async def test_a_producer_that_may_not_declare_a_missing_exchange_is_told_why(roles: dict[str, str]) -> None:
    producer = Producer(roles["producer"], prefix="herald_missing")
    with pytest.raises(PublishError, match="does not exist and this broker user may not declare it"):
        async with producer:
            pass
    # The failed start closed its connection: a robust one left open reconnects for the life of the process.
    assert producer._connection is None


async def test_delivery_consumes_both_channels_and_dead_letters_on_its_own_user(
    stack: Stack, roles: dict[str, str]
) -> None:
    """With email and push configured, herald-delivery declares the exchange its consumers bind to, and
    it publishes a job that failed for good to herald.deliveries.dead, all as the delivery user."""
    stack.start_worker(amqp_url=roles["worker"])
    private_pem, _ = new_key_pair()
    topology = Topology()
    with running_mailbox() as mailbox:
        stack.start_delivery(amqp_url=roles["delivery"], smtp_url=mailbox.url, vapid_private_key=private_pem)
        user = fresh_id()
        address = f"{user}@mail.test"
        mailbox.refuse[address] = "550 5.1.1 no such user"
        producer = await aio_pika.connect(roles["producer"])
        admin = await aio_pika.connect(stack.amqp_url)
        try:
            events = await (await producer.channel()).get_exchange(topology.events_exchange, ensure=False)
            profile = {"user_id": user, "email": address}
            await events.publish(aio_pika.Message(orjson.dumps(profile)), routing_key="user.profile")
            async with Producer(roles["producer"]) as sdk:
                await sdk.send(user, "CERTIFICATE_ISSUED", "Your certificate", channels=["email"])
            dead = await (await admin.channel()).get_queue(topology.deliveries_dead_queue, ensure=False)
            reasons: list[str] = []

            async def dead_lettered() -> bool:
                message = await dead.get(fail=False)
                if message is not None:
                    await message.ack()
                    if orjson.loads(message.body)["user_id"] == user:
                        reasons.append(str((message.headers or {}).get("x-herald-error")))
                return bool(reasons)

            await wait_until(dead_lettered, 60, "the refused job dead-lettered by herald-delivery")
            assert reasons == ["smtp 550: 5.1.1 no such user"]
        finally:
            await admin.close()
            await producer.close()


async def test_a_nestjs_producer_needs_the_producer_user_that_may_declare(
    stack: Stack, roles: dict[str, str]
) -> None:
    # NestJS's ClientRMQ declares the exchange it publishes to on every connect, which RabbitMQ refuses
    # without configure permission: on the strict producer user it never publishes.
    stack.start_worker()
    user = fresh_id()
    refused = nest_emit(roles["producer"], user, "strict")
    assert refused.returncode == 1
    assert "ACCESS_REFUSED" in refused.stderr, refused.stdout + refused.stderr
    with broker_setup(stack, "--producer-declares") as declaring:
        emitted = nest_emit(declaring["producer"], user, "from nest")
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr
    pg = await asyncpg.connect(stack.database_url)
    try:

        async def titles() -> list[str]:
            rows = await pg.fetch("SELECT title FROM notifications WHERE user_id = $1", user)
            return [row["title"] for row in rows]

        await wait_until(titles, 20, "the NestJS producer's event stored")
        assert await titles() == ["from nest"]
    finally:
        await pg.close()


async def test_the_monitor_reads_queue_lengths_and_nothing_else(stack: Stack, roles: dict[str, str]) -> None:
    """What KEDA does with the monitor's credentials: a passive declare of a queue, for its length."""
    stack.start_worker(amqp_url=roles["worker"])  # declares the queues
    monitor = await aio_pika.connect(roles["monitor"])
    try:
        queue = await (await monitor.channel()).declare_queue("herald.events", passive=True)
        assert isinstance(queue.declaration_result.message_count, int)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await queue.get(fail=False)  # reading a message needs read permission
        channel = await monitor.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key="herald.rpc")
    finally:
        await monitor.close()


async def test_the_worker_serves_requests_only_from_the_gateway_user(
    stack: Stack, roles: dict[str, str]
) -> None:
    gateway_user = roles["gateway"].split("//")[1].split(":")[0]
    stack.start_worker(amqp_url=roles["worker"], rpc_trusted_users=gateway_user)
    intruder = await aio_pika.connect(stack.amqp_url)  # guest: may publish anywhere in the vhost
    try:
        rpc = RpcClient("herald.rpc", 10.0, "guest")
        await rpc.attach(await intruder.channel())
        reply = orjson.loads(await rpc.call(rpc_request("notifications.unread_count", {}, "victim", True)))
        assert reply["error"]["code"] == 4003
        # Claiming to be the gateway does not work: the broker checks user_id against the connection.
        channel = await intruder.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}", user_id=gateway_user, reply_to="amq.rabbitmq.reply-to"),
                routing_key="herald.rpc",
            )
    finally:
        await intruder.close()


async def test_passwords_starting_with_a_dash_are_set_and_work(stack: Stack) -> None:
    """The ``add_user`` and ``change_password`` lines ``herald broker setup`` runs, with the kind of
    password that once broke them."""
    name = fresh_id("t-dash")
    users = dict.fromkeys(ROLES, name)
    first, rotated = "-KF0" + fresh_id("p"), "--" + fresh_id("p")
    (add_user,) = [
        line for line in commands(stack.name, "herald", users, {"producer": first}) if line[0] == "add_user"
    ]
    try:
        rabbitmqctl(*add_user)
        rabbitmqctl("set_permissions", "-p", stack.name, name, "^$", "^$", "^$")
        await (await aio_pika.connect(role_url(stack, name, first))).close()
        for line in password_changes(users, {"producer": rotated}):
            rabbitmqctl(*line)
        await (await aio_pika.connect(role_url(stack, name, rotated))).close()
    finally:
        rabbitmqctl("delete_user", name, check=False)
