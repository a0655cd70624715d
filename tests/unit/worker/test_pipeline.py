"""The pipeline's intake in-process: a delivery is always settled, whatever goes wrong validating it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import orjson

from herald_ops.testing.stack import wait_until
from herald_ops.testing.worker import FakeChannel, delivered
from shared.preferences import Catalog, NotificationType
from shared.settings import Settings
from worker.acks import AckTracker
from worker.pipeline import Pipeline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg
    import pytest

    from worker.publish import Publisher


async def failing_reload() -> None:
    # Not an outage (that is waited out first, see below): a failure the worker cannot wait out.
    raise RuntimeError("the catalog cannot be read")


def offline_pipeline(
    catalog: Callable[[], Catalog] = lambda: Catalog([]),
    reload_catalog: Callable[[], Awaitable[None]] = failing_reload,
) -> Pipeline:
    """A pipeline with no database or publisher: enough for what happens before storing."""
    return Pipeline(
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        pool=cast("asyncpg.Pool", None),
        publisher=cast("Publisher", None),
        acks=AckTracker(),
        catalog=catalog,
        reload_catalog=reload_catalog,
    )


async def test_a_failed_catalog_reload_requeues_the_delivery_instead_of_stalling_acks() -> None:
    channel = FakeChannel()
    pipeline = offline_pipeline()
    event = {"user_id": "u1", "type": "BRAND_NEW_TYPE", "title": "t"}
    work = pipeline.accept(delivered(channel, 1, event))
    assert work is not None  # an unknown type needs a catalog reload first
    await work

    # Requeued (counted against x-delivery-limit) and settled, so later deliveries can still be acked.
    assert channel.calls == [("nack", 1, True)]
    await pipeline._acks.settle(cast("Any", channel), [2])
    assert channel.calls[-1] == ("ack", 2, True)


async def test_events_of_a_type_just_added_all_wait_for_one_reload_and_are_all_accepted() -> None:
    """An operator adds a type and a burst of its events arrives: every event accepted before the reload
    finished is checked against the reloaded catalog, not refused as unknown for the next few seconds."""
    channel = FakeChannel()
    catalog = Catalog([])
    reloads: list[int] = []
    added = asyncio.Event()

    async def reload_adding_the_type() -> None:
        nonlocal catalog
        reloads.append(1)
        await added.wait()  # the reload takes a while: the rest of the burst arrives meanwhile
        catalog = Catalog([NotificationType("BRAND_NEW_TYPE", "updates", {"in_app": True})])

    pipeline = offline_pipeline(catalog=lambda: catalog, reload_catalog=reload_adding_the_type)
    enqueued: list[str] = []
    pipeline._enqueue = lambda message, channel, event: enqueued.append(event.type)  # type: ignore[method-assign]
    event = {"user_id": "u1", "type": "BRAND_NEW_TYPE", "title": "t"}
    works = [pipeline.accept(delivered(channel, tag, event)) for tag in (1, 2, 3)]
    tasks = [asyncio.ensure_future(work) for work in works if work is not None]
    assert len(tasks) == 3
    await wait_until(lambda: reloads, 5, "the reload to start")
    added.set()
    await asyncio.gather(*tasks)
    assert reloads == [1]  # one reload for the burst
    assert enqueued == ["BRAND_NEW_TYPE"] * 3
    assert channel.calls == []  # nothing dead-lettered or requeued
    # Accepted after the reload, the next one finds the type at once.
    later = pipeline.accept(delivered(channel, 4, event))
    assert later is None


async def test_an_outage_while_reloading_the_catalog_is_waited_out_not_requeued() -> None:
    """A requeued event comes straight back: during an outage it would use up its delivery limit (and be
    dead-lettered) within seconds, so the reload is tried again after a pause, the event held."""
    channel = FakeChannel()
    catalog = Catalog([])
    failures = [ConnectionRefusedError("postgres is down")] * 2

    async def reload_after_an_outage() -> None:
        nonlocal catalog
        if failures:
            raise failures.pop()
        catalog = Catalog([NotificationType("BRAND_NEW_TYPE", "updates", {"in_app": True})])

    pipeline = offline_pipeline(catalog=lambda: catalog, reload_catalog=reload_after_an_outage)
    enqueued: list[str] = []
    pipeline._enqueue = lambda message, channel, event: enqueued.append(event.type)  # type: ignore[method-assign]
    work = pipeline.accept(delivered(channel, 1, {"user_id": "u1", "type": "BRAND_NEW_TYPE", "title": "t"}))
    assert work is not None
    await work
    assert failures == []
    assert enqueued == ["BRAND_NEW_TYPE"]
    assert channel.calls == []  # neither requeued nor dead-lettered


async def test_acks_never_name_a_nacked_tag() -> None:
    """A multiple-ack naming a nacked tag closes the channel (PRECONDITION_FAILED).

    tests/integration/test_acks_broker.py shows it on RabbitMQ.
    """
    channel = FakeChannel()
    acks = AckTracker()
    fake = cast("Any", channel)
    await acks.settle(fake, [2])  # waits for 1
    await acks.requeue(fake, [1])
    await acks.requeue(fake, [3])
    assert channel.calls == [("nack", 1, True), ("ack", 2, True), ("nack", 3, True)]
    await acks.settle(fake, [4])
    assert channel.calls[-1] == ("ack", 4, True)


async def test_while_a_broadcast_is_held_later_deliveries_are_acked_one_by_one() -> None:
    """A held delivery (a broadcast stored chunk by chunk) does not stop the acks of the ones after it."""
    channel = FakeChannel()
    acks = AckTracker()
    fake = cast("Any", channel)
    acks.hold(fake, 2)
    await acks.settle(fake, [1])
    await acks.settle(fake, [3, 4])
    await acks.requeue(fake, [5])
    await acks.settle(fake, [6])
    assert channel.calls == [
        ("ack", 1, True),
        ("ack", 3, False),
        ("ack", 4, False),
        ("nack", 5, True),
        ("ack", 6, False),
    ]
    await acks.settle(fake, [2])  # the broadcast is done: named by a multiple-ack, 3-6 are gone already
    await acks.settle(fake, [7])  # and contiguous runs are acked together again
    assert channel.calls[-2:] == [("ack", 2, True), ("ack", 7, True)]


async def test_a_statement_canceled_every_time_is_retried_a_bounded_number_of_times_then_dead_lettered() -> (
    None
):
    """A broadcast so large that ``statement_timeout`` cancels it on every attempt is not an outage that
    ends: after :data:`worker.pipeline.QUERY_CANCELED_RETRIES` retries it goes to the dead-letter path."""
    import asyncio

    import asyncpg

    from worker import pipeline as pipeline_module

    pipeline = offline_pipeline()
    attempts: list[int] = []
    poisoned: list[Exception] = []

    async def canceled(items: list[Any], store: Any) -> Any:
        attempts.append(len(items))
        raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")

    async def poison(item: Any, exc: Exception) -> None:
        poisoned.append(exc)

    pipeline._commit = canceled  # type: ignore[method-assign]
    pipeline._poison = poison  # type: ignore[method-assign]
    async with asyncio.timeout(30):
        assert await pipeline._commit_resilient([cast("Any", object())], cast("Any", None)) == []
    assert len(attempts) == pipeline_module.QUERY_CANCELED_RETRIES + 1
    assert len(poisoned) == 1
    assert isinstance(poisoned[0], asyncpg.QueryCanceledError)


async def test_a_broadcast_that_cannot_be_routed_is_dead_lettered_not_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Routing a broadcast (its frame built with orjson) depends on nothing but the event and the catalog.
    It used to fail after the delivery was held: the error escaped into aiormq, and the delivery, never
    settled, came back at every restart of the worker."""
    from worker import broadcasts

    def unroutable(*_: object) -> None:
        raise orjson.JSONEncodeError("Recursion limit reached")

    monkeypatch.setattr(broadcasts, "route_broadcast", unroutable)
    channel = FakeChannel()
    catalog = Catalog([NotificationType("SYSTEM_ANNOUNCEMENT", "system", {"in_app": True})])
    pipeline = offline_pipeline(catalog=lambda: catalog)
    reasons: list[str] = []

    async def dead_letter(_message: object, reason: str) -> None:
        reasons.append(reason)

    pipeline._publisher = cast("Publisher", SimpleNamespace(dead_letter=dead_letter))
    event = {"type": "SYSTEM_ANNOUNCEMENT", "title": "t", "event_id": "b1"}
    work = pipeline.accept(delivered(channel, 1, event, routing_key="notification.broadcast"))
    assert work is not None
    await work

    assert reasons == ["route: TypeError: Recursion limit reached"]
    assert channel.calls == [("ack", 1, True)]
    await pipeline._acks.settle(cast("Any", channel), [2])  # not held: later acks are contiguous again
    assert channel.calls[-1] == ("ack", 2, True)
