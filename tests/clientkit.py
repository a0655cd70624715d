"""Helpers for the client tests (Python, JS and browser): tokens, publishing events, a running stack.

The stack these tests use is one worker and one gateway (``HERALD_DEV_TOKENS=1``) in a vhost and
database of their own; :func:`running_stack` starts it and stops it.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import aio_pika
import jwt

from shared.topology import SEND_ROUTING_KEY, Topology
from tests.support import ROOT, TEST_JWT_SECRET, create_stack, destroy_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support import HeraldProcess, Stack


def mint(user_id: str, ttl: float = 3600, admin: bool = False, secret: str = TEST_JWT_SECRET) -> str:
    """An HS256 token for ``user_id`` expiring in ``ttl`` seconds (signed with the tests' secret)."""
    claims: dict[str, Any] = {"sub": user_id, "exp": int(time.time() + ttl), "iat": int(time.time())}
    if admin:
        claims["roles"] = ["admin"]
    return jwt.encode(claims, secret, algorithm="HS256")


def unique_user(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event_body(user_id: str, **fields: Any) -> dict[str, Any]:
    """A valid ``notification.send`` body; ``fields`` override the defaults."""
    body: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "user_id": user_id,
        "type": "COURSE_NEW_CONTENT",
        "title": "New lesson available",
        "message": "Lesson 7 was added to Databases 101",
        "data": {"courseId": "42"},
    }
    body.update(fields)
    return body


async def publish(amqp_url: str, *bodies: dict[str, Any]) -> None:
    """Publish producer events to ``herald.events`` exactly as a producer service would (PROTOCOL §4)."""
    topology = Topology()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
        for body in bodies:
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key=SEND_ROUTING_KEY)
    finally:
        await connection.close()


@contextlib.contextmanager
def running_stack(**gateway_overrides: Any) -> Iterator[tuple[Stack, HeraldProcess]]:
    """A fresh vhost + database with one worker and one dev-token gateway; yields (stack, gateway)."""
    stack = create_stack("herald_client")
    try:
        stack.start_worker()
        gateway = stack.start_gateway(dev_tokens=1, **gateway_overrides)
        yield stack, gateway
    finally:
        destroy_stack(stack)


def doc_snippet(name: str) -> str:
    """The code block after ``<!-- snippet:NAME -->`` in docs/clients.md (what the README copies)."""
    text = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    after = text.split(f"<!-- snippet:{name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


#: The gateway address the snippets print; tests substitute their own gateway's.
DOC_GATEWAY = "ws://127.0.0.1:8765/notifications"
