"""Collapse of inbox notifications (docs/protocol.md §10) end to end: real worker processes, a real
gateway, and the truth counted row by row in Postgres.

50 events with one key spread over two racing workers leave one row with ``count`` 50 and a seq that only
grew, a live client ends with that one item, a sync from any earlier seq returns exactly it, and repeats
count nothing; a read notification closes its group and the delivery jobs follow the collapse; an
archived open notification collapsed into is back in the inbox and its total. The ``env`` stack fixture
and helpers come from test_inbox_states.py.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from herald_client import HeraldClient
from herald_ops.testing.requests import visible_counts
from herald_ops.testing.stack import fresh_id, http_get, mint, wait_until
from tests.integration.test_inbox_states import Env, env, stored, two_tabs
from tests.integration.test_requests_gateway import db, producer

if TYPE_CHECKING:
    from herald_client.producer import Producer
    from herald_ops.testing.stack import HeraldProcess

pytestmark = pytest.mark.timeout(180)
__all__ = ["db", "env", "producer"]  # fixtures shared with test_inbox_states (this module gets its own env)


# ----------------------------------------------------------------------------------------- collapse


async def test_fifty_events_of_one_key_over_two_racing_workers_are_one_row_counted_fifty(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user = fresh_id()
    stored_before = [_stored_events(worker) for worker in env.workers]
    seen_seqs: list[int] = []
    done = asyncio.Event()
    reader = await asyncpg.connect(env.stack.database_url)

    async def watch_the_row() -> None:
        # A concurrent reader: the row's seq may only grow, however the two workers interleave.
        while not done.is_set():
            seq = await reader.fetchval("SELECT max(seq) FROM notifications WHERE user_id = $1", user)
            if seq is not None and (not seen_seqs or seq != seen_seqs[-1]):
                seen_seqs.append(seq)
            await asyncio.sleep(0.005)  # a polling interval, not a wait for a condition

    client = HeraldClient(env.gateway.ws_url, lambda: mint(user))
    view: dict[str, dict[str, Any]] = {}
    replacements: list[int] = []

    def on_new(event: Any) -> None:
        if event.replaces:
            replacements.append(event.params["seq"])
        view[event.params["id"]] = event.params

    client.on("notification:new", on_new)
    async with client:
        watcher = asyncio.create_task(watch_the_row())
        # Published together: both workers take batches of at most five, so they race on the user's lock.
        await asyncio.gather(
            *(
                producer.send(
                    user, "NEW_COMMENT", f"{n + 1} comments", event_id=f"{user}-c{n}", collapse_key="thread-7"
                )
                for n in range(50)
            )
        )

        async def counted() -> bool:
            return await db.fetchval("SELECT sum(count) FROM notifications WHERE user_id = $1", user) == 50

        await wait_until(counted, 60, "50 events folded into the user's notifications")
        done.set()
        await watcher
        await reader.close()
        rows = await db.fetch("SELECT * FROM notifications WHERE user_id = $1", user)
        assert len(rows) == 1
        (row,) = rows
        last_seq = await db.fetchval("SELECT last_seq FROM users WHERE user_id = $1", user)
        assert (row["count"], row["seq"], row["collapse_key"]) == (50, last_seq, "thread-7")
        assert seen_seqs == sorted(set(seen_seqs))
        assert await visible_counts(db, user) == {"unread_count": 1, "unseen_count": 1}
        # Both workers stored some of the events (their batches raced on one row).
        stored_after = [_stored_events(worker) for worker in env.workers]
        assert all(after > before for before, after in zip(stored_before, stored_after, strict=True))

        # The live client ends with exactly one item, in its final state, however the frames interleaved.
        async def replaced() -> bool:
            return list(view) == [row["id"]] and view[row["id"]]["seq"] == row["seq"]

        await wait_until(replaced, 30, "the client's item at the row's final seq")
        assert view[row["id"]]["count"] == 50
        assert replacements == sorted(replacements)  # a late, older frame is dropped, never delivered
        await wait_until(lambda: client.unread_count == 1 and client.unseen_count == 1, 15, "the counts")

        # A sync from any earlier seq returns that one item, once.
        for since in range(row["seq"]):
            page = await client.sync(since)
            assert [(item["id"], item["count"]) for item in page["items"]] == [(row["id"], 50)], since

        # Repeats of collapsed events (same event ids) are duplicates: nothing is counted twice.
        for n in (0, 17, 49):
            await producer.send(
                user, "NEW_COMMENT", "again", event_id=f"{user}-c{n}", collapse_key="thread-7"
            )
        marker = await producer.send(user, "NEW_COMMENT", "marker")  # stored after the repeats were seen
        await stored(db, user, 2)
        after = await db.fetchrow("SELECT count, seq, title FROM notifications WHERE id = $1", row["id"])
        assert after is not None
        assert (after["count"], after["seq"]) == (50, row["seq"])
        assert after["title"] != "again"
        assert marker


async def test_a_read_notification_closes_its_group_and_jobs_follow_the_collapse(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user = fresh_id()
    # GRADE_RELEASED has email on by default; two events of one key, one after the other.
    await producer.send(user, "GRADE_RELEASED", "1 grade", event_id=f"{user}-g1", collapse_key="grades")
    (first,) = await stored(db, user, 1)
    await producer.send(user, "GRADE_RELEASED", "2 grades", event_id=f"{user}-g2", collapse_key="grades")

    async def collapsed() -> bool:
        return await db.fetchval("SELECT count FROM notifications WHERE id = $1", first["id"]) == 2

    await wait_until(collapsed, 30, "the second event collapsed into the first")
    # One job identity for both versions: with no delivery process running the first version's job is
    # still waiting, and the second replaces its version (amendment 25) instead of adding a job. It keeps
    # no copy (sql/009): its claim reads the in-app row, which holds the second version.
    key = f"{first['id']}:{user}:email"
    seq = await db.fetchval("SELECT seq FROM notifications WHERE id = $1", first["id"])
    jobs = await db.fetch(
        "SELECT id, job_key, version, notification FROM delivery_jobs"
        " WHERE user_id = $1 AND channel = 'email'",
        user,
    )
    assert [tuple(job) for job in jobs] == [(key, key, seq, None)]

    async with two_tabs(env, user) as (tab, _):
        await tab.result("notifications.mark_read", {"ids": [first["id"]]})
        await tab.result("notifications.mark_unread", {"ids": [first["id"]]})  # does not reopen it
    await producer.send(user, "GRADE_RELEASED", "a new grade", event_id=f"{user}-g3", collapse_key="grades")
    rows = await stored(db, user, 2)
    assert [(r["id"] == first["id"], r["count"], r["collapse_key"]) for r in rows] == [
        (True, 2, None),
        (False, 1, "grades"),
    ]
    assert await visible_counts(db, user) == {"unread_count": 2, "unseen_count": 1}


async def test_an_archived_open_notification_collapsed_into_is_back_in_the_inbox_and_its_total(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    user = fresh_id()
    await producer.send(user, "NEW_COMMENT", "1 comment", event_id=f"{user}-a1", collapse_key="thread")
    (first,) = await stored(db, user, 1)
    async with two_tabs(env, user) as (tab, _):
        await tab.result("notifications.archive", {"ids": [first["id"]]})
        assert (await tab.result("notifications.list", {}))["total"] == 0
        await producer.send(user, "NEW_COMMENT", "2 comments", event_id=f"{user}-a2", collapse_key="thread")

        async def collapsed() -> bool:
            return await db.fetchval("SELECT count FROM notifications WHERE id = $1", first["id"]) == 2

        await wait_until(collapsed, 30, "the second event collapsed into the archived first")
        inbox = await tab.result("notifications.list", {})
        assert ([item["id"] for item in inbox["items"]], inbox["total"]) == ([first["id"]], 1)
    assert await visible_counts(db, user) == {"unread_count": 1, "unseen_count": 1}


async def test_an_expired_open_notification_is_no_collapse_target(
    env: Env, db: asyncpg.Connection, producer: Producer
) -> None:
    """Expired is gone for the user (amendment 15): the next event with its key starts a new item."""
    user = fresh_id()
    await producer.send(user, "NEW_COMMENT", "1 comment", event_id=f"{user}-e1", collapse_key="thread")
    (first,) = await stored(db, user, 1)
    # Its time is up (retention has not deleted it yet).
    await db.execute(
        "UPDATE notifications SET expires_at = now() - interval '1 minute' WHERE id = $1", first["id"]
    )
    await producer.send(user, "NEW_COMMENT", "a new thread", event_id=f"{user}-e2", collapse_key="thread")
    (expired, fresh) = await stored(db, user, 2)
    assert expired["id"] == first["id"]
    assert (expired["count"], expired["collapse_key"]) == (1, None)  # left as it was, its key released
    assert (fresh["id"] != first["id"], fresh["count"], fresh["collapse_key"]) == (True, 1, "thread")
    assert await visible_counts(db, user) == {"unread_count": 1, "unseen_count": 1}


def _stored_events(worker: HeraldProcess) -> float:
    """``herald_worker_events_total{outcome="stored"}`` of one worker process."""
    _, metrics = http_get(f"{worker.url}/metrics")
    for line in metrics.decode().splitlines():
        if line.startswith('herald_worker_events_total{outcome="stored"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
