"""``herald-api``'s HTTP surface end to end: what it refuses and how, every route, CORS and OpenAPI.

Against the same kind of stack as ``test_api`` (its ``env`` and ``http`` fixtures, a stack of this
module's own): a missing, repeated, expired or badly signed token is 401; bad queries and bodies (not
JSON, nested too deep, not an object, unknown or ill-typed members) are 400 naming the field; unknown
paths and verbs get JSON 404 / 405; a body over the limit is 413; a client gone before its body arrived
is counted as 499 and logs no error; every route in ``gateway.api.routes.ROUTES`` answers (501 where no
worker serves its method); CORS follows the allowed origins; the OpenAPI document is served.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from gateway.api.routes import ROUTES
from herald_ops.testing.gateway import metric
from herald_ops.testing.stack import fresh_id, mint, wait_until
from tests.integration.test_api import INBOX, ORIGIN, auth, env, error_of, http
from worker.requests.registry import METHODS

if TYPE_CHECKING:
    import httpx

    from tests.integration.test_api import Env

pytestmark = pytest.mark.timeout(120)
__all__ = ["env", "http"]  # fixtures shared with test_api (this module gets a stack of its own)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Bearer {mint('u-expired', ttl=-30)}"},
        {"Authorization": f"Bearer {mint('u-forged', secret='another-secret-that-is-long-enough-0123')}"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": f"Bearer {mint('u-ms', exp=int(time.time() * 1000))}"},
        [("Authorization", f"Bearer {mint('u-twice')}"), ("Authorization", "Bearer other")],
    ],
    ids=["missing", "empty", "other-scheme", "expired", "badly-signed", "malformed", "exp-in-ms", "repeated"],
)
async def test_a_missing_expired_or_badly_signed_token_is_401(
    http: httpx.AsyncClient, headers: dict[str, str] | list[tuple[str, str]]
) -> None:
    for path in (INBOX, f"{INBOX}/unread-count", "/api/notifications/preferences"):
        error = error_of(await http.get(path, headers=headers), 401)
        assert error["code"] == 4401
        assert error["message"].startswith("unauthorized: ")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "twenty"}, "limit"),
        ({"page": "0"}, "page"),
        ({"unreadOnly": "maybe"}, "unreadOnly"),
        ({"types": "NOT_A_TYPE"}, "types.0"),
        ({"sort": "asc"}, "sort"),
        ({"page": "2", "before": "10"}, "page"),
    ],
)
async def test_bad_query_is_400_naming_the_field(
    http: httpx.AsyncClient, query: dict[str, str], field: str
) -> None:
    error = error_of(await http.get(INBOX, params=query, headers=auth(fresh_id())), 400)
    assert (error["code"], error["data"]) == (-32602, field)


async def test_bad_bodies_are_400_naming_the_field(http: httpx.AsyncClient) -> None:
    headers = {**auth(fresh_id()), "Content-Type": "application/json"}
    preferences = "/api/notifications/preferences"
    cases = [
        (await http.put(preferences, content=b"{not json", headers=headers), -32700, "body"),
        (
            await http.put(preferences, json={"securityAlert": False}, headers=headers),
            -32602,
            "securityAlert",
        ),
        (
            await http.put(preferences, json={"newCourseContent": "no"}, headers=headers),
            -32602,
            "newCourseContent",
        ),
        (
            await http.put(
                preferences, json={"types": {"SECURITY_ALERT": {"email": False}}}, headers=headers
            ),
            -32602,
            "types.SECURITY_ALERT.email",
        ),
        (await http.post(f"{INBOX}/read", json={"ids": "x"}, headers=headers), -32602, "ids"),
        (await http.post(f"{INBOX}/read", json={"ids": ["x"] * 501}, headers=headers), -32602, "ids"),
    ]
    for response, code, field in cases:
        error = error_of(response, 400)
        assert (error["code"], error["data"]) == (code, field), error


async def test_a_body_nested_too_deep_or_not_an_object_is_400_naming_the_body(
    http: httpx.AsyncClient,
) -> None:
    """The WebSocket rule (params nested at most 253 levels, what can be forwarded) and §11's "bodies are
    JSON objects", both refused where the body enters, never a 500."""
    headers = {**auth(fresh_id()), "Content-Type": "application/json"}
    preferences = "/api/notifications/preferences"

    def nested(levels: int) -> bytes:
        return b'{"a":' * levels + b"1" + b"}" * levels

    # Past 1024 levels orjson itself refuses to read the body; that is the same answer, not -32700.
    deep = (b"[" * 300 + b"]" * 300, nested(254), b"[" * 1100 + b"]" * 1100, nested(1100))
    for body in (*deep, b"[]", b'["ids"]', b"1", b'"text"', b"null", b"true"):
        for response in (
            await http.put(preferences, content=body, headers=headers),
            await http.post(f"{INBOX}/read", content=body, headers=headers),
        ):
            error = error_of(response, 400)
            assert (error["code"], error["data"]) == (-32602, "body"), (body[:20], error)
    # 253 levels can be forwarded: the worker answers, refusing the member it does not know.
    error = error_of(await http.put(preferences, content=nested(253), headers=headers), 400)
    assert (error["code"], error["data"]) == (-32602, "a")


