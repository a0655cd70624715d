"""The worker's statements read growing tables through their indexes, even under a generic plan made while
the tables were empty.

The statements are prepared (asyncpg), and Postgres switches a prepared statement to a generic plan after
five executions, keeping it until the statistics of its tables change. A generic plan made on a new
database (no statistics yet, or autovacuum not run yet) joined by sequential scans, so every event batch
read the whole ``notifications`` table and grew slower as it grew (docs/performance.md). Here every SQL
statement of ``worker.store`` is planned generically on an empty database, the tables are filled, and the
cached plan must not scan any of them in full. The few statements planned with their values instead
(``CUSTOM_PLANNED``) are explained that way, with values that filter. A few must use one index in
particular (``THROUGH``), which an index scan of another would hide.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

import worker.store
from worker.store.inbox import list_query

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

#: Tables that grow with users and notifications (the catalog stays small).
GROWING = frozenset(
    {"notifications", "notification_keys", "users", "user_preferences", "user_profiles", "delivery_jobs"}
)
#: Statements planned with their values instead (why), and values to plan them with here.
CUSTOM_PLANNED = {
    "deliveries._FINISH": (
        "herald-delivery's pool plans every execution (create_pool(custom_plans=True))",
        "('{u1-1:u1:email}', '{sent}', '{NULL}', '{NULL}', '{NULL}', '{1}')",
    ),
    "deliveries._LIST": (
        "list_jobs runs PLAN_WITH_VALUES first: its filters are optional ($1 IS NULL OR ...)",
        "('u1', NULL, NULL, NULL, 50)",
    ),
    "retention._DELETE": ("retention_step runs PLAN_WITH_VALUES first", "('{u1,u2}', '{1,2}')"),
    # A batch of 1,000 would be half of the 2,000 jobs here, which a scan reads faster (and a custom plan
    # does); a batch small beside the table, as it is where retention has work, reads the index.
    "retention._DELETE_JOBS": ("delete_final_jobs runs PLAN_WITH_VALUES first", "(90, 10)"),
}
#: Statements that must read a table through one index in particular (why): each plan must use it.
THROUGH = {
    "mutations._MARK_ALL_SEEN": (
        "notifications_unseen",
        "through the primary key it reads every notification of the user, with the user's lock held",
    ),
    "mutations._MARK_ALL_READ": ("notifications_unread", "the same, for the unread ones"),
}
_SQL = re.compile(r"\s*(WITH|SELECT|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Page:
    """A ``notifications.list`` query (``worker.store.inbox.PageQuery``)."""

    limit: int = 20
    before: int | None = None
    page: int | None = None
    unread_only: bool = False
    archived: bool | None = None
    types: list[str] | None = None
    categories: list[str] | None = None


#: ``notifications.list`` builds its statement from the filters in use: a few of the shapes.
PAGES = {
    "first page": Page(),
    "next page": Page(before=100),
    "unread only": Page(unread_only=True),
    "archived, one type": Page(archived=True, types=["NEW_COMMENT"]),
}


def statements() -> dict[str, str]:
    """Every module-level SQL statement with parameters in ``worker.store``, by ``module._NAME``, and the
    list statement of each of :data:`PAGES`."""
    found = {}
    for module_info in pkgutil.iter_modules(worker.store.__path__):
        module = importlib.import_module(f"worker.store.{module_info.name}")
        for name, value in vars(module).items():
            if isinstance(value, str) and _SQL.match(value) and "$1" in value:
                found[f"{module_info.name}.{name}"] = value
    for name, page in PAGES.items():
        found[f"inbox.list_query: {name}"] = list_query(page, "u1")[0]
    return found


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(node type, relation) of every node of a JSON plan that reads a relation, subplans included."""
    if "Relation Name" in plan:
        yield plan["Node Type"], plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from scans(child)


def indexes(plan: dict[str, Any]) -> Iterator[str]:
    """The index of every node of a JSON plan that reads one, subplans included."""
    if "Index Name" in plan:
        yield plan["Index Name"]
    for child in plan.get("Plans", []):
        yield from indexes(child)


async def fill(db: asyncpg.Connection, users: int) -> None:
    ids = [f"u{i}" for i in range(users)]
    await db.execute("INSERT INTO users (user_id) SELECT unnest($1::text[])", ids)
    await db.execute("INSERT INTO user_profiles (user_id) SELECT unnest($1::text[])", ids)
    await db.execute(
        "INSERT INTO user_preferences (user_id, channels) SELECT unnest($1::text[]), $2::jsonb",
        ids,
        orjson.dumps({"email": False}).decode(),
    )
    await db.execute(
        """INSERT INTO notifications (user_id, seq, id, source, idempotency_key, collapse_key, type,
                                      category, title, message)
           SELECT u, s, u || '-' || s, '', 'k' || s, 'c' || s, 'NEW_COMMENT', 'social', 't', 'm'
             FROM unnest($1::text[]) AS u, generate_series(1, 10) AS s""",
        ids,
    )
    await db.execute(
        """INSERT INTO notification_keys (user_id, source, idempotency_key, notification_id)
           SELECT u, '', 'absorbed', u || '-1' FROM unnest($1::text[]) AS u""",
        ids,
    )
    await db.execute(
        """INSERT INTO delivery_jobs (id, notification_id, user_id, channel, notification, due_at)
           SELECT u || '-1:' || u || ':email', u || '-1', u, 'email', '{}'::jsonb, now()
             FROM unnest($1::text[]) AS u""",
        ids,
    )


async def test_every_statement_probes_indexes_under_a_generic_plan_made_on_empty_tables(
    fresh_db: asyncpg.Connection,
) -> None:
    db = fresh_db
    await db.execute("SET plan_cache_mode = force_generic_plan")
    prepared: dict[str, str] = {}
    for number, (name, sql) in enumerate(statements().items()):
        await db.execute(f"PREPARE statement_{number} AS {sql}")
        if name in CUSTOM_PLANNED:
            prepared[name] = f"EXECUTE statement_{number}{CUSTOM_PLANNED[name][1]}"
            continue
        parameters = len((await db.prepare(sql)).get_parameters())
        # Values do not matter to a generic plan; EXPLAIN makes and caches it without running it.
        prepared[name] = f"EXECUTE statement_{number}({', '.join(['NULL'] * parameters)})"
        await db.fetch(f"EXPLAIN {prepared[name]}")
    assert {"events._EXISTING", "events._INSERT", "deliveries._RECORD", "inbox._OPEN_SESSIONS"} <= set(
        prepared
    )
    assert set(CUSTOM_PLANNED) | set(THROUGH) | {f"inbox.list_query: {name}" for name in PAGES} <= set(
        prepared
    )

    await fill(db, users=2000)
    full_scans = {}
    missed = {}
    for name, execute in prepared.items():
        async with db.transaction():
            if name in CUSTOM_PLANNED:  # as their callers run them: planned now, with these values
                await db.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            explained = orjson.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) {execute}"))
        scanned = {relation for node, relation in scans(explained[0]["Plan"]) if node == "Seq Scan"}
        if scanned & GROWING:
            full_scans[name] = sorted(scanned & GROWING)
        if name in THROUGH and THROUGH[name][0] not in indexes(explained[0]["Plan"]):
            missed[name] = sorted(set(indexes(explained[0]["Plan"])))
    assert full_scans == {}
    assert missed == {}
