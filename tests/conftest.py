"""Shared fixtures: an isolated vhost + database per session, AMQP and Postgres connections.

Tests in ``tests/fault`` (they stop RabbitMQ or Postgres) are marked ``fault`` and run last; tests in
``tests/browser`` are marked ``browser``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import pytest

from herald_ops.testing.stack import Stack, stack_context
from herald_ops.testing.worker import Watcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


_MARKER_BY_FOLDER = {"fault": pytest.mark.fault, "browser": pytest.mark.browser}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder (``tests/fault``, ``tests/browser``); fault tests run last, in file order."""
    for item in items:
        for folder, marker in _MARKER_BY_FOLDER.items():
            if f"tests/{folder}/" in item.nodeid:
                item.add_marker(marker)
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
async def fresh_db(fresh_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's own database."""
    conn = await asyncpg.connect(fresh_stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def fresh_watcher(fresh_stack: Stack) -> AsyncIterator[Watcher]:
    """Publishes to and watches this test's own vhost (one connection)."""
    connection = await aio_pika.connect(fresh_stack.amqp_url)
    try:
        yield Watcher(await connection.channel())
    finally:
        await connection.close()


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
