"""The event pipeline end to end: a real worker process, RabbitMQ and Postgres.

One worker serves the whole module on its own vhost and database; every test uses fresh user ids.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import orjson
import pytest

from herald_ops.testing.requests import AmqpRpc
from herald_ops.testing.stack import (
    Stack,
    create_stack,
    destroy_stack,
    fresh_id,
    http_get,
    rabbitmqctl,
    wait_until,
)
from herald_ops.testing.worker import (
    TOPOLOGY,
    Watcher,
    counters,
    event,
    frame_params,
    recorded_jobs,
    redeliver_while_down,
    rows,
)
from shared.events import MAX_BODY_BYTES
from shared.preferences import decide_channels, effective_preferences
from shared.settings import Settings
from worker.retention import retention_pass
from worker.store.catalog import load_catalog
from worker.store.pool import create_pool
from worker.store.retention import ADVISORY_LOCK_ID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess


@pytest.fixture(scope="module")
def module_stack() -> Iterator[Stack]:
    created = create_stack("herald_worker")
    try:
        yield created
    finally:
        destroy_stack(created)


@pytest.fixture(scope="module")
def worker(module_stack: Stack) -> HeraldProcess:
    return module_stack.start_worker(batch_timeout_ms=20)


@pytest.fixture(scope="module")
async def watcher(module_stack: Stack, worker: HeraldProcess) -> AsyncIterator[Watcher]:
    connection = await aio_pika.connect(module_stack.amqp_url)
    try:
        yield Watcher(await connection.channel())
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def db(module_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(module_stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def set_preferences(db: asyncpg.Connection, user: str, **document: Any) -> None:
    """Store ``user``'s overrides the way the preferences requests do (users row first)."""
    await db.execute("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user)
    await db.execute(
        """INSERT INTO user_preferences (user_id, channels, types, quiet_hours)
           VALUES ($1, $2::text::jsonb, $3::text::jsonb, $4::text::jsonb)""",
        user,
        orjson.dumps(document.get("channels", {})).decode(),
        orjson.dumps(document.get("types", {})).decode(),
        orjson.dumps(document["quiet_hours"]).decode() if "quiet_hours" in document else None,
    )


async def test_event_becomes_one_row_and_one_frame(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("u")
    frames = await watcher.frames(user)
    body = event(user, "COURSE_NEW_CONTENT", data={"courseId": "42", "lessonId": "7"})

    await watcher.publish(body)

    (message,) = await watcher.take(frames, 1)
    params = frame_params(message)
    (row,) = await rows(db, user)
    assert params == {
        "id": row["id"],
        "seq": 1,
        "type": "COURSE_NEW_CONTENT",
        "category": "course",
        "title": body["title"],
        "message": "Body",
        "data": {"courseId": "42", "lessonId": "7"},
        "url": None,
        "actions": [],
        "count": 1,
        "created_at": row["created_at"].isoformat().replace("+00:00", "Z"),
        "read_at": None,
        "seen_at": None,
        "archived_at": None,
        "acted_at": None,
        "action_id": None,
        "expires_at": None,
    }
    assert (row["seq"], row["idempotency_key"]) == (1, body["event_id"])
    assert await counters(db, user) == (1, 1)
    assert await watcher.nothing_more(frames) == []


async def test_accepted_shapes_camel_case_nest_envelope_and_fan_out(
    watcher: Watcher, db: asyncpg.Connection
) -> None:
    camel, nest, many = fresh_id("camel"), fresh_id("nest"), [fresh_id("fan") for _ in range(3)]
    frames = await watcher.frames(camel, nest, *many)
    await watcher.publish({"userId": camel, "eventId": fresh_id("e"), "type": "NEW_REPLY", "title": "t"})
    # NestJS emit: compact JSON, no content type, through the default exchange keyed by the queue name.
    nest_body = {"pattern": "notification.send", "data": {"userId": nest, "type": "NEW_REPLY", "title": "n"}}
    await watcher.channel.default_exchange.publish(
        aio_pika.Message(orjson.dumps(nest_body)), routing_key=TOPOLOGY.events_queue
    )
    await watcher.publish(event(many))

    got = await watcher.take(frames, 5)

    assert sorted(m.routing_key or "" for m in got) == sorted([camel, nest, *many])
    fan_ids = {frame_params(m)["id"] for m in got if m.routing_key in many}
    assert len(fan_ids) == 1  # one event, one notification id for all its recipients
    for user in (camel, nest, *many):
        assert [r["seq"] for r in await rows(db, user)] == [1]


BAD_INPUTS: list[tuple[str, bytes, str, str]] = [
    ("bad json", b"{not json", "notification.send", "not valid JSON"),
    ("not an object", b"[1, 2]", "notification.send", "must be a JSON object"),
    ("unknown type", orjson.dumps(event("u-x", "NO_SUCH_TYPE")), "notification.send", "unknown notification"),
    ("no user", orjson.dumps({"type": "NEW_COMMENT", "title": "t"}), "notification.send", "user_id"),
    ("bad user id", orjson.dumps(event("bad user!")), "notification.send", "user_ids"),
    ("user id too long", orjson.dumps(event("u" * 129)), "notification.send", "user_ids"),
    ("title too long", orjson.dumps(event("u-x", title="t" * 201)), "notification.send", "title"),
    ("no title", orjson.dumps(event("u-x", title="")), "notification.send", "title"),
    ("message too long", orjson.dumps(event("u-x", message="m" * 2001)), "notification.send", "message"),
    ("data too big", orjson.dumps(event("u-x", data={"x": "d" * 8200})), "notification.send", "data"),
    ("too many users", orjson.dumps(event([f"u{i}" for i in range(1001)])), "notification.send", "user_ids"),
    (
        "body too big",
        orjson.dumps(event("u-x", data={"x": "d" * MAX_BODY_BYTES})),
        "notification.send",
        "65536-byte limit",
    ),
    ("unknown channel", orjson.dumps(event("u-x", channels=["sms"])), "notification.send", "channels"),
    ("bad source", orjson.dumps(event("u-x", source="no spaces")), "notification.send", "source: "),
    ("source too long", orjson.dumps(event("u-x", source="s" * 65)), "notification.send", "source: "),
    ("unknown kind", orjson.dumps(event("u-x")), "notification.delete", "unknown event kind"),
    (
        "data nested too deep",
        b'{"type": "NEW_COMMENT", "user_id": "u-x", "title": "t", "data": '
        + b'{"a":' * 300
        + b"1"
        + b"}" * 301,
        "notification.send",
        "data",
    ),
]


async def test_every_bad_input_is_dead_lettered_with_a_reason(
    watcher: Watcher, db: asyncpg.Connection
) -> None:
    ids = {name: fresh_id("bad") for name, *_ in BAD_INPUTS}
    for name, body, routing_key, _ in BAD_INPUTS:
        await watcher.publish(body, routing_key=routing_key, message_id=ids[name])
    user = fresh_id("after")
    frames = await watcher.frames(user)
    await watcher.publish(event(user))

    await watcher.take(frames, 1)  # the next valid event still flows
    dead = await watcher.dead_letters(set(ids.values()))
    for name, body, routing_key, reason in BAD_INPUTS:
        letter = dead[ids[name]]
        headers = letter.headers or {}
        assert reason in str(headers["x-herald-error"]), (name, headers)
        assert headers["x-herald-routing-key"] == routing_key, name
        assert letter.body == body, name
    assert len(await rows(db, user)) == 1


async def test_an_event_the_database_refuses_is_isolated_from_its_batch(
    watcher: Watcher, db: asyncpg.Connection
) -> None:
    users = [fresh_id("split") for _ in range(6)]
    frames = await watcher.frames(*users)
    poison = fresh_id("poison")
    # A rule only the database knows (NUL, the classic case, is now refused by the parser): the batch is
    # split to find this one event.
    constraint = poison.replace("-", "_")
    await db.execute(f"ALTER TABLE notifications ADD CONSTRAINT {constraint} CHECK (title <> '{poison}')")
    try:
        await watcher.publish(event(users[0], title=poison), message_id=poison)
        for user in users[1:]:
            await watcher.publish(event(user))

        got = await watcher.take(frames, 5)

        assert sorted(m.routing_key or "" for m in got) == sorted(users[1:])
        letter = (await watcher.dead_letters({poison}))[poison]
        assert str((letter.headers or {})["x-herald-error"]).startswith("store:")
        assert await rows(db, users[0]) == []
    finally:
        await db.execute(f"ALTER TABLE notifications DROP CONSTRAINT {constraint}")


async def test_the_same_key_three_times_is_one_row(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("dup")
    frames = await watcher.frames(user)
    body = event(user)
    for _ in range(3):
        await watcher.publish(body)
    by_message_id = {k: v for k, v in event(user).items() if k != "event_id"}
    for _ in range(3):
        await watcher.publish(by_message_id, message_id="amqp-id-1")
    marker = event(user, "NEW_REPLY")
    await watcher.publish(marker)

    got = [frame_params(m) for m in await watcher.take(frames, 3)]
    while got[-1]["type"] != "NEW_REPLY":  # frames of one user arrive in order; the marker is last
        got += [frame_params(m) for m in await watcher.take(frames, 1)]

    stored = await rows(db, user)
    assert [r["idempotency_key"] for r in stored] == [body["event_id"], "amqp-id-1", marker["event_id"]]
    assert await counters(db, user) == (3, 3)
    # A copy in a later batch is pushed live again with the stored id and seq (clients drop repeats);
    # copies inside one batch share the first one's frame.
    assert {(p["id"], p["seq"]) for p in got} == {(r["id"], r["seq"]) for r in stored}


async def test_preferences_mute_a_type_in_app(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("muted")
    await set_preferences(db, user, types={"NEW_COMMENT": {"in_app": False}})
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "NEW_COMMENT"))
    await watcher.publish(event(user, "NEW_REPLY"))  # a marker that is not muted

    (marker,) = await watcher.take(frames, 1)
    assert frame_params(marker)["type"] == "NEW_REPLY"
    assert [r["type"] for r in await rows(db, user)] == ["NEW_REPLY"]
    assert await counters(db, user) == (1, 1)


async def test_email_and_push_follow_channels(watcher: Watcher, db: asyncpg.Connection) -> None:
    plain, no_push, no_in_app = fresh_id("plain"), fresh_id("nopush"), fresh_id("noinapp")
    await set_preferences(db, no_push, channels={"push": False})
    await set_preferences(db, no_in_app, types={"GRADE_RELEASED": {"in_app": False}})
    frames = await watcher.frames(plain, no_push, no_in_app)

    await watcher.publish(event([plain, no_push, no_in_app], "GRADE_RELEASED"))
    narrowed = fresh_id("narrow")
    await watcher.publish(event(narrowed, "GRADE_RELEASED", channels=["push"]))

    users = [plain, no_push, no_in_app, narrowed]
    jobs = await recorded_jobs(db, users, 2 + 1 + 2 + 1)
    got = sorted((job["user_id"], job["channel"]) for job in jobs)
    assert got == sorted(
        [
            (plain, "email"),
            (plain, "push"),
            (no_push, "email"),
            (no_in_app, "email"),
            (no_in_app, "push"),
            (narrowed, "push"),
        ]
    )
    for job in jobs:
        # A copy only without an in-app row (sql/009): otherwise the claim reads that row.
        copy = job["notification"]
        assert (copy is None) == (job["job_key"] is not None)
        assert copy is None or (copy["type"], copy["id"]) == ("GRADE_RELEASED", job["notification_id"])
        assert job["id"] == f"{job['notification_id']}:{job['user_id']}:{job['channel']}"
        assert (job["status"], job["due_at"]) == ("scheduled", job["created_at"])  # due at once
    # Stored in-app: keyed by version; in-app off (nothing stored): by id alone.
    versions = {(job["user_id"], job["version"] is not None, job["job_key"] is not None) for job in jobs}
    assert versions == {
        (plain, True, True),
        (no_push, True, True),
        (no_in_app, False, False),
        (narrowed, False, False),
    }
    assert sorted(m.routing_key or "" for m in await watcher.take(frames, 2)) == sorted([plain, no_push])
    assert await rows(db, no_in_app) == []
    assert await rows(db, narrowed) == []


async def test_critical_types_cannot_be_muted(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("critical")
    off = {"in_app": False, "email": False, "push": False}
    await set_preferences(db, user, channels=off, types={"SECURITY_ALERT": off})
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "SECURITY_ALERT"))
    marker = fresh_id("marker")
    await watcher.publish(event(marker, "GRADE_RELEASED", channels=["email"]))

    assert frame_params((await watcher.take(frames, 1))[0])["type"] == "SECURITY_ALERT"
    await recorded_jobs(db, [marker], 1)  # committed after (or with) the user's event
    jobs = await recorded_jobs(db, [user], 1)
    # In-app and email are locked on; push follows the user's switch.
    assert [(job["user_id"], job["channel"]) for job in jobs] == [(user, "email")]
    assert len(await rows(db, user)) == 1


async def test_quiet_hours_hold_email_and_push_only(watcher: Watcher, db: asyncpg.Connection) -> None:
    user = fresh_id("quiet")
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    await set_preferences(db, user, quiet_hours={"start": start, "end": end, "timezone": "UTC"})
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "GRADE_RELEASED"))

    await watcher.take(frames, 1)  # in-app is never held
    jobs = await recorded_jobs(db, [user], 2)
    for job in jobs:
        assert timedelta(minutes=58) < job["due_at"] - now <= timedelta(hours=1, minutes=1)