async def test_a_client_gone_before_its_body_arrived_is_counted_499_and_logs_no_error(env: Env) -> None:
    """Starlette raises ClientDisconnect from the body's stream: once logged twice as an error (the API's
    and uvicorn's "Exception in ASGI application") and never counted."""
    series = 'herald_api_requests_total{method="preferences.update",status="499"}'
    before = metric(env.api, series)
    _, writer = await asyncio.open_connection("127.0.0.1", env.api.port)
    head = (
        f"PUT /api/notifications/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {mint(fresh_id())}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 100\r\n\r\n"
    )
    writer.write(head.encode() + b'{"a":')  # 5 of the 100 bytes declared
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: metric(env.api, series) == before + 1, 15, "the disconnect to be counted")
    logs = env.api.logs()
    assert "Exception in ASGI application" not in logs
    assert "api_failed" not in logs


async def test_every_route_is_served_or_clearly_not_implemented(http: httpx.AsyncClient) -> None:
    """Every route answers (200, or 400 for the made-up ids in the paths); one whose method a worker
    lacks would answer 501, never 404 or 500."""
    admin = auth("ops", admin=True)
    for route in ROUTES:
        path = route.path.replace("{id}", "n-1").replace("{action_id}", "a-1")
        response = await http.request(route.verb, path, headers=admin)
        if route.method in METHODS:
            assert response.status_code in (200, 400), (route, response.text)
        else:
            error = error_of(response, 501)
            assert error["code"] == -32601
            assert route.method in error["message"]


async def test_unknown_paths_and_verbs_get_json_errors(http: httpx.AsyncClient) -> None:
    error_of(await http.get("/api/notifications/nothing-here", headers=auth(fresh_id())), 404)
    error_of(await http.put(f"{INBOX}/unread-count", headers=auth(fresh_id())), 405)


async def test_a_body_over_the_limit_is_413_before_it_is_read(http: httpx.AsyncClient) -> None:
    big = b'{"ids": ["' + b"x" * (70 * 1024) + b'"]}'
    response = await http.post(f"{INBOX}/read", content=big, headers=auth(fresh_id()))
    assert error_of(response, 413)["data"] == "body"


async def test_cors_follows_allowed_origins(http: httpx.AsyncClient) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"}
    allowed = await http.options(f"{INBOX}/n-1/read", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = await http.options(f"{INBOX}/n-1/read", headers={**preflight, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    simple = await http.get(f"{INBOX}/unread-count", headers={**auth(fresh_id()), "Origin": ORIGIN})
    assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "ETag" in simple.headers["Access-Control-Expose-Headers"]


async def test_openapi_document_is_served(http: httpx.AsyncClient) -> None:
    document = (await http.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert {route.path for route in ROUTES} <= set(document["paths"])
