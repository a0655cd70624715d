"""Shared fixtures: an isolated vhost + database per session, AMQP and Postgres connections.

Tests marked ``fault`` (they stop RabbitMQ or Postgres) are moved to the end of the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import pytest

from tests.support import Stack, stack_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fault tests run last, in file order, after everything else."""
    items.sort(key=lambda item: item.get_closest_marker("fault") is not None)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's own vhost and migrated database (no processes started)."""
    with stack_context() as created:
        yield created


@pytest.fixture
def fresh_stack() -> Iterator[Stack]:
    """A vhost and database for this test alone; its processes are stopped afterwards."""
    with stack_context() as created:
        yield created


@pytest.fixture
async def pg(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def amqp(stack: Stack) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(stack.amqp_url)
    try:
        yield conn
    finally:
        await conn.close()