async def test_broadcast_stores_one_row_per_allowed_known_user(
    watcher: Watcher, db: asyncpg.Connection
) -> None:
    allowed, muted, master_off = fresh_id("b-on"), fresh_id("b-muted"), fresh_id("b-off")
    await db.execute("INSERT INTO users (user_id) VALUES ($1)", allowed)
    await set_preferences(db, muted, types={"SYSTEM_ANNOUNCEMENT": {"in_app": False}})
    await set_preferences(db, master_off, channels={"in_app": False})
    catalog = await load_catalog(db)
    known_before: dict[str, tuple[int, bool]] = {}
    for row in await db.fetch(
        """SELECT u.user_id, u.last_seq, p.channels, p.types, p.quiet_hours
             FROM users u LEFT JOIN user_preferences p USING (user_id)"""
    ):
        overrides = (
            {k: orjson.loads(row[k] or "null") for k in ("channels", "types", "quiet_hours")}
            if row["channels"] is not None
            else None
        )
        prefs = effective_preferences(catalog, overrides)
        wanted = "in_app" in decide_channels(catalog["SYSTEM_ANNOUNCEMENT"], prefs, None)
        known_before[row["user_id"]] = (row["last_seq"], wanted)
    assert not known_before[muted][1]
    assert not known_before[master_off][1]
    live = await watcher.bound_queue(TOPOLOGY.broadcast_exchange)
    body = {"event_id": fresh_id("bc"), "type": "SYSTEM_ANNOUNCEMENT", "title": "Maintenance", "message": "m"}

    await watcher.publish(body, routing_key="notification.broadcast")
    await watcher.publish(body, routing_key="notification.broadcast")  # the same broadcast again

    first, second = await watcher.take(live, 2)
    params = frame_params(first)
    assert params["seq"] is None
    assert (first.headers or {})["x-herald-type"] == "SYSTEM_ANNOUNCEMENT"
    assert (first.headers or {})["x-herald-critical"] is False  # gateways relay critical ones to all
    assert frame_params(second)["id"] == params["id"]
    stored = {
        r["user_id"]: r
        for r in await db.fetch("SELECT * FROM notifications WHERE idempotency_key = $1", body["event_id"])
    }
    assert allowed in stored
    # Every known user whose preferences allow it got exactly one copy, with the shared id and their
    # own next seq; nobody else got one.
    assert set(stored) == {user for user, (_, wanted) in known_before.items() if wanted}
    for user, row in stored.items():
        assert row["id"] == params["id"]
        assert row["seq"] == known_before[user][0] + 1


