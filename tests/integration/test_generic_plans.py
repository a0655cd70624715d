"""The event batch's lookups stay index probes under a generic plan made while the tables were empty.

The worker's statements are prepared (asyncpg) and Postgres switches a prepared statement to a generic plan
after five executions, keeping it until the statistics of its tables change. A generic plan made on a new
database, with no statistics yet, joined by sequential scans, and each batch then read the whole
``notifications`` table (docs/performance.md). Each statement here is planned generically on an empty
database, the tables are filled, and the plan must still read them through their indexes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from worker.store.events import _EXISTING, _LOCK_USERS, _TARGETS

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

GROWING = {"notifications", "notification_keys", "users", "user_preferences", "user_profiles"}


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(node type, relation) of every node of a JSON plan that reads a relation."""
    if "Relation Name" in plan:
        yield plan["Node Type"], plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from scans(child)


async def test_batch_lookups_probe_indexes_under_a_generic_plan_made_on_empty_tables(
    fresh_db: asyncpg.Connection,
) -> None:
    db = fresh_db
    await db.execute("SET plan_cache_mode = force_generic_plan")
    statements = {
        "existing": (_EXISTING, "text[], text[], text[]", "('{u1}', '{\"\"}', '{k1}')"),
        "lock_users": (_LOCK_USERS, "text[]", "('{u1}')"),
        "targets": (_TARGETS, "text[], text[]", "('{u1}', '{c1}')"),
    }
    async with db.transaction():
        for name, (sql, types, arguments) in statements.items():
            await db.execute(f"PREPARE {name}({types}) AS {sql}")
            await db.execute(f"EXECUTE {name}{arguments}")  # the generic plan is made now, on empty tables
    users = [f"u{i}" for i in range(2000)]
    await db.execute("INSERT INTO users (user_id) SELECT unnest($1::text[])", users)
    await db.execute("INSERT INTO user_profiles (user_id) SELECT unnest($1::text[])", users)
    await db.execute(
        "INSERT INTO user_preferences (user_id, channels) SELECT unnest($1::text[]), $2::jsonb",
        users,
        orjson.dumps({"email": False}).decode(),
    )
    await db.execute(
        """INSERT INTO notifications (user_id, seq, id, source, idempotency_key, collapse_key, type, category,
                                      title, message)
           SELECT u, s, u || '-' || s, '', 'k' || s, 'c' || s, 'NEW_COMMENT', 'social', 't', 'm'
             FROM unnest($1::text[]) AS u, generate_series(1, 10) AS s""",
        users,
    )
    for name, (_, _, arguments) in statements.items():
        explained = orjson.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{arguments}"))
        read = sorted(set(scans(explained[0]["Plan"])))
        assert read, name
        full_scans = [relation for node, relation in read if node == "Seq Scan" and relation in GROWING]
        assert full_scans == [], f"{name}: {read}"
