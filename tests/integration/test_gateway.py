"""The gateway end to end: real gateway processes, real WebSocket clients, real RabbitMQ.

Relay to every connection of a user across two gateways and to nobody else, bindings gone after the last
connection, churn without stray bindings or lost frames, broadcast filtering by in-app preferences,
request forwarding, bad frames, the HTTP surface, and the ``session.open_many`` requests that concurrent
connects share (with the fallback to ``session.open`` for a worker that does not know it). Limits, JWT
and broker faults have their own files.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import re
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from herald_ops.testing.gateway import (
    BROKER_SETTLES,
    SESSION_COUNTS,
    Responder,
    call,
    open_client,
    publish_broadcast,
    publish_user,
    recv_json,
    stray_user_bindings,
    user_bindings,
    user_exchanges,
    user_frame,
)
from herald_ops.testing.stack import ROOT, fresh_id, http_get, mint, stack_context, wait_until
from shared.jsonrpc import SESSIONS_PER_REQUEST, notification_frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from aio_pika.abc import AbstractChannel
    from websockets.asyncio.client import ClientConnection

    from herald_ops.testing.stack import HeraldProcess, Stack


#: Connects at once in the session.open_many test.
CONNECTS = 150


@pytest.fixture(scope="module")
def gw_stack() -> Iterator[Stack]:
    with stack_context("herald_gw") as created:
        yield created


@pytest.fixture(scope="module")
async def responder(gw_stack: Stack) -> AsyncIterator[Responder]:
    started = Responder(gw_stack.amqp_url)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(scope="module")
def gateways(gw_stack: Stack, responder: Responder) -> tuple[HeraldProcess, HeraldProcess]:
    # Generous rate limits: these tests send many frames; test_gateway_limits covers 4029.
    limits = {"rate_limit_per_second": 10_000, "rate_limit_burst": 10_000, "max_connections_per_user": 64}
    return gw_stack.start_gateway(**limits), gw_stack.start_gateway(**limits)


@pytest.fixture(scope="module")
async def channel(gw_stack: Stack) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(gw_stack.amqp_url)
    yield await connection.channel()
    await connection.close()


async def close_all(clients: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in clients))


async def test_connected_carries_session_counts_and_user(gateways: tuple[HeraldProcess, ...]) -> None:
    user = fresh_id()
    ws, params = await open_client(gateways[0], user)
    try:
        assert params["user_id"] == user
        assert params["unread_count"] == SESSION_COUNTS["unread_count"]
        assert params["last_seq"] == SESSION_COUNTS["last_seq"]
        assert params["connection_id"]
    finally:
        await ws.close()


async def test_user_frame_reaches_every_connection_of_the_user_on_both_gateways_and_nobody_else(
    gw_stack: Stack, gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel
) -> None:
    alice, bob = fresh_id("alice"), fresh_id("bob")
    a, b = gateways
    alice_clients = [(await open_client(gw, alice))[0] for gw in (a, a, b)]
    bob_clients = [(await open_client(gw, bob))[0] for gw in (a, b)]
    try:
        await wait_until(
            lambda: user_bindings(gw_stack.name, alice) == 2, BROKER_SETTLES, "alice bound on both gateways"
        )
        frame = user_frame(alice, 1)
        await publish_user(channel, alice, frame)
        for ws in alice_clients:
            assert (await ws.recv()).encode() == frame  # the worker's bytes, untouched
        # Bob's first frame is his own: alice's frame never reached him.
        await publish_user(channel, bob, user_frame(bob, 1))
        for ws in bob_clients:
            assert orjson.loads(await ws.recv())["params"]["id"] == f"{bob}-1"
    finally:
        await close_all(alice_clients + bob_clients)


async def test_binding_goes_with_the_last_connection_of_a_user_on_each_gateway(
    gw_stack: Stack, gateways: tuple[HeraldProcess, HeraldProcess]
) -> None:
    user = fresh_id()
    a, b = gateways
    on_a1, on_a2, on_b = [(await open_client(gw, user))[0] for gw in (a, a, b)]
    vhost = gw_stack.name
    await wait_until(lambda: user_bindings(vhost, user) == 2, BROKER_SETTLES, "one binding per gateway")
    await on_a1.close()
    await on_b.close()
    await wait_until(
        lambda: user_bindings(vhost, user) == 1, BROKER_SETTLES, "gateway b unbound, a still bound"
    )
    await on_a2.close()
    await wait_until(lambda: user_bindings(vhost, user) == 0, BROKER_SETTLES, "last binding gone")
    await wait_until(
        lambda: f"herald.user.{user}" not in user_exchanges(vhost), 10, "the auto-delete exchange went too"
    )


async def test_churn_leaves_no_stray_bindings_and_loses_no_frame_for_users_who_stayed(
    gw_stack: Stack, gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel
) -> None:
    users = [fresh_id("churn") for _ in range(20)]
    stayers = users[:10]
    rng = random.Random(7)
    stayed: dict[str, list[ClientConnection]] = {}
    for user in stayers:
        stayed[user] = [(await open_client(gateways[rng.randrange(2)], user))[0]]
    received: dict[ClientConnection, list[bytes]] = {ws: [] for clients in stayed.values() for ws in clients}

    async def read(ws: ClientConnection) -> None:
        async for frame in ws:
            received[ws].append(frame.encode() if isinstance(frame, str) else frame)

    readers = [asyncio.create_task(read(ws)) for ws in received]
    churn_slots = asyncio.Semaphore(20)

    async def churn_one(i: int) -> None:
        async with churn_slots:
            ws, _ = await open_client(gateways[i % 2], users[rng.randrange(20)])
            await asyncio.sleep(rng.random() * 0.05)
            await ws.close()

    sent: dict[str, list[bytes]] = {user: [] for user in stayers}

    async def publish_during_churn() -> None:
        for n in range(30):
            for user in stayers:
                frame = user_frame(user, n)
                sent[user].append(frame)
                await publish_user(channel, user, frame)
            await asyncio.sleep(0.02)

    await asyncio.gather(publish_during_churn(), *(churn_one(i) for i in range(200)))
    try:
        await wait_until(
            lambda: all(received[ws] == sent[user] for user, clients in stayed.items() for ws in clients),
            15,
            "every frame, in order, for every user who stayed",
        )
        vhost = gw_stack.name
        # Detaches of the churned connections finish after their close: wait for the topology to settle
        # (each look is a rabbitmqctl run, which takes seconds on a loaded machine).
        await wait_until(
            lambda: sorted(user_exchanges(vhost)) == sorted(f"herald.user.{u}" for u in stayers),
            BROKER_SETTLES,
            "exactly the stayers' exchanges remain",
        )
        await wait_until(
            lambda: all(user_bindings(vhost, user) == 1 for user in stayers),
            BROKER_SETTLES,
            "each stayer bound once",
        )
    finally:
        await close_all([ws for clients in stayed.values() for ws in clients])
        await asyncio.gather(*readers, return_exceptions=True)
    await wait_until(
        lambda: not stray_user_bindings(gw_stack.name), BROKER_SETTLES, "no per-user binding left"
    )


async def test_broadcast_follows_each_users_in_app_switches(
    gateways: tuple[HeraldProcess, HeraldProcess], channel: AbstractChannel, responder: Responder
) -> None:
    loud, quiet = fresh_id("loud"), fresh_id("quiet")
    responder.preferences[quiet] = {
        "channels": {"in_app": True},
        "types": {"COURSE_UPDATE": {"in_app": False}},
    }
    loud_ws, _ = await open_client(gateways[0], loud)
    quiet_ws, _ = await open_client(gateways[1], quiet)
    try:
        muted = notification_frame("notification:new", {"id": "b1", "seq": None, "type": "COURSE_UPDATE"})
        other = notification_frame("notification:new", {"id": "b2", "seq": None, "type": "NEW_COMMENT"})
        await publish_broadcast(channel, "COURSE_UPDATE", muted)
        await publish_broadcast(channel, "NEW_COMMENT", other)
        assert [(await loud_ws.recv()).encode() for _ in range(2)] == [muted, other]
        assert (await quiet_ws.recv()).encode() == other  # the muted type never reached quiet
        # Turning the type back on arrives as a preferences:updated frame, which the gateway learns from.
        updated = notification_frame("preferences:updated", {"channels": {"in_app": True}, "types": {}})
        await publish_user(channel, quiet, updated, method="preferences:updated")
        assert (await quiet_ws.recv()).encode() == updated
        await publish_broadcast(channel, "COURSE_UPDATE", muted)
        assert (await quiet_ws.recv()).encode() == muted
    finally:
        await close_all([loud_ws, quiet_ws])


async def test_requests_are_forwarded_with_the_token_user_and_answered_with_the_client_id(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    user = fresh_id()
    ws, _ = await open_client(gateways[0], user, jwt=mint(user, admin=True))
    try:
        reply = await call(ws, "notifications.list", {"limit": 5, "user_id": "someone-else"})
        echo = reply["result"]["echo"]
        assert echo == {
            "method": "notifications.list",
            "params": {"limit": 5, "user_id": "someone-else"},
            "user_id": user,  # always the token's sub, whatever the params say
            "admin": True,
        }
        assert (await call(ws, "session.open"))["error"]["code"] == -32601  # internal only
    finally:
        await ws.close()


async def test_many_requests_in_flight_on_one_connection_are_answered_independently(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    ws, _ = await open_client(gateways[0])
    try:
        # The slow request is sent first and answered last: requests do not queue behind each other.
        requests = [{"jsonrpc": "2.0", "id": "slow", "method": "preferences.get", "params": {"delay": 1.0}}]
        requests += [
            {"jsonrpc": "2.0", "id": i, "method": "notifications.unread_count", "params": {}}
            for i in range(50)
        ]
        for request in requests:
            await ws.send(orjson.dumps(request).decode())
        ids = [(await recv_json(ws))["id"] for _ in requests]
        assert sorted(ids[:-1]) == list(range(50))
        assert ids[-1] == "slow"
    finally:
        await ws.close()


async def test_bad_frames_get_json_rpc_errors_and_the_connection_stays_usable(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    ws, _ = await open_client(gateways[0])
    cases: list[tuple[str, Any, int, Any]] = [
        ("not json", None, -32700, None),
        ("[1, 2]", None, -32600, None),
        ('"just a string"', None, -32600, None),
        ('{"jsonrpc": "2.0", "id": 1}', 1, -32600, "method"),
        ('{"jsonrpc": "1.0", "id": 2, "method": "ping"}', 2, -32600, "jsonrpc"),
        ('{"jsonrpc": "2.0", "id": 3, "method": "no.such"}', 3, -32601, None),
        ('{"jsonrpc": "2.0", "id": 4, "method": "ping", "params": [1]}', 4, -32602, "params"),
        ('{"jsonrpc": "2.0", "id": 5, "method": "auth.refresh", "params": {}}', 5, -32602, "token"),
        ('{"jsonrpc": "2.0", "id": 6, "method": "auth", "params": {"token": "x"}}', 6, -32600, None),
        (orjson.dumps({"jsonrpc": "2.0", "id": "x" * 129, "method": "ping"}).decode(), None, -32600, "id"),
        ('{"jsonrpc": "2.0", "id": 9007199254740993, "method": "ping"}', None, -32600, "id"),
        ('{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', None, -32600, "id"),
        ('{"jsonrpc": "2.0", "id": true, "method": "ping"}', None, -32600, "id"),
    ]
    try:
        for frame, expected_id, code, data in cases:
            await ws.send(frame)
            reply = await recv_json(ws)
            assert reply["id"] == expected_id, frame
            assert reply["error"]["code"] == code, (frame, reply)
            assert reply["error"].get("data") == data, (frame, reply)
        assert (await call(ws, "ping"))["result"] == "pong"
        # A notification (no id) is served but never answered: the next reply is the ping's.
        await ws.send('{"jsonrpc": "2.0", "method": "ping"}')
        assert (await call(ws, "ping"))["result"] == "pong"
    finally:
        await ws.close()


async def test_http_surface(gateways: tuple[HeraldProcess, HeraldProcess]) -> None:
    gw = gateways[0]
    assert http_get(f"{gw.url}/healthz")[0] == 200
    assert http_get(f"{gw.url}/readyz")[0] == 200
    status, body = http_get(f"{gw.url}/metrics")
    assert status == 200
    for series in (
        "herald_gateway_connections",
        "herald_gateway_users",
        "herald_gateway_frames_relayed_total",
        "herald_gateway_requests_total",
        "herald_gateway_request_seconds_bucket",
    ):
        assert series.encode() in body
    assert http_get(f"{gw.url}/dev/token?user=u1")[0] == 404  # HERALD_DEV_TOKENS is off
    assert http_get(f"{gw.url}/nope")[0] == 404
    assert http_get(f"{gw.url}/static/../../shared/settings.py")[0] == 404
    assert http_get(f"{gw.url}/static/%2e%2e/http.py")[0] == 404
    assert http_get(f"{gw.url}/client/../pyproject.toml")[0] == 404


async def test_handshake_refusals(gateways: tuple[HeraldProcess, HeraldProcess]) -> None:
    gw = gateways[0]
    good = mint(fresh_id())
    refusals = [
        (f"{gw.ws_url}?token=garbage", {}, 401),
        (gw.ws_url, {"additional_headers": {"Authorization": "Bearer garbage"}}, 401),
        (f"ws://127.0.0.1:{gw.port}/elsewhere?token={good}", {}, 404),
        (f"{gw.ws_url}?token={good}", {"origin": "https://evil.example"}, 403),
        (f"{gw.ws_url}?token={good}", {"additional_headers": {"Origin": "http://["}}, 403),  # not a 500
    ]
    for url, kwargs, status in refusals:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, **kwargs)
        assert refused.value.response.status_code == status, url
    # Same-origin pages and the Authorization header are fine.
    async with connect(
        gw.ws_url,
        origin=f"http://127.0.0.1:{gw.port}",
        additional_headers={"Authorization": f"Bearer {good}"},
    ) as ws:
        assert (await recv_json(ws))["method"] == "connected"


async def test_metrics_count_requests_by_method_and_outcome(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    ws, _ = await open_client(gateways[1])
    try:
        await call(ws, "preferences.get")
        await call(ws, "ping")
    finally:
        await ws.close()
    body = http_get(f"{gateways[1].url}/metrics")[1].decode()
    assert 'herald_gateway_requests_total{method="preferences.get",outcome="ok"}' in body
    assert 'herald_gateway_requests_total{method="ping",outcome="ok"}' in body
    assert 'herald_gateway_request_seconds_count{method="preferences.get"}' in body


async def test_static_files_and_the_browser_client_are_served(
    gateways: tuple[HeraldProcess, HeraldProcess],
) -> None:
    gw = gateways[0]
    plain = (ROOT / "gateway" / "static" / "plain.html").read_bytes()
    demo = ROOT / "clients" / "demo" / "dist"
    status, body = http_get(f"{gw.url}/")
    assert status == 200
    if (demo / "index.html").is_file():  # the React demo, built by .ci/build-clients
        assert body == (demo / "index.html").read_bytes()
        bundle = re.search(rb'src="(/assets/[^"]+[.]js)"', body)
        assert bundle is not None, body
        assert (
            http_get(f"{gw.url}{bundle.group(1).decode()}")[1]
            == (demo / bundle.group(1).decode()[1:]).read_bytes()
        )
    else:  # not built: the plain page stands in
        assert body == plain
    assert http_get(f"{gw.url}/plain.html")[1] == plain
    assert http_get(f"{gw.url}/static/plain.html")[1] == plain
    assert http_get(f"{gw.url}/assets/../../../pyproject.toml")[0] == 404
    client = ROOT / "clients" / "js"
    # Every module of the package (so every import of herald.js resolves from a gateway), byte for byte.
    modules = sorted(
        path.relative_to(client).as_posix() for path in client.glob("**/*.js") if "test" not in path.parts
    )
    assert "lib/client.js" in modules
    for module in modules:
        assert http_get(f"{gw.url}/client/{module}")[1] == (client / module).read_bytes(), module
    assert http_get(f"{gw.url}/client/herald.d.ts")[0] == 200
    assert http_get(f"{gw.url}/client/package.json")[0] == 404  # only the package's own files
    assert http_get(f"{gw.url}/client/test/units.test.mjs")[0] == 404


async def test_dev_tokens_are_minted_only_when_enabled(gw_stack: Stack, responder: Responder) -> None:
    gw = gw_stack.start_gateway(dev_tokens=1)
    try:
        assert "HERALD_DEV_TOKENS=1" in gw.logs()  # the loud warning
        status, body = http_get(f"{gw.url}/dev/token?user=dev-user&admin=1")
        assert status == 200
        minted = orjson.loads(body)
        assert (minted["user_id"], minted["admin"]) == ("dev-user", True)
        ws, params = await open_client(gw, jwt=minted["token"])
        assert params["user_id"] == "dev-user"
        reply = await call(ws, "notifications.unread_count")
        assert reply["result"]["echo"]["admin"] is True
        await ws.close()
        assert http_get(f"{gw.url}/dev/token?user=not%20valid")[0] == 400
        # Only a loopback Host: a page on another name that resolves to 127.0.0.1 (DNS rebinding) or a
        # proxy in front of the gateway gets nothing.
        for host, expected in [
            ("evil.example", 404),
            ("evil.example:80", 404),
            ("127.0.0.1.evil.example", 404),
            (f"localhost:{gw.port}", 200),
            (f"[::1]:{gw.port}", 200),
        ]:
            assert get_with_host(gw.port, "/dev/token?user=u1", host) == expected, host
    finally:
        await asyncio.to_thread(gw.stop)


def get_with_host(port: int, path: str, host: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


async def test_a_worker_that_does_not_answer_in_time_gives_5003(
    gw_stack: Stack, responder: Responder
) -> None:
    gw = gw_stack.start_gateway(rpc_timeout=0.5)
    try:
        ws, _ = await open_client(gw)
        slow = await call(ws, "preferences.get", {"delay": 1.5})
        assert slow["error"]["code"] == 5003
        assert (await call(ws, "preferences.get"))["result"]["echo"]["method"] == "preferences.get"
        await ws.close()
    finally:
        await asyncio.to_thread(gw.stop)


async def connect_all(gateway: HeraldProcess, users: list[str]) -> list[dict[str, Any]]:
    opened = await asyncio.gather(*(open_client(gateway, user) for user in users))
    await asyncio.gather(*(ws.close() for ws, _ in opened))
    return [params for _, params in opened]


def batches_for(responder: Responder, users: list[str]) -> list[list[str]]:
    """The user lists of the ``session.open_many`` requests that named any of ``users``."""
    named = (
        request["params"]["user_ids"]
        for request in responder.seen
        if request["method"] == "session.open_many"
    )
    return [user_ids for user_ids in named if set(user_ids) & set(users)]


def single_opens_for(responder: Responder, users: list[str]) -> list[str]:
    """The users of ``users`` that got a ``session.open`` of their own."""
    return [r["user_id"] for r in responder.seen if r["method"] == "session.open" and r["user_id"] in users]


async def test_concurrent_connects_share_session_open_many_requests(
    gateways: tuple[HeraldProcess, HeraldProcess], responder: Responder
) -> None:
    users = [fresh_id("many") for _ in range(CONNECTS)]
    opened = await connect_all(gateways[0], users)
    assert [(p["user_id"], p["unread_count"], p["last_seq"]) for p in opened] == [
        (user, SESSION_COUNTS["unread_count"], SESSION_COUNTS["last_seq"]) for user in users
    ]
    batches = batches_for(responder, users)
    assert sorted(user for batch in batches for user in batch) == sorted(users)
    assert len(batches) < CONNECTS
    assert max(len(batch) for batch in batches) <= SESSIONS_PER_REQUEST
    assert not single_opens_for(responder, users)


async def test_a_worker_without_session_open_many_answers_each_connect_on_its_own(
    gateways: tuple[HeraldProcess, HeraldProcess], responder: Responder
) -> None:
    users = [fresh_id("one") for _ in range(40)]
    responder.knows_open_many = False
    try:
        opened = await connect_all(gateways[0], users)
    finally:
        responder.knows_open_many = True
    assert all(p["unread_count"] == SESSION_COUNTS["unread_count"] for p in opened)
    assert sorted(single_opens_for(responder, users)) == sorted(users)