async def test_a_type_added_to_the_catalog_is_picked_up_on_sighup(
    worker: HeraldProcess, watcher: Watcher, db: asyncpg.Connection
) -> None:
    await db.execute(
        """INSERT INTO notification_types (name, category, default_email, default_push)
           VALUES ('STUDY_GROUP_INVITE', 'social', false, false)"""
    )
    worker.signal(signal.SIGHUP)
    await wait_until(
        lambda: b"herald_worker_catalog_types 15.0" in http_get(f"{worker.url}/metrics")[1], 20, "reload"
    )
    user = fresh_id("newtype")
    frames = await watcher.frames(user)

    await watcher.publish(event(user, "STUDY_GROUP_INVITE"))

    assert frame_params((await watcher.take(frames, 1))[0])["category"] == "social"


def consumers(stack: Stack, *fields: str) -> list[dict[str, Any]]:
    """``rabbitmqctl list_consumers`` of ``stack``'s vhost: the ``fields`` of each consumer."""
    listing = rabbitmqctl("list_consumers", "-p", stack.name, "--formatter", "json", *fields).stdout
    found: list[dict[str, Any]] = orjson.loads(listing)
    return found


def test_events_and_requests_are_consumed_on_channels_of_their_own() -> None:
    """Each consumer gets its own channel and prefetch; on a shared channel a prefetch applies to both (or,
    declared on the default channel, none: the regression worker.amqp.declare_topology describes)."""
    stack = create_stack("herald_consumers")
    try:
        stack.start_worker(prefetch=37, rpc_prefetch=11)
        by_queue = {
            consumer["queue_name"]: consumer
            for consumer in consumers(stack, "queue_name", "channel_pid", "prefetch_count", "ack_required")
        }
    finally:
        destroy_stack(stack)
    events, requests = by_queue[TOPOLOGY.events_queue], by_queue[TOPOLOGY.rpc_queue]
    # Manual acks, at most HERALD_PREFETCH (HERALD_RPC_PREFETCH) unacked, each on a channel of its own.
    assert (events["prefetch_count"], events["ack_required"]) == (37, True)
    assert (requests["prefetch_count"], requests["ack_required"]) == (11, True)
    assert events["channel_pid"] != requests["channel_pid"]


