"""shared.coalesce: concurrent lookups share one call, in order, bounded, errors to their own call only."""

from __future__ import annotations

import asyncio

import pytest

from shared.coalesce import Coalescer


class Source:
    """A ``fetch`` that records the keys of every call and can be told to fail or to hold a call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_next = False
        self.release = asyncio.Event()
        self.release.set()

    async def fetch(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(keys)
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionResetError("database went away")
        return {key: key.upper() for key in keys}


async def held_call(key: str) -> tuple[Source, Coalescer[str, str], asyncio.Future[str]]:
    """A coalescer whose first call (for ``key``) has started and is held until ``source.release``."""
    source = Source()
    source.release.clear()
    coalescer = Coalescer(source.fetch, max_keys=100)
    first = asyncio.ensure_future(coalescer.get(key))
    while not source.calls:
        await asyncio.sleep(0)
    return source, coalescer, first


async def test_lookups_of_one_turn_share_one_call_and_get_their_own_values() -> None:
    source = Source()
    coalescer = Coalescer(source.fetch, max_keys=100)
    values = await asyncio.gather(*(coalescer.get(key) for key in ["a", "b", "a", "c"]))
    assert values == ["A", "B", "A", "C"]
    assert source.calls == [["a", "b", "c"]]  # one call, each key once


async def test_lookups_during_a_call_wait_for_the_next_one() -> None:
    source, coalescer, first = await held_call("a")
    later = [asyncio.ensure_future(coalescer.get(key)) for key in ("b", "c")]
    await asyncio.sleep(0)
    assert source.calls == [["a"]]
    source.release.set()
    assert await first == "A"
    assert await asyncio.gather(*later) == ["B", "C"]
    assert source.calls == [["a"], ["b", "c"]]


async def test_a_call_takes_at_most_max_keys() -> None:
    source = Source()
    coalescer = Coalescer(source.fetch, max_keys=2)
    assert await asyncio.gather(*(coalescer.get(k) for k in "abcde")) == list("ABCDE")
    assert source.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_failed_call_fails_its_own_lookups_and_the_next_call_runs() -> None:
    source, coalescer, doomed = await held_call("a")
    fine = asyncio.ensure_future(coalescer.get("b"))
    source.fail_next = True
    source.release.set()
    with pytest.raises(ConnectionResetError):
        await doomed
    assert await fine == "B"
    assert await coalescer.get("c") == "C"  # idle again: a new lookup starts a new call
    assert source.calls == [["a"], ["b"], ["c"]]


async def test_lookups_left_by_a_cancelled_call_are_cancelled_not_left_waiting() -> None:
    source, coalescer, interrupted = await held_call("a")
    queued = asyncio.ensure_future(coalescer.get("b"))
    await asyncio.sleep(0)
    draining = next(
        task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "Coalescer._dispatch"
    )
    draining.cancel()
    for lookup in (interrupted, queued):
        # Left waiting, the lookup would time out here instead.
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await lookup
    source.release.set()
    assert await coalescer.get("c") == "C"  # a new lookup starts a new call


async def test_a_lookup_abandoned_before_its_call_started_is_left_out_of_it() -> None:
    source, coalescer, first = await held_call("a")
    abandoned = asyncio.ensure_future(coalescer.get("b"))
    kept = asyncio.ensure_future(coalescer.get("c"))
    await asyncio.sleep(0)
    abandoned.cancel()  # the client went away (or its deadline passed) while the first call ran
    source.release.set()
    assert await first == "A"
    assert await kept == "C"
    assert source.calls == [["a"], ["c"]]


async def test_up_to_max_calls_run_at_once_and_later_lookups_wait_for_a_free_one() -> None:
    source = Source()
    source.release.clear()
    coalescer = Coalescer(source.fetch, max_keys=100, max_calls=2)
    first = asyncio.ensure_future(coalescer.get("a"))
    while not source.calls:
        await asyncio.sleep(0)
    second = asyncio.ensure_future(coalescer.get("b"))  # a call is free: it does not wait for the first
    while len(source.calls) < 2:
        await asyncio.sleep(0)
    later = [asyncio.ensure_future(coalescer.get(key)) for key in ("c", "d")]
    for _ in range(5):
        await asyncio.sleep(0)
    assert source.calls == [["a"], ["b"]]  # both calls busy: c and d wait, together
    source.release.set()
    assert await asyncio.gather(first, second, *later) == ["A", "B", "C", "D"]
    assert source.calls == [["a"], ["b"], ["c", "d"]]
