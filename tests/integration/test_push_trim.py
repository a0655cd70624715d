"""``push.subscribe`` keeps the subscription it just saved when it trims the user to the limit.

No worker runs: the store function runs against the real schema, as ``worker.requests.push`` calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from herald_ops.testing.stack import fresh_id
from shared.settings import Settings
from worker.store import push
from worker.store.pool import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from herald_ops.testing.stack import Stack

KEYS = ("p256dh", "auth")


@pytest.fixture
async def pool(fresh_stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=3))
    yield created
    await created.close()


async def subscribe(pool: asyncpg.Pool, user: str, endpoint: str, limit: int) -> str:
    return await push.subscribe(pool, fresh_id("sub"), user, endpoint, KEYS, None, limit)


async def endpoints(pool: asyncpg.Pool, user: str) -> list[str]:
    return [row["endpoint"] for row in await push.list_subscriptions(pool, user)]


async def test_an_endpoint_moved_to_a_user_at_the_limit_is_kept_and_their_oldest_other_goes(
    pool: asyncpg.Pool, fresh_db: asyncpg.Connection
) -> None:
    limit = 2
    a, b = fresh_id("a"), fresh_id("b")
    moved, oldest, newer, later = (f"https://push.example/{fresh_id('e')}" for _ in range(4))
    moved_id = await subscribe(pool, a, moved, limit)
    oldest_id = await subscribe(pool, b, oldest, limit)
    newer_id = await subscribe(pool, b, newer, limit)
    # Distinct ages, whatever the clock's resolution: the moved endpoint was subscribed first of all.
    for age, subscription_id in ((3, moved_id), (2, oldest_id), (1, newer_id)):
        await fresh_db.execute(
            "UPDATE push_subscriptions SET created_at = now() - make_interval(hours => $1) WHERE id = $2",
            age,
            subscription_id,
        )

    returned = await subscribe(pool, b, moved, limit)  # the browser now signed in as b

    assert returned == moved_id  # one endpoint is one subscription
    assert await fresh_db.fetchval("SELECT user_id FROM push_subscriptions WHERE id = $1", returned) == b
    assert await endpoints(pool, b) == [moved, newer]  # newest first: the move counts as b's newest
    assert await endpoints(pool, a) == []
    assert await fresh_db.fetchval("SELECT count(*) FROM push_subscriptions WHERE id = $1", oldest_id) == 0

    # Another new subscription of b trims the older of the two, not the endpoint b subscribed last.
    await subscribe(pool, b, later, limit)
    assert await endpoints(pool, b) == [later, moved]
