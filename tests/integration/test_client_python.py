"""The Python client (herald_client/client.py) against a real worker + gateway, plus its pure parts.

Same scenarios as the JS client's tests (clients/js/test/): first-frame auth, live notifications with the
unread count in step, requests and their errors, tabs in step, reconnect + sync without duplicates after
the gateway is killed or shut down (1001), the gateway's ``sync:required`` after it lost RabbitMQ, token
refresh before expiry, the close codes that stop the client (4401 refusals, 4008), the documented snippet,
a first session whose ``connected`` had no ``last_seq`` anchoring its watermark once the worker answers;
and, against a scripted gateway, paging and de-duplication on ``sync:required``, 1013, 4401 at expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from herald_client.client import (
    Event,
    HeraldAuthError,
    HeraldClient,
    HeraldClosedError,
    HeraldRequestError,
)
from herald_client.reconnect import backoff_delay
from herald_client.tokens import token_expiry
from herald_ops.testing.client import (
    DOC_GATEWAY,
    ScriptedGateway,
    doc_snippet,
    event_body,
    publish,
    running_stack,
)
from herald_ops.testing.stack import (
    ROOT,
    free_port,
    fresh_id,
    mint,
    rabbitmqctl,
    stack_context,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack


@pytest.fixture(scope="module")
def herald() -> Iterator[tuple[Stack, HeraldProcess]]:
    with running_stack() as running:
        yield running


class Recorder:
    """Collects a client's events through its public async iterator."""

    def __init__(self, client: HeraldClient) -> None:
        self.events: list[Event] = []
        self._task = asyncio.create_task(self._collect(client))

    async def _collect(self, client: HeraldClient) -> None:
        async for event in client.events():
            self.events.append(event)

    def named(self, method: str) -> list[Event]:
        return [event for event in self.events if event.method == method]

    def new_ids(self) -> list[str]:
        return [event.params["id"] for event in self.named("notification:new")]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def session(url: str, user: str, **options: Any) -> AsyncIterator[tuple[HeraldClient, Recorder]]:
    client = HeraldClient(url, lambda: mint(user), **options)
    recorder = Recorder(client)
    await asyncio.sleep(0)  # the recorder subscribes before the first event
    try:
        async with client:
            yield client, recorder
    finally:
        await recorder.stop()


