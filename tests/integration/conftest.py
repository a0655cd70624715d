"""Fixtures of the integration tests that start their own processes in a module's ``stack``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import pytest

from herald_ops.testing.delivery import running_mailbox
from herald_ops.testing.requests import AmqpRpc
from herald_ops.testing.worker import TOPOLOGY, Watcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.delivery import Mailbox
    from herald_ops.testing.stack import Stack


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on a free loopback port, for the module's delivery processes."""
    with running_mailbox() as box:
        yield box


@pytest.fixture
async def watcher(stack: Stack) -> AsyncIterator[Watcher]:
    """Publishes events to the stack's ``herald.events`` (one channel per test)."""
    connection = await aio_pika.connect(stack.amqp_url)
    try:
        yield Watcher(await connection.channel())
    finally:
        await connection.close()


@pytest.fixture
async def rpc(stack: Stack) -> AsyncIterator[AmqpRpc]:
    """A gateway stand-in calling the stack's worker over ``herald.rpc``."""
    client = await AmqpRpc.connect(stack.amqp_url, TOPOLOGY.rpc_queue)
    try:
        yield client
    finally:
        await client.close()
