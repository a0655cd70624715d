"""The Python client (herald_client/client.py) without a real stack: its pure parts and a scripted gateway.

The watermark with out-of-order frames, token expiry and the reconnect backoff; then, against
``ScriptedGateway``, the close codes and frames a real gateway sends only under failure: paging and
de-duplication on ``sync:required``, 1013, 4401 and 1001 reconnecting at once, a failed catch-up sync
retried, and failing over to the next gateway URL. Last, gateways that answer and fail every attempt (an
HTTP 503, a session closed right after ``connected``): the backoff must grow. ``session`` comes from
test_client_python.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

import pytest
from websockets.asyncio.server import serve

from herald_client.client import HeraldClient, HeraldClosedError
from herald_client.reconnect import backoff_delay
from herald_client.tokens import token_expiry
from herald_ops.testing.client import ScriptedGateway
from herald_ops.testing.stack import free_port, mint, wait_until
from tests.integration.test_client_python import session

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection


def recorded_fetches(client: HeraldClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The counts of the ``notifications.unread_count`` requests ``client`` makes from now on, each once
    answered (and taken)."""
    answered: list[int] = []
    fetch = client.fetch_unread_count

    async def recorded() -> int:
        count = await fetch()
        answered.append(count)
        return count

    monkeypatch.setattr(client, "fetch_unread_count", recorded)
    return answered


