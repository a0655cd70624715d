"""Least privilege on the broker: ``herald broker setup`` creates one user per role in the test's own
vhost (deleted afterwards); Herald runs on them; a producer can write only to ``herald.events``; the
worker serves requests only from the gateway's user, which the broker vouches for through ``user_id``."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

import aio_pika
import aiormq
import asyncpg
import orjson
import pytest

from gateway.rpc import RpcClient
from herald_ops.testing.gateway import call, open_client
from herald_ops.testing.stack import AMQP_BASE, ROOT, fresh_id, rabbitmqctl, wait_until
from shared.jsonrpc import rpc_request

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.stack import Stack


def role_url(stack: Stack, user: str, password: str) -> str:
    host = AMQP_BASE.split("@", 1)[1]
    return f"amqp://{quote(user)}:{quote(password)}@{host}/{stack.name}"


@pytest.fixture
def roles(fresh_stack: Stack) -> Iterator[dict[str, str]]:
    """``herald broker setup`` in the stack's vhost: role → AMQP URL of its new user."""
    name_prefix = fresh_id("t")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "herald_ops.cli",
            "broker",
            "setup",
            "--vhost",
            fresh_stack.name,
            "--name-prefix",
            name_prefix,
        ],
        env=fresh_stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    created = [line.split("\t") for line in done.stdout.splitlines()]
    try:
        assert done.returncode == 0, done.stderr
        assert [role for role, _, _ in created] == ["gateway", "worker", "delivery", "producer"]
        yield {role: role_url(fresh_stack, user, password) for role, user, password in created}
    finally:
        fresh_stack.stop_all()
        for role in ("gateway", "worker", "delivery", "producer"):
            rabbitmqctl("delete_user", f"{name_prefix}-{role}", check=False)


async def test_herald_runs_on_least_privilege_users(fresh_stack: Stack, roles: dict[str, str]) -> None:
    gateway_user = roles["gateway"].split("//")[1].split(":")[0]
    fresh_stack.start_worker(amqp_url=roles["worker"], rpc_trusted_users=gateway_user)
    gateway = fresh_stack.start_gateway(amqp_url=roles["gateway"])
    user = fresh_id()
    ws, _ = await open_client(gateway, user)
    assert "result" in await call(ws, "notifications.unread_count")

    producer = await aio_pika.connect(roles["producer"])
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        channel = await producer.channel()
        events = await channel.get_exchange("herald.events", ensure=False)
        event = {"user_id": user, "type": "SYSTEM_ANNOUNCEMENT", "title": "least privilege"}
        await events.publish(aio_pika.Message(orjson.dumps(event)), routing_key="notification.send")

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


async def test_the_worker_serves_requests_only_from_the_gateway_user(
    fresh_stack: Stack, roles: dict[str, str]
) -> None:
    gateway_user = roles["gateway"].split("//")[1].split(":")[0]
    fresh_stack.start_worker(amqp_url=roles["worker"], rpc_trusted_users=gateway_user)
    intruder = await aio_pika.connect(fresh_stack.amqp_url)  # guest: may publish anywhere in the vhost
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