def consumed_queues(stack: Stack) -> list[str]:
    """The queues of ``stack``'s vhost that have a consumer, sorted."""
    return sorted(consumer["queue_name"] for consumer in consumers(stack, "queue_name"))


async def test_a_deleted_queue_is_declared_bound_and_consumed_again(
    fresh_stack: Stack, fresh_watcher: Watcher, fresh_db: asyncpg.Connection
) -> None:
    """An operator deletes ``herald.events`` and ``herald.rpc`` under a running worker: the broker cancels
    both consumers, and the worker declares each queue again, with its bindings, and consumes it."""
    fresh_stack.start_worker()
    both = sorted([TOPOLOGY.events_queue, TOPOLOGY.rpc_queue])
    assert consumed_queues(fresh_stack) == both
    for name in both:
        await fresh_watcher.channel.queue_delete(name)
    await wait_until(lambda: consumed_queues(fresh_stack) == both, 20, "both queues consumed again")
    user = fresh_id("requeue")
    # Published through the exchange: only a queue bound again receives it.
    await fresh_watcher.publish(event(user, event_id=f"{user}-1"))
    await wait_until(lambda: _stored(fresh_db, user), 20, "the event stored")
    rpc = await AmqpRpc.connect(fresh_stack.amqp_url, TOPOLOGY.rpc_queue)
    try:
        reply = await rpc.call("notifications.unread_count", user=user)
    finally:
        await rpc.close()
    assert reply == {"result": {"count": 1, "unseen_count": 1, "last_seq": 1}}