async def test_connects_with_first_frame_auth(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        assert client.state == "open"
        assert client.user_id == user
        assert client.unread_count == 0
        assert await client.ping() == "pong"
        [connected] = recorder.named("connected")
        assert connected.params["user_id"] == user


async def test_live_notification_updates_unread_count(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        body = event_body(user, title="Hello live")
        await publish(stack.amqp_url, body)
        await wait_until(lambda: len(recorder.named("notification:new")) == 1, 10, "the live notification")
        item = recorder.named("notification:new")[0].params
        assert (item["title"], item["type"], item["read_at"]) == ("Hello live", "COURSE_NEW_CONTENT", None)
        assert client.unread_count == 1
        assert [e.params["count"] for e in recorder.named("unread")][-1] == 1

        page = await client.list_notifications(limit=10)
        assert [i["id"] for i in page["items"]] == [item["id"]]
        result = await client.mark_read([item["id"]])
        assert result == {"updated": 1, "unread_count": 0, "unseen_count": 0}
        assert (client.unread_count, client.unseen_count) == (0, 0)
        await wait_until(lambda: recorder.named("notification:read"), 10, "notification:read")

        # Redelivery of the same event id stores nothing twice; whatever is pushed again is dropped by id.
        await publish(stack.amqp_url, body, event_body(user, title="second"))
        await wait_until(lambda: len(recorder.named("notification:new")) == 2, 10, "the second notification")
        assert len(set(recorder.new_ids())) == 2
        assert client.unread_count == 1
        # Pages by number (amendment 26): the second page of one is the older notification.
        second = await client.list_notifications(limit=1, page=2)
        assert [i["id"] for i in second["items"]] == [item["id"]]


async def test_unseen_archive_act_and_a_collapsed_item_replaced(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    actions = [{"id": "open", "label": "Open"}]
    async with session(gateway.ws_url, user) as (client, recorder):
        await publish(stack.amqp_url, *(event_body(user, title=f"n{i}", actions=actions) for i in range(2)))
        await wait_until(lambda: len(recorder.new_ids()) == 2, 10, "two notifications")
        ids = recorder.new_ids()
        assert (client.unread_count, client.unseen_count) == (2, 2)
        assert (await client.mark_seen())["unseen_count"] == 0  # the bell was opened
        assert (client.unread_count, client.unseen_count) == (2, 0)
        await client.archive([ids[0]])
        assert [i["id"] for i in (await client.list_notifications())["items"]] == [ids[1]]
        assert [i["id"] for i in (await client.list_notifications(archived=True))["items"]] == [ids[0]]
        assert len((await client.list_notifications(archived=None))["items"]) == 2
        await client.unarchive([ids[0]])
        acted = await client.act(ids[1], "open")
        assert (acted["acted"], acted["action_id"], client.unread_count) == (True, "open", 1)
        await wait_until(lambda: recorder.named("notification:acted"), 10, "notification:acted")

        # Two events of one collapse key: the second replaces the first item instead of adding one.
        first = event_body(user, title="1 comment", collapse_key="thread")
        await publish(stack.amqp_url, first)
        await wait_until(lambda: len(recorder.new_ids()) == 3, 10, "the collapsible notification")
        await publish(stack.amqp_url, event_body(user, title="2 comments", collapse_key="thread"))
        await wait_until(
            lambda: any(e.replaces for e in recorder.named("notification:new")), 10, "the replacement"
        )
        replacement = next(e.params for e in recorder.named("notification:new") if e.replaces)
        assert (replacement["id"], replacement["title"], replacement["count"]) == (
            recorder.new_ids()[2],
            "2 comments",
            2,
        )
        # Counts are fetched again after a replacement: one unread from before, the collapsed one unseen.
        await wait_until(lambda: (client.unread_count, client.unseen_count) == (2, 1), 10, "the counts")


async def test_requests_and_errors(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        await publish(stack.amqp_url, *(event_body(user, title=f"n{i}") for i in range(3)))
        await wait_until(lambda: len(recorder.new_ids()) == 3, 10, "three notifications")
        ids = recorder.new_ids()
        assert (await client.delete([ids[0]]))["unread_count"] == 2
        assert client.unread_count == 2
        assert (await client.mark_all_read())["unread_count"] == 0
        assert (await client.mark_unread([ids[1]]))["unread_count"] == 1
        assert await client.fetch_unread_count() == 1
        assert (await client.sync(0))["items"][-1]["id"] == ids[2]

        prefs = await client.update_preferences({"types": {"NEW_COMMENT": {"email": True}}})
        assert prefs["types"]["NEW_COMMENT"]["email"] is True
        assert (await client.get_preferences())["types"]["NEW_COMMENT"]["email"] is True
        assert (await client.reset_preferences())["types"]["NEW_COMMENT"]["email"] is False

        with pytest.raises(HeraldRequestError) as invalid:
            await client.mark_read("not-a-list")  # type: ignore[arg-type]
        assert invalid.value.code == -32602
        with pytest.raises(HeraldRequestError) as unknown:
            await client.request("session.open")
        assert unknown.value.code == -32601
        with pytest.raises(HeraldRequestError) as forbidden:
            await client.broadcast("hi", "not an admin")
        assert forbidden.value.code == 4003
        assert client.state == "open"  # errors never cost the connection


async def test_two_tabs_stay_in_step(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (first, _), session(gateway.ws_url, user) as (second, seen):
        await publish(stack.amqp_url, event_body(user))
        await wait_until(
            lambda: first.unread_count == 1 and second.unread_count == 1 and seen.new_ids(),
            10,
            "both counts at 1",
        )
        await first.mark_read([seen.new_ids()[0]])
        await wait_until(
            lambda: second.unread_count == 0 and seen.named("notification:read"), 10, "the second tab at 0"
        )
        assert seen.named("notification:read")[-1].params["ids"] == seen.new_ids()


async def test_reconnect_after_gateway_restart_syncs_without_duplicates(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    stack, gateway = herald
    user = fresh_id()
    tokens: list[str] = []

    def provider() -> str:
        tokens.append(mint(user))
        return tokens[-1]

    client = HeraldClient(gateway.ws_url, provider, backoff_base=0.05, backoff_max=0.5)
    recorder = Recorder(client)
    try:
        async with client:
            await publish(stack.amqp_url, event_body(user, title="before"))
            await wait_until(lambda: len(recorder.new_ids()) == 1, 10, "the first notification")

            gateway.kill()
            await wait_until(lambda: client.state == "reconnecting", 10, "the client to notice")
            await publish(stack.amqp_url, *(event_body(user, title=f"missed {i}") for i in range(3)))
            # The worker stores them while no gateway is up; then the gateway comes back on the same port.
            await asyncio.to_thread(gateway.launch)
            await wait_until(lambda: len(recorder.new_ids()) == 4, 20, "the missed notifications")

            assert len(set(recorder.new_ids())) == 4
            replayed = [e.params["title"] for e in recorder.named("notification:new") if e.replayed]
            assert sorted(replayed) == ["missed 0", "missed 1", "missed 2"]
            # The catch-up ends with a count fetch, after the replayed items: when the restarted gateway's
            # broker link was not up yet, ``connected`` carried no counts and only that fetch has them.
            await wait_until(lambda: client.unread_count == 4, 10, "the count after the catch-up")
            assert len(tokens) >= 2  # a fresh token for the reconnect
            assert recorder.named("disconnected")

            # Live delivery works again and nothing is repeated.
            await publish(stack.amqp_url, event_body(user, title="after"))
            await wait_until(lambda: len(recorder.new_ids()) == 5, 10, "a live notification after reconnect")
            assert len(set(recorder.new_ids())) == 5
    finally:
        await recorder.stop()
        if gateway.popen is not None and gateway.popen.poll() is not None:
            await asyncio.to_thread(gateway.launch)


async def test_token_is_refreshed_before_expiry(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald
    user = fresh_id()
    issued: list[str] = []

    def provider() -> str:
        issued.append(mint(user, ttl=3))
        return issued[-1]

    client = HeraldClient(gateway.ws_url, provider, refresh_margin=1.5)
    recorder = Recorder(client)
    try:
        async with client:
            first_connection = client.connection_id
            # Well past the first token's expiry the same connection is still up: auth.refresh worked.
            first_expiry = token_expiry(issued[0])
            assert first_expiry is not None
            await wait_until(
                lambda: len(issued) >= 3 and time.time() > first_expiry + 0.5, 15, "two refreshes"
            )
            assert await client.ping() == "pong"
            assert client.connection_id == first_connection
            assert not recorder.named("disconnected")
    finally:
        await recorder.stop()


async def test_refused_tokens_stop_the_client(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald
    calls: list[int] = []

    def bad_provider() -> str:
        calls.append(1)
        return mint("mallory", secret="not-the-gateway-secret-but-long-enough!!")

    client = HeraldClient(gateway.ws_url, bad_provider, backoff_base=0.05)
    with pytest.raises(HeraldAuthError) as refused:
        await client.start()
    assert refused.value.code == 4401
    assert len(calls) == 2  # one fresh token was tried before giving up
    assert client.state == "closed"
    with pytest.raises(HeraldClosedError):
        await client.ping()


async def test_token_provider_failure_stops_the_client(herald: tuple[Stack, HeraldProcess]) -> None:
    _, gateway = herald

    def failing() -> str:
        raise RuntimeError("auth service down")

    client = HeraldClient(gateway.ws_url, failing)
    with pytest.raises(HeraldAuthError, match="auth service down"):
        await client.start()
    assert client.state == "closed"


async def test_too_many_connections_stops_with_4008(herald: tuple[Stack, HeraldProcess]) -> None:
    stack, _ = herald
    gateway = stack.start_gateway(max_connections_per_user=1)
    user = fresh_id()
    try:
        async with session(gateway.ws_url, user) as (first, _):
            extra = HeraldClient(gateway.ws_url, lambda: mint(user), backoff_base=0.05)
            with pytest.raises(HeraldClosedError) as refused:
                await extra.start()
            assert refused.value.code == 4008
            assert extra.state == "closed"
            assert first.state == "open"
    finally:
        gateway.stop()


@pytest.fixture
def workerless_stack() -> Iterator[Stack]:
    """A stack of its own with no process running yet (the test starts them)."""
    with stack_context("herald_pyanchor") as stack:
        yield stack


async def _stored_last_seq(stack: Stack, user: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        value = await conn.fetchval("SELECT last_seq FROM users WHERE user_id = $1", user)
    finally:
        await conn.close()
    return int(value or 0)


async def test_a_first_session_without_last_seq_anchors_its_watermark_when_the_worker_answers(
    workerless_stack: Stack,
) -> None:
    """Amendment 42: ``connected`` without ``last_seq`` (no worker answered the session lookup) leaves no
    watermark; the client's catch-up retries ``notifications.unread_count`` until the worker is up and
    anchors it there, so a later session resumes from it and recovers what it missed."""
    stack = workerless_stack
    user = fresh_id()
    processes: list[HeraldProcess] = []
    clients: list[HeraldClient] = []
    recorders: list[Recorder] = []
    try:
        gateway = await asyncio.to_thread(stack.start_gateway, rpc_timeout=0.5)
        processes.append(gateway)
        first = HeraldClient(gateway.ws_url, lambda: mint(user), backoff_base=0.05, backoff_max=0.5)
        clients.append(first)
        recorders.append(seen := Recorder(first))
        await asyncio.sleep(0)
        await first.start()
        [connected] = seen.named("connected")
        assert "last_seq" not in connected.params
        assert first.watermark is None

        processes.append(await asyncio.to_thread(stack.start_worker))
        await wait_until(lambda: first.watermark is not None, 20, "the watermark anchored by the catch-up")
        anchored = first.watermark
        assert anchored is not None
        assert anchored == await _stored_last_seq(stack, user)
        await first.close()

        await publish(stack.amqp_url, *(event_body(user, title=f"missed {i}") for i in range(3)))

        async def stored() -> bool:
            return await _stored_last_seq(stack, user) == anchored + 3

        await wait_until(stored, 20, "the three notifications stored")

        second = HeraldClient(gateway.ws_url, lambda: mint(user), backoff_base=0.05, backoff_max=0.5)
        second.watermark = anchored  # resumed from the first session's watermark
        clients.append(second)
        recorders.append(resumed := Recorder(second))
        await asyncio.sleep(0)
        await second.start()
        await wait_until(
            lambda: second.watermark == anchored + 3 and second.unread_count == 3, 20, "the catch-up"
        )
        replayed = resumed.named("notification:new")
        assert sorted(e.params["title"] for e in replayed) == ["missed 0", "missed 1", "missed 2"]
        assert all(e.replayed for e in replayed)
        assert len(set(resumed.new_ids())) == 3
    finally:
        for recorder in recorders:
            await recorder.stop()
        for client in clients:
            await client.close()
        for process in processes:
            await asyncio.to_thread(process.stop)


def test_watermark_survives_out_of_order_frames() -> None:
    """Seq 12 arriving before 11 must not move the sync point past 11 (it may still be in flight)."""
    client = HeraldClient("ws://unused", lambda: "t")
    client.watermark = 10
    client.unread_count = 0
    for seq in (12, 13):
        client._deliver({"id": f"n{seq}", "seq": seq, "read_at": None}, replayed=False)
    assert client.watermark == 10
    client._deliver({"id": "n11", "seq": 11, "read_at": None}, replayed=False)
    assert client.watermark == 13
    client._deliver({"id": "n11", "seq": 11, "read_at": None}, replayed=True)
    client._deliver({"id": "b1", "seq": None, "read_at": None}, replayed=False)  # a live broadcast
    assert client.unread_count == 4  # the duplicate was dropped
    assert client.watermark == 13


def test_token_expiry_and_backoff() -> None:
    token = mint("u", ttl=100)
    exp = token_expiry(token)
    assert exp is not None
    assert 90 < exp - time.time() <= 100
    assert token_expiry("not-a-jwt") is None
    delays = [backoff_delay(attempt, 0.5, 4.0) for attempt in range(20) for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays) > 2.0  # the cap is reached, jitter spreads below it


async def test_the_documented_snippet_works_as_printed(herald: tuple[Stack, HeraldProcess]) -> None:
    """docs/clients.md's Python snippet (copied into the README), with only the gateway address changed."""
    stack, gateway = herald
    user = fresh_id("doc")
    code = doc_snippet("python")
    assert DOC_GATEWAY in code
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace(DOC_GATEWAY, gateway.ws_url),
        cwd=ROOT,
        env={**os.environ, "HERALD_TOKEN": mint(user)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert await process.stdout.readline() == b"unread: 0\n"
            await publish(stack.amqp_url, event_body(user, title="Printed snippet"))
            assert await process.stdout.readline() == b"new: Printed snippet\n"
    finally:
        process.kill()
        await process.wait()


async def test_gateway_broker_loss_sends_sync_required_and_the_client_catches_up(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    """The real gateway's ``sync:required`` after its AMQP connection drops (this stack's vhost only)."""
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user) as (client, recorder):
        first = client.connection_id
        await asyncio.to_thread(rabbitmqctl, "close_all_connections", "--vhost", stack.name, "client test")
        await wait_until(lambda: recorder.named("sync:required"), 30, "sync:required from the gateway")
        assert client.connection_id == first  # the WebSocket itself survived

        await publish(stack.amqp_url, event_body(user, title="after the broker came back"))
        await wait_until(lambda: len(recorder.new_ids()) == 1, 20, "live delivery after the rebuild")
        assert client.unread_count == 1


async def test_gateway_shutdown_closes_1001_and_the_client_comes_back(
    herald: tuple[Stack, HeraldProcess],
) -> None:
    stack, gateway = herald
    user = fresh_id()
    async with session(gateway.ws_url, user, backoff_base=0.05, backoff_max=0.5) as (client, recorder):
        try:
            await asyncio.to_thread(gateway.stop)  # SIGTERM: a graceful shutdown
            await wait_until(lambda: recorder.named("disconnected"), 10, "the close")
            assert recorder.named("disconnected")[0].params["code"] == 1001
            await publish(stack.amqp_url, event_body(user, title="during the restart"))
        finally:
            await asyncio.to_thread(gateway.launch)
        await wait_until(lambda: recorder.new_ids(), 20, "the notification published during the restart")
        # Recovered by the catch-up sync, which re-anchors the count with a fetch after its last page.
        await wait_until(lambda: client.unread_count == 1, 20, "the count after the catch-up")
        assert client.state == "open"


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