async def test_watermark_survives_out_of_order_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seq 12 arriving before 11 must not move the sync point past 11 (it may still be in flight)."""
    client = HeraldClient("ws://unused", lambda: "t")
    fetched = asyncio.Event()

    async def fetch() -> int:
        fetched.set()
        return 3

    monkeypatch.setattr(client, "fetch_unread_count", fetch)
    client.watermark = 10
    client.unread_count = 0
    for seq in (12, 13):
        client._deliver({"id": f"n{seq}", "seq": seq, "read_at": None}, replayed=False)
    assert client.watermark == 10
    client._deliver({"id": "n11", "seq": 11, "read_at": None}, replayed=False)
    assert client.watermark == 13
    client._deliver({"id": "n11", "seq": 11, "read_at": None}, replayed=True)
    client._deliver({"id": "b1", "seq": None, "read_at": None}, replayed=False)  # a live broadcast
    assert client.unread_count == 3  # the duplicate was dropped; the broadcast's counts are fetched
    assert client.watermark == 13
    async with asyncio.timeout(5):
        await fetched.wait()


def test_token_expiry_and_backoff() -> None:
    token = mint("u", ttl=100)
    exp = token_expiry(token)
    assert exp is not None
    assert 90 < exp - time.time() <= 100
    assert token_expiry("not-a-jwt") is None
    delays = [backoff_delay(attempt, 0.5, 4.0) for attempt in range(20) for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays) > 2.0  # the cap is reached, jitter spreads below it


# Close codes and frames a real gateway sends only under failure, against a scripted gateway.


async def test_sync_required_pages_from_the_watermark_and_dedupes() -> None:
    async with ScriptedGateway(page_size=2) as fake, session(fake.url, "u1") as (client, recorder):
        lost = [fake.store(f"lost {i}") for i in (1, 2, 3)]  # their live frames never arrived
        live = fake.store("live 4")
        await fake.send_all("notification:new", live)
        await wait_until(lambda: recorder.new_ids() == ["n4"], 5, "the live frame")
        assert client.watermark == 0  # seq 1–3 are missing: the sync point must not move past them

        await fake.send_all("sync:required", {})
        await wait_until(lambda: len(recorder.new_ids()) == 4 and client.unread_count == 4, 5, "the sync")
        assert fake.sync_calls == [0, 2]  # paged while has_more
        assert recorder.new_ids() == ["n4", "n1", "n2", "n3"]
        assert [e.params["id"] for e in recorder.named("notification:new") if e.replayed] == [
            item["id"] for item in lost
        ]
        assert client.watermark == 4


async def test_slow_reader_close_1013_reconnects_and_syncs() -> None:
    async with ScriptedGateway() as fake, session(fake.url, "u1", backoff_base=0.01) as (client, recorder):
        fake.store("missed 1")
        fake.store("missed 2")
        await fake.close_all(1013, "reader too slow")
        await wait_until(lambda: len(recorder.new_ids()) == 2, 5, "the sync after reconnecting")
        assert recorder.named("disconnected")[0].params["code"] == 1013
        assert fake.sync_calls == [0]
        assert client.state == "open"
        assert client.unread_count == 2
        assert len(fake.tokens) == 2  # a fresh token for the new connection


@pytest.mark.parametrize(("code", "why"), [(4401, "token expired"), (1001, "server shutting down")])
async def test_expiry_and_shutdown_reconnect_at_once(code: int, why: str) -> None:
    async with ScriptedGateway() as fake, session(fake.url, "u1", backoff_base=60) as (client, recorder):
        first = client.connection_id
        await fake.close_all(code, why)
        await wait_until(lambda: client.state == "open" and client.connection_id != first, 5, "the reconnect")
        [gone] = recorder.named("disconnected")
        assert gone.params == {"code": code, "reason": why, "retry_in": 0.0}
        assert len(fake.tokens) == 2


async def test_a_failed_catch_up_sync_is_retried_until_it_succeeds() -> None:
    async with ScriptedGateway() as fake, session(fake.url, "u1", backoff_base=0.01) as (client, recorder):
        fake.store("lost 1")
        fake.store("lost 2")
        fake.failing_syncs = 2  # 5003 twice, as while the worker's consumer reconnects
        await fake.send_all("sync:required", {})
        await wait_until(lambda: len(recorder.new_ids()) == 2, 10, "the sync that finally succeeded")
        assert fake.sync_calls == [0, 0, 0]
        assert client.watermark == 2


async def test_the_client_fails_over_to_the_next_gateway_url_without_waiting() -> None:
    dead = f"ws://127.0.0.1:{free_port()}/notifications"  # refused: nothing listens there
    async with ScriptedGateway() as first, ScriptedGateway() as second:
        # A backoff of a minute: failing over must not wait for it.
        client = HeraldClient([dead, first.url, second.url], lambda: mint("u1"), backoff_base=60)
        async with client:
            assert client.url == first.url
            await first.close_all(1011, "gateway crashed")
            await wait_until(lambda: client.state == "open" and len(second.tokens) == 1, 10, "second gateway")
            assert client.url == second.url
            assert await client.ping() == "pong"


async def test_frames_held_back_during_the_lookup_follow_connected_and_count_once() -> None:
    """The gateway writes what arrived during ``session.open`` right after ``connected`` (amendment 43):
    a notification stored before the lookup is in ``connected``'s count already, one stored after is not."""
    async with ScriptedGateway() as fake:
        fake.held_back = [
            fake.store("stored before the lookup, published after it"),
            "stored during the lookup",
        ]
        async with session(fake.url, "u1") as (client, recorder):
            await wait_until(lambda: len(recorder.new_ids()) == 2, 5, "the held-back frames")
            assert client.unread_count == 2
            assert [e.method for e in recorder.events if e.method in ("connected", "notification:new")] == [
                "connected",
                "notification:new",
                "notification:new",
            ]
            assert client.watermark == 2


async def test_a_collapse_into_an_item_stored_before_the_client_connected_is_not_counted_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Amendment 12: a collapse targets an unread item, so the unread count does not move. The client never
    delivered the item (it is history), so its new version looks new: the counts are fetched, not guessed."""
    async with ScriptedGateway() as fake:
        item = fake.store("2 comments")
        item["count"] = 2
        async with session(fake.url, "u1") as (client, recorder):
            assert client.unread_count == 1
            fetched = recorded_fetches(client, monkeypatch)
            item.update(seq=2, count=3, title="3 comments")  # a third comment collapses into it
            await fake.send_all("notification:new", item)
            await wait_until(lambda: recorder.new_ids() == ["n1"], 5, "the collapse frame")
            assert client.unread_count == 1
            await wait_until(lambda: bool(fetched), 5, "the counts fetched again")
            assert fetched == [1]
            assert client.unread_count == 1


async def test_a_broadcast_frame_whose_copy_is_in_connected_s_count_is_not_counted_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Amendment 36: a recipient's stored copy may be in the counts before the live frame (``seq`` null)
    arrives; the frame makes the client fetch the counts rather than add one."""
    async with ScriptedGateway() as fake:
        copy = fake.store("maintenance tonight")  # its chunk is committed; the frame follows the last one
        async with session(fake.url, "u1") as (client, recorder):
            assert client.unread_count == 1
            fetched = recorded_fetches(client, monkeypatch)
            await fake.send_all("notification:new", copy | {"seq": None})
            await wait_until(lambda: recorder.new_ids() == ["n1"], 5, "the broadcast frame")
            assert client.unread_count == 1
            await wait_until(lambda: bool(fetched), 5, "the counts fetched again")
            assert fetched == [1]
            assert client.unread_count == 1


