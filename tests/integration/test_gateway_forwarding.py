"""Requests through real gateway processes to a stand-in worker (``herald_ops.testing.gateway.Responder``)
over real RabbitMQ: forwarded with the token's user and answered with the client's id, many in flight on
one connection answered independently, bad frames answered with JSON-RPC errors on a connection that stays
usable, what /healthz, /readyz and /metrics report once a request was served (requests counted by method
and outcome), 5003 for a worker that does not answer in time, and the ``session.open_many`` requests that
concurrent connects share (with the fallback to ``session.open`` for a worker that does not know it).
With the fixtures of ``test_gateway``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from herald_ops.testing.gateway import SESSION_COUNTS, Responder, call, open_client, recv_json
from herald_ops.testing.stack import fresh_id, http_get, mint
from shared.jsonrpc import SESSIONS_PER_REQUEST
from tests.integration import test_gateway

if TYPE_CHECKING:
    from herald_ops.testing.stack import HeraldProcess, Stack

# test_gateway's fixtures, under their names: one stack, a responder for the workers, two gateways.
gw_stack, responder, gateways = test_gateway.gw_stack, test_gateway.responder, test_gateway.gateways


#: Connects at once in the session.open_many test.
CONNECTS = 150


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
        # Nor is a notification the gateway refuses: not even with an error.
        for refused in (
            '{"jsonrpc": "2.0", "method": "no.such"}',
            '{"jsonrpc": "2.0", "method": "ping", "params": [1]}',
        ):
            await ws.send(refused)
        await ws.send('{"jsonrpc": "2.0", "id": "after", "method": "ping"}')
        reply = await recv_json(ws)  # the first frame back: an error for a notification would come first
        assert (reply.get("id"), reply.get("result")) == ("after", "pong"), reply
    finally:
        await ws.close()


async def test_http_surface(gateways: tuple[HeraldProcess, HeraldProcess]) -> None:
    gw = gateways[0]
    ws, _ = await open_client(gw)  # a forwarded request of its own: the request series appear with it
    try:
        await call(ws, "preferences.get")
    finally:
        await ws.close()
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
