"""The event pipeline end to end: a real worker process, RabbitMQ and Postgres.

One worker serves the whole module on its own vhost and database; every test uses fresh user ids. This
module covers what an event becomes (one row, one frame), the shapes accepted, dead-lettering of bad
input (also one the database refuses, isolated from its batch) and idempotency (repeated keys, a
redelivered event). Its fixtures are shared with ``test_worker_preferences`` and
``test_worker_operations``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import orjson
import pytest

from herald_ops.testing.stack import Stack, create_stack, destroy_stack, fresh_id
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
    # One frame only: a later marker event's frame is the next one on the user's queue.
    await watcher.publish(event(user, "COURSE_NEW_CONTENT", title="marker"))
    (marker,) = await watcher.take(frames, 1)
    assert (frame_params(marker)["title"], frame_params(marker)["seq"]) == ("marker", 2)
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
