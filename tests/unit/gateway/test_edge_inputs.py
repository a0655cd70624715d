"""Inputs at the edge of both doors (the gateway's handshake and herald-api) that once escaped as a 500 or
were judged differently by each: an ``exp`` after year 9999, a repeated ``Authorization``, an allowed
origin spelled with capitals or a trailing slash, a body past orjson's depth limit, a client gone before
its body arrived, and a bug, which must still be counted."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from starlette.datastructures import Headers as StarletteHeaders
from websockets.datastructures import Headers as WebSocketHeaders

from gateway.api.app import HttpApi
from gateway.api.routes import ROUTES
from gateway.api.translate import ApiError, params_for
from gateway.auth import TokenVerifier, bearer_token, rfc3339
from gateway.errors import AuthError
from gateway.http import origin_allowed
from herald_ops.testing.stack import TEST_JWT_SECRET, mint
from shared.jsonrpc import ErrorCode
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Message

#: 9999-12-31T23:59:59Z, the last instant RFC 3339 (and ``datetime``) can write.
LAST_WRITABLE = 253_402_300_799
PREFERENCES = next(route for route in ROUTES if route.method == "preferences.update")
LIST = next(route for route in ROUTES if route.method == "notifications.list")


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, jwt_secret=TEST_JWT_SECRET, **values)  # type: ignore[call-arg]


VERIFIER = TokenVerifier(settings())


def verified_expiry(exp: Any) -> str:
    """The ``expires_at`` an ``auth`` reply would carry for a token with this ``exp``, or the refusal."""
    token = jwt.encode({"sub": "u1", "exp": exp}, TEST_JWT_SECRET, algorithm="HS256")
    try:
        return rfc3339(asyncio.run(VERIFIER.verify(token)).expires_at)
    except AuthError as refused:
        return f"refused: {refused}"


AFTER_9999 = "refused: token exp is after the year 9999"


@pytest.mark.parametrize(
    ("exp", "verdict"),
    [
        pytest.param(int(time.time() * 1000) + 600_000, AFTER_9999, id="milliseconds"),
        pytest.param(LAST_WRITABLE + 1, AFTER_9999, id="year 10000"),
        pytest.param(1e300, AFTER_9999, id="float 1e300"),
        # PyJWT takes any integer; float() of this one overflows.
        pytest.param(10**400, "refused: token exp is not a number", id="past the float range"),
    ],
)
def test_an_exp_after_year_9999_is_refused_like_any_invalid_token(exp: Any, verdict: str) -> None:
    assert verified_expiry(exp) == verdict


def test_the_last_writable_exp_is_accepted() -> None:
    assert verified_expiry(LAST_WRITABLE) == "9999-12-31T23:59:59Z"


REPEATED_AUTHORIZATION = [("Authorization", f"Bearer {mint('u1')}"), ("Authorization", "Bearer other")]


@pytest.mark.parametrize(
    "headers",
    [
        WebSocketHeaders(REPEATED_AUTHORIZATION),
        StarletteHeaders(raw=[(k.lower().encode(), v.encode()) for k, v in REPEATED_AUTHORIZATION]),
    ],
    ids=["websockets", "starlette"],
)
def test_a_repeated_authorization_is_refused_by_both_edges(headers: Any) -> None:
    """websockets' ``get`` raised ``MultipleValuesError`` (a 500) and Starlette's took the first value."""
    with pytest.raises(AuthError, match="Authorization header given more than once"):
        bearer_token(headers)


def test_a_body_past_orjsons_depth_limit_is_refused_as_too_deep_not_as_not_json() -> None:
    """orjson refuses over 1024 levels itself; §11 answers anything over 253 with -32602 naming the body."""
    for body in (b"[" * 1100 + b"]" * 1100, b'{"a":' * 1100 + b"1" + b"}" * 1100):
        with pytest.raises(ApiError) as refused:
            params_for(PREFERENCES, {}, [], body)
        assert (refused.value.code, refused.value.data) == (ErrorCode.INVALID_PARAMS, "body")
        assert refused.value.status == 400


class TestApplication:
    """herald-api in-process (no lifespan: no broker link, so a request that gets through is a 503)."""

    @pytest.fixture
    def api(self) -> HttpApi:
        return HttpApi(settings(allowed_origins="https://App.Example/, http://localhost:5173/"))

    @pytest.fixture
    async def client(self, api: HttpApi) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client

    async def test_a_repeated_authorization_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get(LIST.path, headers=REPEATED_AUTHORIZATION)
        assert response.status_code == 401
        assert response.json()["error"]["message"] == (
            "unauthorized: Authorization header given more than once"
        )

    async def test_an_allowed_origin_is_allowed_as_browsers_spell_it_on_both_edges(
        self, api: HttpApi, client: httpx.AsyncClient
    ) -> None:
        for browser in ("https://app.example", "http://localhost:5173"):
            preflight = {"Origin": browser, "Access-Control-Request-Method": "PUT"}
            response = await client.options(PREFERENCES.path, headers=preflight)
            assert response.status_code == 200, (browser, response.text)
            assert response.headers["Access-Control-Allow-Origin"] == browser
            assert origin_allowed(browser, "gateway.example", api.settings.allowed_origins)

    async def test_a_client_gone_before_its_body_is_a_quiet_499(self, api: HttpApi) -> None:
        """Starlette raises ClientDisconnect; it must not escape the application (uvicorn would log it as
        "Exception in ASGI application", after the API's own error log) and must be counted."""
        await call_with_partial_body(api, mint("u1"))
        assert sample(api, PREFERENCES.method, "499") == 1
        assert api.metrics.registry.get_sample_value(
            "herald_api_request_seconds_count", {"method": PREFERENCES.method}
        )


def sample(api: HttpApi, method: str, status: str) -> float | None:
    return api.metrics.registry.get_sample_value(
        "herald_api_requests_total", {"method": method, "status": status}
    )


async def call_with_partial_body(api: HttpApi, token: str) -> None:
    """One ``PUT`` that declares 100 bytes of body, sends 5 and disconnects (what uvicorn passes on)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": PREFERENCES.path,
        "raw_path": PREFERENCES.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"api"),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("api", 80),
    }
    incoming: list[Message] = [{"type": "http.request", "body": b'{"a":', "more_body": True}]

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass  # the client is gone: uvicorn drops what is sent to it

    await api.app(scope, receive, send)