async def _stored(pg: asyncpg.Connection, user: str) -> bool:
    return len(await rows(pg, user)) == 1


async def test_health_readiness_metrics_and_asyncapi(worker: HeraldProcess, watcher: Watcher) -> None:
    assert http_get(f"{worker.url}/healthz")[0] == 200
    assert http_get(f"{worker.url}/readyz") == (200, b"ready\n")
    status, metrics = http_get(f"{worker.url}/metrics")
    assert status == 200
    for name in (
        b'herald_worker_events_total{outcome="stored"}',
        b"herald_worker_batch_size_bucket",
        b"herald_worker_store_seconds_bucket",
        b"herald_worker_publish_seconds_bucket",
    ):
        assert name in metrics
    status, document = http_get(f"{worker.url}/asyncapi.json")
    schemas = orjson.loads(document)["components"]["schemas"]
    assert status == 200
    assert any("user_ids" in orjson.dumps(s).decode() for s in schemas.values())
    assert http_get(f"{worker.url}/nope")[0] == 404


async def test_retention_deletes_old_rows_and_adjusts_unread(
    module_stack: Stack, db: asyncpg.Connection
) -> None:
    user = fresh_id("old")
    await db.execute(
        "INSERT INTO users (user_id, last_seq, unread_count, unseen_count, inbox_count)"
        " VALUES ($1, 2600, 2510, 2510, 2600)",
        user,
    )
    await db.execute(
        """INSERT INTO notifications
                  (user_id, seq, id, type, category, title, message, created_at, read_at, seen_at)
           SELECT $1, s, 'id' || s, 'NEW_COMMENT', 'social', 't', 'm',
                  now() - CASE WHEN s <= 2500 THEN interval '100 days' ELSE interval '1 day' END,
                  CASE WHEN s > 2510 THEN now() END, CASE WHEN s > 2510 THEN now() END
             FROM generate_series(1, 2600) AS s""",
        user,
    )
    pool = await create_pool(Settings(database_url=module_stack.database_url, db_pool_min=1, db_pool_max=2))
    try:
        async with pool.acquire() as holder:
            await holder.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
            assert await retention_pass(pool, 90, 1000) is None  # another worker is at it
            await holder.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
        assert await retention_pass(pool, 90, 1000) == 2500
    finally:
        await pool.close()
    assert [r["seq"] for r in await rows(db, user)] == list(range(2501, 2601))
    assert await counters(db, user) == (2600, 10)
    assert await db.fetchval("SELECT inbox_count FROM users WHERE user_id = $1", user) == 100


async def test_redelivery_of_a_stored_event_republishes_its_frame_and_records_no_job_twice(
    fresh_stack: Stack,
) -> None:
    worker = fresh_stack.start_worker()
    connection = await aio_pika.connect(fresh_stack.amqp_url)
    pg = await asyncpg.connect(fresh_stack.database_url)
    try:
        watcher = Watcher(await connection.channel())
        user = fresh_id("redeliver")
        frames = await watcher.frames(user)
        body = event(user, "GRADE_RELEASED")
        await watcher.publish(body)
        (first,) = await watcher.take(frames, 1)
        jobs = await recorded_jobs(pg, [user], 2)

        # The same message again, delivered once to a consumer that dies: RabbitMQ redelivers it.
        await redeliver_while_down(worker, connection, watcher, body)

        (again,) = await watcher.take(frames, 1)
        assert frame_params(again) == frame_params(first)
        # The jobs were recorded with the row, in its transaction: the duplicate adds none.
        assert await recorded_jobs(pg, [user], 2) == jobs
        assert len(await rows(pg, user)) == 1
        assert await counters(pg, user) == (1, 1)
    finally:
        await pg.close()
        await connection.close()
