"""Events that used to come back again and again, end to end (a real worker, RabbitMQ and Postgres): each
is now dead-lettered once, at the first delivery, with its reason, and the worker goes on.

- a NestJS envelope whose ``pattern`` fills the body: its reason, quoted whole, made ``x-herald-error``
  larger than RabbitMQ's ``frame_max``; the broker closed the worker's whole connection (its RPC consumer
  too) on every delivery, until the delivery limit dead-lettered the event without a reason;
- an event whose producer's headers leave no room in one frame for Herald's: the same, from the headers;
- ``data`` nested deeper than the frame (or the inbox reply) built around it can be written: a send was
  requeued as a bug until the delivery limit, a broadcast was never settled at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import pytest

from herald_ops.testing.stack import fresh_id, stack_context, wait_until
from herald_ops.testing.worker import TOPOLOGY, event
from shared.deadletter import HEADERS_DROPPED, MAX_REASON_CHARS, header_frame_bytes
from shared.events import MAX_DATA_DEPTH
from shared.topology import ERROR_HEADER

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg
    from aio_pika.abc import AbstractIncomingMessage

    from herald_ops.testing.requests import AmqpRpc
    from herald_ops.testing.stack import HeraldProcess, Stack
    from herald_ops.testing.worker import Watcher

pytestmark = pytest.mark.timeout(120)
DEEP_DATA_REASON = f"data: Value error, must be nested at most {MAX_DATA_DEPTH} levels deep"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with stack_context() as created:
        yield created


@pytest.fixture(scope="module")
def worker(stack: Stack) -> HeraldProcess:
    return stack.start_worker(batch_timeout_ms=20)


def nested(levels: int) -> dict[str, Any]:
    """``data`` nested ``levels`` deep (itself the first level)."""
    return {"x": orjson.loads("[" * (levels - 1) + "]" * (levels - 1))}


async def publish(
    watcher: Watcher, body: bytes, message_id: str, headers: dict[str, Any] | None = None
) -> None:
    """Publish a send event's ``body`` as it is, with the producer's ``headers``."""
    exchange = await watcher.channel.get_exchange(TOPOLOGY.events_exchange)
    await exchange.publish(
        aio_pika.Message(body, message_id=message_id, headers=headers), routing_key="notification.send"
    )


async def stored(pg: asyncpg.Connection, user: str) -> None:
    async def found() -> bool:
        return bool(await pg.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", user))

    await wait_until(found, 30, f"the event of {user} stored")


async def only_dead_letters(watcher: Watcher, *message_ids: str) -> dict[str, AbstractIncomingMessage]:
    """The one dead letter of each of ``message_ids``, once all arrived; there is no second copy of any."""
    letters: dict[str, list[AbstractIncomingMessage]] = {}
    queue = await watcher.channel.declare_queue(TOPOLOGY.dead_letter_queue, passive=True)

    async def all_found() -> bool:
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            letters.setdefault(message.message_id or "", []).append(message)
        return set(message_ids) <= set(letters)

    await wait_until(all_found, 60, f"the dead letters of {message_ids}")
    assert all(len(letters[mid]) == 1 for mid in message_ids), {mid: len(letters[mid]) for mid in message_ids}
    return {mid: letters[mid][0] for mid in message_ids}


def settled_at_once(worker: HeraldProcess, letter: AbstractIncomingMessage) -> str:
    """The letter's reason, checking the worker wrote it at the first delivery (the broker did not)."""
    headers = letter.headers or {}
    assert "x-death" not in headers, headers.get("x-death")
    assert ERROR_HEADER in headers, sorted(headers)
    log = worker.log_path.read_text(errors="replace")
    for requeued in ("dead-lettering failed; requeued", "event failed; requeued", "Consumer callback failed"):
        assert requeued not in log
    return str(headers[ERROR_HEADER])


async def test_an_envelope_whose_pattern_fills_the_body_is_dead_lettered_once_with_a_short_reason(
    watcher: Watcher, pg: asyncpg.Connection, worker: HeraldProcess
) -> None:
    poison, user = fresh_id("pattern"), fresh_id()
    pattern = "notification." + "\U000f0000" * 16000  # 64 KB of body; its repr is 2.5 times longer
    await publish(watcher, orjson.dumps({"pattern": pattern, "data": {}}), poison)
    await watcher.publish(event(user))

    await stored(pg, user)
    letter = (await only_dead_letters(watcher, poison))[poison]
    assert settled_at_once(worker, letter) == f"routing key: unknown event kind {pattern[:64]!r}…"


async def test_an_event_whose_headers_leave_no_room_for_herald_s_is_dead_lettered_without_them(
    watcher: Watcher, pg: asyncpg.Connection, worker: HeraldProcess
) -> None:
    poison, user = fresh_id("headers"), fresh_id()
    channel = await watcher.channel.get_underlay_channel()
    frame_max: int = channel.connection.connection_tune.frame_max
    # The producer's headers fill its own content header frame but for 16 bytes: it is published.
    sized = aio_pika.Message(b"{not json", message_id=poison, headers={"x-big": ""})
    room = frame_max - header_frame_bytes(sized) - 16
    await publish(watcher, b"{not json", poison, headers={"x-big": "a" * room})
    await watcher.publish(event(user))

    await stored(pg, user)
    letter = (await only_dead_letters(watcher, poison))[poison]
    reason = settled_at_once(worker, letter)
    assert reason.startswith(f"{HEADERS_DROPPED}; body: not valid JSON")
    assert len(reason) <= MAX_REASON_CHARS
    assert "x-big" not in (letter.headers or {})
    assert letter.body == b"{not json"


async def test_data_nested_too_deep_for_its_frame_is_dead_lettered_at_once_and_as_deep_as_allowed_is_listed(
    watcher: Watcher, pg: asyncpg.Connection, rpc: AmqpRpc, worker: HeraldProcess
) -> None:
    send, broadcast, inbox_deep = fresh_id("send"), fresh_id("broadcast"), fresh_id("inbox")
    await watcher.publish(event(fresh_id(), data=nested(253)), message_id=send)
    await watcher.publish(
        {"event_id": broadcast, "type": "SYSTEM_ANNOUNCEMENT", "title": "t", "data": nested(253)},
        routing_key="notification.broadcast",
        message_id=broadcast,
    )
    # Its frame could be written, the reply listing it could not.
    await watcher.publish(event(fresh_id(), data=nested(MAX_DATA_DEPTH + 1)), message_id=inbox_deep)
    user, data = fresh_id(), nested(MAX_DATA_DEPTH)
    await watcher.publish(event(user, data=data))

    await stored(pg, user)
    letters = await only_dead_letters(watcher, send, broadcast, inbox_deep)
    assert {mid: settled_at_once(worker, letter) for mid, letter in letters.items()} == dict.fromkeys(
        letters, DEEP_DATA_REASON
    )
    listed = await rpc.call("notifications.list", user=user)
    assert [item["data"] for item in listed["result"]["items"]] == [data]
