"""Broadcasts stored chunk by chunk by a real worker: small chunks over a few thousand known users.

Each chunk is its own transaction, so the rows of one broadcast carry as many inserting transaction ids
(``xmin``) as it had chunks. Per-user batches are committed while the chunks go on: a send for the user
the broadcast reaches last, published once the first chunk is visible, takes that user's next ``seq``
before the broadcast's copy does (one statement for the whole broadcast would have stored the copy first).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

from herald_ops.testing.stack import fresh_id, wait_until
from herald_ops.testing.worker import TOPOLOGY, Watcher, add_known_users, event, frame_params, rows
from shared.preferences import DELIVERY_CHANNELS, decide_channels, effective_preferences
from worker.store.catalog import load_catalog

if TYPE_CHECKING:
    import asyncpg

    from herald_ops.testing.stack import Stack

CHUNK = 50
USERS = 3000
TYPE = "GRADE_RELEASED"  # in-app, email and push on by default


def broadcast_body(notification_type: str = TYPE) -> dict[str, Any]:
    return {"event_id": fresh_id("bc"), "type": notification_type, "title": "Grades", "message": "m"}


def overrides_of(index: int) -> dict[str, Any] | None:
    """Every 7th user mutes the type in-app, every 11th turns in-app and email off, every 13th push off."""
    if index % 7 == 0:
        return {"channels": {}, "types": {TYPE: {"in_app": False}}, "quiet_hours": None}
    if index % 11 == 0:
        return {"channels": {"in_app": False, "email": False}, "types": {}, "quiet_hours": None}
    if index % 13 == 0:
        return {"channels": {"push": False}, "types": {}, "quiet_hours": None}
    return None


async def test_a_broadcast_in_many_chunks_stores_one_row_per_allowed_user_with_their_next_seq(
    fresh_stack: Stack, fresh_db: asyncpg.Connection, fresh_watcher: Watcher
) -> None:
    last_seqs = {f"user-{i:05d}": i % 4 for i in range(USERS)}
    await add_known_users(fresh_db, last_seqs)
    overrides = {user: overrides_of(i) for i, user in enumerate(last_seqs)}
    await fresh_db.executemany(
        """INSERT INTO user_preferences (user_id, channels, types)
           VALUES ($1, $2::text::jsonb, $3::text::jsonb)""",
        [
            (user, orjson.dumps(o["channels"]).decode(), orjson.dumps(o["types"]).decode())
            for user, o in overrides.items()
            if o is not None
        ],
    )
    catalog = await load_catalog(fresh_db)
    wanted = {
        user: decide_channels(catalog[TYPE], effective_preferences(catalog, o), None)
        for user, o in overrides.items()
    }
    in_app = {user for user, channels in wanted.items() if "in_app" in channels}
    jobs = {(user, c) for user, channels in wanted.items() for c in DELIVERY_CHANNELS if c in channels}
    assert 0 < len(in_app) < USERS
    fresh_stack.start_worker(broadcast_chunk_size=CHUNK)
    live = await fresh_watcher.bound_queue(TOPOLOGY.broadcast_exchange)
    body = broadcast_body()

    await fresh_watcher.publish(body, routing_key="notification.broadcast")
    await fresh_watcher.publish(body, routing_key="notification.broadcast")  # the same broadcast again

    # One frame per broadcast, each after its last chunk; the repeat stored nothing, as its frame shows:
    # the same notification, at the time of the copies the first one stored.
    first, second = await fresh_watcher.take(live, 2)
    params = frame_params(first)
    assert params["seq"] is None
    repeat = frame_params(second)
    assert (repeat["id"], repeat["created_at"]) == (params["id"], params["created_at"])
    stored = await fresh_db.fetch(
        "SELECT user_id, id, seq, xmin::text AS tx FROM notifications WHERE idempotency_key = $1",
        body["event_id"],
    )
    assert sorted(r["user_id"] for r in stored) == sorted(in_app)  # one row each, nobody else
    for row in stored:
        assert row["id"] == params["id"]
        assert row["seq"] == last_seqs[row["user_id"]] + 1
    for user in await fresh_db.fetch(
        "SELECT user_id, last_seq, unread_count, unseen_count, inbox_count FROM users"
    ):
        got = int(user["user_id"] in in_app)
        assert tuple(user.values())[1:] == (last_seqs[user["user_id"]] + got, got, got, got)
    # Every chunk of CHUNK users had recipients: one transaction each, none holding more than a chunk.
    per_transaction: dict[str, int] = {}
    for row in stored:
        per_transaction[row["tx"]] = per_transaction.get(row["tx"], 0) + 1
    assert len(per_transaction) == math.ceil(USERS / CHUNK)
    assert max(per_transaction.values()) <= CHUNK
    # Email and push for exactly whom the send rule lets through, in-app muted or not, once each.
    recorded = await fresh_db.fetch(
        "SELECT user_id, channel FROM delivery_jobs WHERE notification_id = $1", params["id"]
    )
    assert sorted((r["user_id"], r["channel"]) for r in recorded) == sorted(jobs)


async def test_a_send_published_mid_broadcast_is_stored_before_its_last_chunk(
    fresh_stack: Stack, fresh_db: asyncpg.Connection, fresh_watcher: Watcher
) -> None:
    reached_last = "zz-reached-last"  # sorts after every user-NNNNN: the broadcast's last chunk
    await add_known_users(fresh_db, {f"user-{i:05d}": 0 for i in range(8000)} | {reached_last: 0})
    fresh_stack.start_worker(broadcast_chunk_size=20)
    live = await fresh_watcher.bound_queue(TOPOLOGY.broadcast_exchange)
    body = broadcast_body("SYSTEM_ANNOUNCEMENT")

    async def some_stored() -> bool:
        query = "SELECT count(*) FROM notifications WHERE idempotency_key = $1"
        return bool(await fresh_db.fetchval(query, body["event_id"]))

    async def both_stored() -> bool:
        return len(await rows(fresh_db, reached_last)) == 2

    await fresh_watcher.publish(body, routing_key="notification.broadcast")
    await wait_until(some_stored, 30, "the broadcast's first chunk")
    send = event(reached_last)
    await fresh_watcher.publish(send)
    await fresh_watcher.take(live, 1)  # the broadcast's frame: its last chunk is committed
    await wait_until(both_stored, 30, "the send and the broadcast for the last user")

    stored = await rows(fresh_db, reached_last)
    # The send took seq 1 while the chunks went on; the broadcast's copy, in the last chunk, seq 2.
    assert [(r["idempotency_key"], r["seq"]) for r in stored] == [
        (send["event_id"], 1),
        (body["event_id"], 2),
    ]