async def test_events_keeps_what_comes_before_its_first_read_and_ends_with_the_client() -> None:
    client = HeraldClient("ws://unused", lambda: "t")
    before_first_read = client.events()
    client._emit("notification:read", {"ids": ["n1"]})
    async with asyncio.timeout(5):
        first = await anext(before_first_read)
        assert first.method == "notification:read"
        taken_before_close = client.events()
        await client.close()
        assert [e.method for e in [e async for e in taken_before_close]] == ["state", "closed"]
        assert [e async for e in client.events()] == []  # asked for once closed: ends at once


# Gateways that answer every attempt and fail it: the backoff must grow all the same.


async def _drop_after_connected(connection: ServerConnection) -> None:
    """Authenticate, send ``connected``, and close the session at once, as a crashing gateway would."""
    auth = json.loads(await connection.recv())
    await connection.send(json.dumps({"jsonrpc": "2.0", "id": auth["id"], "result": {}}))
    connected = {"user_id": "u1", "connection_id": "c1", "unread_count": 0, "unseen_count": 0, "last_seq": 0}
    await connection.send(json.dumps({"jsonrpc": "2.0", "method": "connected", "params": connected}))
    await connection.close(1011, "internal error")


def recorded_delays(client: HeraldClient, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The ``retry_in`` of every ``disconnected``, each the top of its jitter range."""
    monkeypatch.setattr("herald_client.reconnect.random.uniform", lambda low, high: high)
    delays: list[float] = []
    client.on("disconnected", lambda event: delays.append(event.params["retry_in"]))
    return delays


@pytest.mark.parametrize(
    ("gateways", "steps"),
    [(1, [1, 2, 4, 8, 16, 32]), (2, [0, 1, 0, 2, 0, 4])],  # with 2: the other URL at once, once a round
    ids=["one-url", "two-urls"],
)
async def test_sessions_closed_right_after_connected_are_backed_off(
    monkeypatch: pytest.MonkeyPatch, gateways: int, steps: list[int]
) -> None:
    base = 0.01
    async with contextlib.AsyncExitStack() as servers:
        urls = []
        for _ in range(gateways):
            server = await servers.enter_async_context(serve(_drop_after_connected, "127.0.0.1", 0))
            urls.append(f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/notifications")
        client = HeraldClient(urls, lambda: mint("u1"), backoff_base=base, backoff_max=60)
        delays = recorded_delays(client, monkeypatch)
        async with client:
            await wait_until(lambda: len(delays) >= len(steps), 10, f"{len(steps)} sessions")
    assert delays[: len(steps)] == [base * step for step in steps]


async def test_a_gateway_answering_with_an_http_status_is_backed_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A load balancer's 503 while the gateways behind it are down is no gateway answering."""

    async def unavailable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    base = 0.01
    server = await asyncio.start_server(unavailable, "127.0.0.1", 0)
    async with server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/notifications"
        client = HeraldClient(url, lambda: mint("u1"), backoff_base=base, backoff_max=60)
        delays = recorded_delays(client, monkeypatch)
        starting = asyncio.create_task(client.start())
        await wait_until(lambda: len(delays) >= 6, 10, "six refused attempts")
        await client.close()
        with pytest.raises(HeraldClosedError):
            await starting
    assert delays[:6] == [base * 2**attempt for attempt in range(6)]
