"""The broadcast chunk's in-app rule (worker.store.broadcasts.IN_APP_ALLOWED) agrees with the Python one.

``shared.preferences.decide_channels`` is the definition of "may this user see this type in-app?"; the
broadcast path asks the same question in SQL, over a chunk of known users at once. Against a real
database, every combination of master switch, type switch (each unset, on, off), critical flag and
catalog default gets a broadcast (in chunks of a few users), and who received it must be exactly who the
Python rule lets through.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.events import BroadcastEvent
from shared.preferences import decide_channels, effective_preferences
from shared.settings import Settings
from worker.routing import route_broadcast
from worker.store.broadcasts import FIRST_USER_AFTER, store_chunk
from worker.store.catalog import load_catalog
from worker.store.pool import create_pool

if TYPE_CHECKING:
    import asyncpg

    from herald_ops.testing.stack import Stack
    from worker.routing import BroadcastRouting

CHUNK_SIZE = 4  # a few users per chunk: the 10 users take three chunks, the last one short

SWITCHES: tuple[bool | None, ...] = (None, True, False)  # None: the user never set it
RULE_TYPES = {  # name → (critical, default_in_app)
    f"RULE_{'CRITICAL' if critical else 'PLAIN'}_{'ON' if default else 'OFF'}": (critical, default)
    for critical, default in itertools.product((True, False), repeat=2)
}


async def broadcast_in_chunks(pool: asyncpg.Pool, routing: BroadcastRouting) -> None:
    """Store ``routing``'s broadcast chunk after chunk, each in its own transaction, as the worker does."""
    after: str | None = FIRST_USER_AFTER
    while after is not None:
        async with pool.acquire() as conn, conn.transaction():
            chunk = await store_chunk(conn, routing, after, CHUNK_SIZE)
        after = chunk.last_user if len(chunk.audience) == CHUNK_SIZE else None


def overrides_for(master: bool | None, per_type: bool | None) -> dict[str, Any]:
    return {
        "channels": {} if master is None else {"in_app": master},
        "types": {} if per_type is None else {name: {"in_app": per_type} for name in RULE_TYPES},
        "quiet_hours": None,
    }


async def test_sql_and_python_agree_on_every_combination(fresh_stack: Stack) -> None:
    pool = await create_pool(Settings(database_url=fresh_stack.database_url, db_pool_min=1, db_pool_max=2))
    try:
        users: dict[str, dict[str, Any] | None] = {"no-preferences-row": None}
        users |= {
            f"master-{master}-type-{per_type}": overrides_for(master, per_type)
            for master, per_type in itertools.product(SWITCHES, repeat=2)
        }
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """INSERT INTO notification_types (name, category, default_in_app, critical)
                   VALUES ($1, 'course', $2, $3)""",
                [(name, default, critical) for name, (critical, default) in RULE_TYPES.items()],
            )
            await conn.executemany("INSERT INTO users (user_id) VALUES ($1)", [(user,) for user in users])
            await conn.executemany(
                "INSERT INTO user_preferences (user_id, channels, types) VALUES ($1, $2, $3)",
                [(user, o["channels"], o["types"]) for user, o in users.items() if o is not None],
            )
        catalog = await load_catalog(pool)

        for name in RULE_TYPES:
            event = BroadcastEvent.model_validate({"type": name, "title": "rule"})
            await broadcast_in_chunks(pool, route_broadcast(event, catalog, datetime.now(UTC)))
            rows = await pool.fetch("SELECT user_id FROM notifications WHERE type = $1", name)
            python = {
                user
                for user, overrides in users.items()
                if "in_app" in decide_channels(catalog[name], effective_preferences(catalog, overrides), None)
            }
            assert {row["user_id"] for row in rows} == python, name
    finally:
        await pool.close()
