"""Unit tests of the HTTP API's sans-I/O parts: params from requests, replies to HTTP, ETags, per-user
buckets, the route table and the generated OpenAPI document."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from openapi_spec_validator import validate

from gateway.api.app import OPENAPI_PATH, HttpApi
from gateway.api.routes import ROUTES, Source
from gateway.api.translate import ApiError, answer, etag_of, matches, params_for, status_of
from gateway.auth import bearer_token
from gateway.limits import KeyedBuckets, KeyedSlots
from herald_ops import openapi
from herald_ops.testing.stack import TEST_JWT_SECRET, mint
from shared.jsonrpc import ErrorCode, rpc_error, rpc_request, rpc_result
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROUTE_BY_KEY = {(route.verb, route.path): route for route in ROUTES}
LIST = ROUTE_BY_KEY["GET", "/api/notifications/realtime"]
MARK_ONE = ROUTE_BY_KEY["PATCH", "/api/notifications/realtime/{id}/read"]
MARK_ALL_SEEN = ROUTE_BY_KEY["POST", "/api/notifications/realtime/mark-all-seen"]
ACT = ROUTE_BY_KEY["POST", "/api/notifications/realtime/{id}/actions/{action_id}"]
BROADCAST = ROUTE_BY_KEY["POST", "/api/notifications/realtime/broadcast"]
PREFERENCES = ROUTE_BY_KEY["PUT", "/api/notifications/preferences"]
DELIVERIES = ROUTE_BY_KEY["GET", "/api/notifications/deliveries"]


def refused(route: Any, query: list[tuple[str, str]] = (), body: bytes = b"") -> ApiError:  # type: ignore[assignment]
    with pytest.raises(ApiError) as caught:
        params_for(route, {}, query, body)
    return caught.value


class TestParams:
    def test_list_query_is_converted_for_the_strict_worker_models(self) -> None:
        query = [("page", "2"), ("limit", "5"), ("unreadOnly", "true"), ("types", "A,B"), ("types", "C")]
        assert params_for(LIST, {}, query, b"") == {
            "page": 2,
            "limit": 5,
            "unread_only": True,
            "types": ["A", "B", "C"],
        }

    def test_the_seeds_defaults_apply_unless_a_cursor_is_given(self) -> None:
        assert params_for(LIST, {}, [], b"") == {"page": 1, "limit": 20}
        assert params_for(LIST, {}, [("before", "9")], b"") == {"before": 9, "limit": 20}

    def test_archived_all_means_null(self) -> None:
        assert params_for(LIST, {}, [("archived", "all")], b"")["archived"] is None
        assert params_for(LIST, {}, [("archived", "false")], b"")["archived"] is False

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ([("limit", "x")], "limit"),
            ([("limit", "1"), ("limit", "2")], "limit"),
            ([("unreadOnly", "perhaps")], "unreadOnly"),
            ([("unread_only", "true"), ("unreadOnly", "true")], "unreadOnly"),
            ([("page", str(2**64))], "page"),
            ([("colour", "red")], "colour"),
        ],
    )
    def test_unconvertible_or_unknown_members_are_400_naming_them(
        self, query: list[tuple[str, str]], field: str
    ) -> None:
        error = refused(LIST, query)
        assert (error.status, error.code, error.data) == (400, ErrorCode.INVALID_PARAMS, field)

    def test_path_sources(self) -> None:
        assert params_for(MARK_ONE, {"id": "n-1"}, [], b"") == {"ids": ["n-1"]}
        assert params_for(ACT, {"id": "n-1", "action_id": "ok"}, [], b"") == {"id": "n-1", "action_id": "ok"}
        assert params_for(MARK_ALL_SEEN, {}, [], b"") == {"all": True}

    def test_a_body_is_the_params_untouched_and_must_be_json(self) -> None:
        assert params_for(BROADCAST, {}, [], b'{"title": "t", "x": [1]}') == {"title": "t", "x": [1]}
        assert params_for(BROADCAST, {}, [], b"  ") == {}
        error = refused(BROADCAST, body=b"{nope")
        assert (error.status, error.code, error.data) == (400, ErrorCode.PARSE_ERROR, "body")

    @pytest.mark.parametrize(
        "body",
        [b"[" * 300 + b"]" * 300, b'{"a":' * 254 + b"1" + b"}" * 254, b"[]", b"[1]", b"1", b'"x"', b"null"],
        ids=["deep-array", "254-levels", "empty-array", "array", "number", "string", "null"],
    )
    def test_a_body_that_is_not_a_forwardable_object_is_400_naming_it(self, body: bytes) -> None:
        error = refused(PREFERENCES, body=body)
        assert (error.status, error.code, error.data) == (400, ErrorCode.INVALID_PARAMS, "body")

    def test_a_body_253_levels_deep_can_be_forwarded(self) -> None:
        params = params_for(PREFERENCES, {}, [], b'{"a":' * 253 + b"1" + b"}" * 253)
        assert rpc_request(PREFERENCES.method, params, "u1", False)

    def test_the_deliveries_cursor_is_passed_as_the_opaque_string_it_is(self) -> None:
        assert params_for(DELIVERIES, {}, [("before", "WyIyMDI2Il0"), ("limit", "5")], b"") == {
            "before": "WyIyMDI2Il0",
            "limit": 5,
        }
        assert params_for(DELIVERIES, {}, [("before", "12")], b"") == {"before": "12"}


class TestAnswer:
    def test_list_result_gets_the_seed_page_beside_the_cursor(self) -> None:
        reply = rpc_result(
            {"items": [{"seq": 3}], "next_cursor": 3, "total": 45, "unread_count": 7, "unseen_count": 5}
        )
        status, body = answer(LIST, {"page": 2, "limit": 20}, reply)
        assert status == 200
        assert orjson.loads(body) == {
            "data": [{"seq": 3}],
            "total": 45,
            "page": 2,
            "limit": 20,
            "totalPages": 3,
            "next_cursor": 3,
            "unread_count": 7,
            "unseen_count": 5,
        }

    @pytest.mark.parametrize(
        ("code", "status"),
        [
            (ErrorCode.INVALID_PARAMS, 400),
            (ErrorCode.INVALID_REQUEST, 400),
            (ErrorCode.FORBIDDEN, 403),
            (ErrorCode.RATE_LIMITED, 429),
            (ErrorCode.UNAVAILABLE, 503),
            (ErrorCode.INTERNAL_ERROR, 500),
            (ErrorCode.METHOD_NOT_FOUND, 501),
            (4401, 401),
            (12345, 500),
        ],
    )
    def test_error_codes_map_to_statuses(self, code: int, status: int) -> None:
        assert status_of(code) == status
        got_status, body = answer(MARK_ONE, {}, rpc_error(code, "why", "field"))
        assert got_status == status
        assert orjson.loads(body)["error"]["code"] == code

    def test_an_unknown_method_says_which_is_not_served(self) -> None:
        _, body = answer(MARK_ALL_SEEN, {}, rpc_error(ErrorCode.METHOD_NOT_FOUND, "method not found"))
        assert "notifications.mark_seen" in orjson.loads(body)["error"]["message"]

    def test_an_unreadable_reply_is_an_internal_error(self) -> None:
        with pytest.raises(ApiError) as caught:
            answer(MARK_ONE, {}, b"[1, 2]")
        assert caught.value.status == 500


class TestETag:
    def test_same_body_same_tag_and_weak_comparison(self) -> None:
        tag = etag_of(b'{"count":1}')
        assert tag == etag_of(b'{"count":1}') != etag_of(b'{"count":2}')
        assert matches(tag, tag)
        assert matches(f'"other", W/{tag}', tag)
        assert matches("*", tag)
        assert not matches(None, tag)
        assert not matches('"other"', tag)


class TestKeyedBuckets:
    def test_each_key_has_its_own_burst(self) -> None:
        buckets = KeyedBuckets(rate=1.0, burst=2, max_keys=10)
        assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]
        assert buckets.take("b", 0.0)
        assert buckets.take("a", 1.0)  # refilled one token

    def test_the_map_is_bounded_forgetting_the_least_recently_seen(self) -> None:
        buckets = KeyedBuckets(rate=0.001, burst=1, max_keys=2)
        assert buckets.take("a", 0.0)
        assert buckets.take("b", 0.0)
        assert not buckets.take("a", 0.0)  # "a" is now the most recent
        assert buckets.take("c", 0.0)  # evicts "b"
        assert len(buckets) == 2
        assert buckets.take("b", 0.0)  # "b" was forgotten: a full burst again


class TestKeyedSlots:
    def test_each_key_has_its_own_cap_and_gets_its_slots_back(self) -> None:
        slots = KeyedSlots(cap=2)
        assert [slots.take("a") for _ in range(3)] == [True, True, False]
        assert slots.take("b")
        slots.release("a")
        assert slots.take("a")
        assert not slots.take("a")

    def test_only_keys_with_requests_in_flight_are_remembered(self) -> None:
        slots = KeyedSlots(cap=3)
        for key in ("a", "a", "b"):
            assert slots.take(key)
        assert len(slots) == 2
        slots.release("b")
        slots.release("a")
        assert len(slots) == 1
        slots.release("a")
        assert len(slots) == 0


def test_bearer_token() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) == ""
    assert bearer_token({}) is None


def test_routes_are_unique_and_their_sources_fit_their_paths() -> None:
    assert len({(route.verb, route.path) for route in ROUTES}) == len(ROUTES)
    for route in ROUTES:
        assert ("{id}" in route.path) == (route.source in (Source.PATH_ID, Source.PATH_ACTION)), route
        assert bool(route.query) == (route.source is Source.QUERY), route


def test_the_shipped_openapi_document_is_valid_31_and_current() -> None:
    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert OPENAPI_PATH.read_text(encoding="utf-8") == openapi.render()
    listed = document["paths"]["/api/notifications/realtime"]["get"]
    assert {p["name"] for p in listed["parameters"]} >= {"page", "limit", "unread_only", "before"}


def test_page_size_descriptions_say_the_bounds_and_default_of_their_schema() -> None:
    """A description's "page size (1–N, default D)" is prose written by hand beside the generated schema;
    each says what that schema enforces (deliveries.list once said 100 and 20 for 200 and 50)."""
    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    described = [
        (parameter["schema"], re.fullmatch(r"page size \(1–(\d+), default (\d+)\)", parameter["description"]))
        for path in document["paths"].values()
        for operation in path.values()
        for parameter in operation.get("parameters", [])
        if parameter.get("description", "").startswith("page size")
    ]
    assert len(described) >= 2
    for schema, stated in described:
        assert stated is not None
        assert (schema["maximum"], schema["default"]) == (int(stated[1]), int(stated[2]))


class TestApplication:
    """The Starlette application in-process (httpx's ASGI transport, no lifespan: no broker link)."""

    @pytest.fixture
    def api(self) -> HttpApi:
        return HttpApi(Settings(_env_file=None, jwt_secret=TEST_JWT_SECRET))  # type: ignore[call-arg]

    @pytest.fixture
    async def client(self, api: HttpApi) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client

    async def test_without_a_broker_link_requests_are_503_and_not_ready(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get(LIST.path, headers={"Authorization": f"Bearer {mint('u1')}"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == ErrorCode.UNAVAILABLE
        assert response.headers["Cache-Control"] == "no-store"
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200

    async def test_the_token_is_checked_before_anything_else(self, client: httpx.AsyncClient) -> None:
        assert (await client.get(LIST.path)).status_code == 401
        assert (await client.get(LIST.path, params={"limit": "x"})).status_code == 401

    async def test_a_bug_is_a_json_500_and_counted(
        self, api: HttpApi, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(*args: Any) -> Any:
            raise ZeroDivisionError

        monkeypatch.setattr("gateway.api.app.params_for", broken)
        response = await client.get(LIST.path, headers={"Authorization": f"Bearer {mint('u1')}"})
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": ErrorCode.INTERNAL_ERROR, "message": "internal error", "data": None}
        }
        counted = {"method": LIST.method, "status": "500"}
        assert api.metrics.registry.get_sample_value("herald_api_requests_total", counted) == 1

    async def test_the_openapi_document_is_the_shipped_file(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/api/openapi.json")).content == OPENAPI_PATH.read_bytes()
