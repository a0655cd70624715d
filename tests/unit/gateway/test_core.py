"""Unit tests of the gateway's sans-I/O core: no sockets, no broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.auth import AuthState, Claims, claims_from_payload, handshake_token, rfc3339
from gateway.errors import AuthError, FrameError, GatewayError, RpcTimeout, RpcUnavailable, SubjectMismatch
from gateway.http import origin_allowed, resolve_static
from gateway.hub import InAppFilter
from gateway.limits import TokenBucket, admission_close_code, lagging
from gateway.protocol import FORWARDED, MAX_ID_CHARS, forward_body, parse_request
from gateway.rpc import RpcClient
from gateway.timers import DeadlineQueue
from herald_ops.testing.stack import wait_until
from shared.jsonrpc import CloseCode, ErrorCode, splice_reply

if TYPE_CHECKING:
    from pathlib import Path


def frame(**members: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **members})


class TestParseRequest:
    def test_valid_request(self) -> None:
        request = parse_request(frame(id=7, method="notifications.list", params={"limit": 5}))
        assert (request.id, request.method, request.params, request.is_notification) == (
            7,
            "notifications.list",
            {"limit": 5},
            False,
        )

    def test_params_default_to_an_empty_object_and_a_missing_id_is_a_notification(self) -> None:
        request = parse_request(frame(method="ping"))
        assert request.params == {}
        assert request.is_notification

    def test_a_refused_notification_is_not_answered_and_a_refused_request_is(self) -> None:
        with pytest.raises(FrameError) as notification:
            parse_request(frame(method="no.such"))
        assert not notification.value.answered
        with pytest.raises(FrameError) as request:
            parse_request(frame(id=None, method="no.such"))
        assert request.value.answered

    def test_null_id_is_a_request_not_a_notification(self) -> None:
        request = parse_request(frame(id=None, method="ping"))
        assert request.id is None
        assert not request.is_notification

    @pytest.mark.parametrize(
        ("raw", "code", "request_id", "data"),
        [
            (b"{", ErrorCode.PARSE_ERROR, None, None),
            (b"\xff\xfe", ErrorCode.PARSE_ERROR, None, None),
            (b"[]", ErrorCode.INVALID_REQUEST, None, None),
            (b"42", ErrorCode.INVALID_REQUEST, None, None),
            (frame(id=1), ErrorCode.INVALID_REQUEST, 1, "method"),
            (frame(id=1, method=5), ErrorCode.INVALID_REQUEST, 1, "method"),
            (orjson.dumps({"id": 1, "method": "ping"}), ErrorCode.INVALID_REQUEST, 1, "jsonrpc"),
            (frame(id="a", method="nope"), ErrorCode.METHOD_NOT_FOUND, "a", None),
            (frame(id="a", method="session.open"), ErrorCode.METHOD_NOT_FOUND, "a", None),
            (frame(id=2, method="ping", params=[1]), ErrorCode.INVALID_PARAMS, 2, "params"),
            (frame(id=2, method="ping", params="x"), ErrorCode.INVALID_PARAMS, 2, "params"),
            (frame(id=3, method="auth", params={}), ErrorCode.INVALID_PARAMS, 3, "token"),
            (frame(id=3, method="auth.refresh", params={"token": 1}), ErrorCode.INVALID_PARAMS, 3, "token"),
            (frame(id=3, method="auth.refresh", params={"token": ""}), ErrorCode.INVALID_PARAMS, 3, "token"),
            (frame(id="x" * (MAX_ID_CHARS + 1), method="ping"), ErrorCode.INVALID_REQUEST, None, "id"),
            (frame(id=2**53 + 1, method="ping"), ErrorCode.INVALID_REQUEST, None, "id"),
            (frame(id=1.5, method="ping"), ErrorCode.INVALID_REQUEST, None, "id"),
            (frame(id=True, method="ping"), ErrorCode.INVALID_REQUEST, None, "id"),
            (frame(id=[1], method="ping"), ErrorCode.INVALID_REQUEST, None, "id"),
        ],
    )
    def test_invalid_frames(self, raw: bytes, code: int, request_id: Any, data: Any) -> None:
        with pytest.raises(FrameError) as refused:
            parse_request(raw)
        assert (refused.value.code, refused.value.request_id, refused.value.data) == (code, request_id, data)

    def test_boundary_ids_are_accepted(self) -> None:
        assert parse_request(frame(id="x" * MAX_ID_CHARS, method="ping")).id == "x" * MAX_ID_CHARS
        assert parse_request(frame(id=-(2**53), method="ping")).id == -(2**53)

    @given(st.binary(max_size=512))
    def test_arbitrary_bytes_never_raise_anything_but_frame_error(self, raw: bytes) -> None:
        with contextlib.suppress(FrameError):
            parse_request(raw)

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )

    @given(
        st.dictionaries(
            st.sampled_from(["jsonrpc", "id", "method", "params", "extra"]) | st.text(max_size=5),
            json_values | st.sampled_from(["2.0", "ping", "auth", "notifications.list"]),
            max_size=5,
        )
    )
    def test_arbitrary_objects_never_raise_anything_but_frame_error(self, document: dict[str, Any]) -> None:
        try:
            # The standard library serializes integers of any size, as a client might send them.
            request = parse_request(json.dumps(document))
        except FrameError as refused:
            orjson.dumps(refused.request_id)  # whatever id is echoed must serialize
        else:
            assert isinstance(request.params, dict)

    def test_forward_body_follows_the_contract(self) -> None:
        request = parse_request(frame(id=1, method="notifications.mark_read", params={"ids": ["a"]}))
        assert orjson.loads(forward_body(request, "u1", False)) == {
            "method": "notifications.mark_read",
            "params": {"ids": ["a"]},
            "user_id": "u1",
            "admin": False,
        }

    @given(
        st.integers(min_value=1, max_value=600),
        st.sampled_from(['{"a":', "["]),
        st.text(max_size=20),
        st.sampled_from(sorted(FORWARDED)),
    )
    # Parses to 254 levels, which orjson writes, but the forwarded body holds them one level deeper.
    @example(253, '{"a":', "", "deliveries.list")
    def test_any_nesting_depth_and_unicode_is_a_request_that_can_be_forwarded_or_a_frame_error(
        self, depth: int, opener: str, leaf: str, method: str
    ) -> None:
        closer = "}" if opener.startswith("{") else "]"
        params = '{"p":' + opener * depth + json.dumps(leaf) + closer * depth + "}"
        raw = f'{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}'
        try:
            request = parse_request(raw)
        except FrameError as refused:
            code = refused.code
        else:
            forward_body(request, "u1", False)  # whatever parses can be forwarded
            code = 0
        assert code in (0, -32700, -32602)

    def test_params_nested_300_deep_are_invalid_params_not_a_type_error(self) -> None:
        nested: Any = {}
        for _ in range(300):
            nested = {"a": nested}
        with pytest.raises(FrameError) as refused:
            # The standard library writes what orjson (limit 254 levels) refuses to.
            parse_request(
                json.dumps({"jsonrpc": "2.0", "id": 7, "method": "notifications.list", "params": nested})
            )
        assert (refused.value.code, refused.value.data, refused.value.request_id) == (-32602, "params", 7)

    def test_params_nested_past_orjsons_own_limit_are_invalid_params_not_a_parse_error(self) -> None:
        # orjson stops reading at 1024 levels: the id cannot be read, but the depth is still the reason.
        frame = (
            '{"jsonrpc": "2.0", "id": 7, "method": "notifications.list", "params": '
            + "[" * 1100
            + "]" * 1100
            + "}"
        )
        with pytest.raises(FrameError) as refused:
            parse_request(frame)
        assert (refused.value.code, refused.value.data, refused.value.request_id) == (-32602, "params", None)

    def test_every_forwarded_method_parses(self) -> None:
        for method in FORWARDED:
            assert parse_request(frame(id=1, method=method)).method == method


def test_splice_reply_puts_the_client_id_in_front_of_the_worker_reply() -> None:
    spliced = splice_reply("req-1", b'{"result":{"count":3}}')
    assert orjson.loads(spliced) == {"jsonrpc": "2.0", "id": "req-1", "result": {"count": 3}}


class TestTokenBucket:
    def test_burst_then_refill_at_rate(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
        assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
        assert not bucket.take(0.4)
        assert bucket.take(0.5)  # one token per 0.5 s
        assert not bucket.take(0.5)

    def test_refill_is_capped_at_burst(self) -> None:
        bucket = TokenBucket(rate=100.0, burst=2, now=0.0)
        assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]

    def test_time_going_backwards_does_not_mint_tokens(self) -> None:
        bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
        assert bucket.take(10.0)
        assert not bucket.take(5.0)


def test_admission_and_lagging_decisions() -> None:
    assert admission_close_code(1, 2) is None
    assert admission_close_code(2, 2) is CloseCode.TOO_MANY_CONNECTIONS
    assert not lagging(1024, 1024)
    assert lagging(1025, 1024)


class TestAuthState:
    def test_pending_then_authenticated_then_expired(self) -> None:
        state = AuthState()
        assert not state.authenticated
        assert not state.expired(1e12)
        state.authenticate(Claims("u1", 100.0, False))
        assert state.authenticated
        assert not state.expired(99.9)
        assert state.expired(100.0)

    def test_refresh_same_user_extends_and_updates_roles(self) -> None:
        state = AuthState(Claims("u1", 100.0, False))
        state.refresh(Claims("u1", 200.0, True))
        assert not state.expired(150.0)
        assert state.claims == Claims("u1", 200.0, True)

    def test_refresh_for_another_user_is_refused_and_changes_nothing(self) -> None:
        state = AuthState(Claims("u1", 100.0, False))
        with pytest.raises(SubjectMismatch):
            state.refresh(Claims("u2", 200.0, True))
        assert state.claims == Claims("u1", 100.0, False)

    def test_second_auth_is_a_caller_error(self) -> None:
        state = AuthState(Claims("u1", 100.0, False))
        with pytest.raises(RuntimeError):
            state.authenticate(Claims("u1", 200.0, False))


class TestClaims:
    def test_roles_admin(self) -> None:
        assert claims_from_payload({"sub": "u1", "exp": 5, "roles": ["reader", "admin"]}).admin
        assert not claims_from_payload({"sub": "u1", "exp": 5, "roles": "admin"}).admin
        assert not claims_from_payload({"sub": "u1", "exp": 5}).admin

    @pytest.mark.parametrize("sub", ["", "a b", "x" * 129, "a/b", 5, None])
    def test_sub_must_be_a_user_id(self, sub: Any) -> None:
        with pytest.raises(AuthError):
            claims_from_payload({"sub": sub, "exp": 5})

    def test_exception_tree(self) -> None:
        assert issubclass(SubjectMismatch, AuthError)
        assert issubclass(AuthError, GatewayError)
        assert issubclass(FrameError, GatewayError)


def test_handshake_token_sources() -> None:
    assert handshake_token({"Authorization": "Bearer abc"}, "token=zzz") == "abc"
    assert handshake_token({"Authorization": "Basic abc"}, "") == ""  # present but unusable → refused
    assert handshake_token({}, "a=1&token=xyz") == "xyz"
    assert handshake_token({}, "token=") == ""
    assert handshake_token({}, "a=1") is None


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(time.time()).endswith("Z")


class TestOrigin:
    def test_no_origin_is_allowed(self) -> None:
        assert origin_allowed(None, "gw:8765", None)

    def test_same_origin_is_allowed_when_unset(self) -> None:
        assert origin_allowed("http://gw:8765", "gw:8765", None)
        assert not origin_allowed("http://evil:8765", "gw:8765", None)

    def test_an_origin_that_is_no_url_is_refused_not_raised(self) -> None:
        assert not origin_allowed("http://[", "gw:8765", None)
        assert not origin_allowed("http://[::1", "gw:8765", ("https://app.example",))

    def test_listed_origins_and_star(self) -> None:
        allowed = ("https://app.example",)
        assert origin_allowed("https://app.example", "gw:8765", allowed)
        assert origin_allowed("HTTPS://APP.EXAMPLE/", "gw:8765", allowed)
        assert not origin_allowed("https://app.example.evil", "gw:8765", allowed)
        assert origin_allowed("https://anything", "gw:8765", ("*",))


def test_resolve_static_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "app.js").write_text("x")
    (tmp_path / "secret.txt").write_text("s")
    root = tmp_path / "static"
    assert resolve_static(root, "app.js") == (root / "app.js").resolve()
    for escape in ("../secret.txt", "/etc/passwd", "", "a\x00b", ".", "missing.js", "a" * 300):
        assert resolve_static(root, escape) is None


class TestInAppFilter:
    def test_defaults_allow_everything(self) -> None:
        assert InAppFilter().allows("COURSE_UPDATE")
        assert InAppFilter.from_document(None).allows("X")

    def test_type_and_master_switches(self) -> None:
        prefs = InAppFilter.from_document(
            {"channels": {"in_app": True}, "types": {"COURSE_UPDATE": {"in_app": False, "email": True}}}
        )
        assert not prefs.allows("COURSE_UPDATE")
        assert prefs.allows("NEW_COMMENT")
        master_off = InAppFilter.from_document({"channels": {"in_app": False}, "types": {}})
        assert not master_off.allows("NEW_COMMENT")
        assert master_off.allows("SECURITY_ALERT", critical=True)


class TestDeadlineQueue:
    async def test_callbacks_fire_in_deadline_order_and_cancelled_ones_never(self) -> None:
        queue = DeadlineQueue()
        fired: list[str] = []
        now = time.time()
        queue.schedule(now + 0.10, lambda: fired.append("late"))
        cancelled = queue.schedule(now + 0.05, lambda: fired.append("cancelled"))
        queue.schedule(now + 0.02, lambda: fired.append("early"))
        queue.cancel(cancelled)
        assert len(queue) == 2
        await wait_until(lambda: len(fired) == 2, 5, "both live deadlines fired")
        assert fired == ["early", "late"]
        assert len(queue) == 0

    async def test_cancel_drops_the_callback_at_once(self) -> None:
        queue = DeadlineQueue()
        entry = queue.schedule(time.time() + 3600, lambda: None)
        queue.cancel(entry)
        assert entry.callback is None  # whatever the callback held (a session, a connection) is freed
        assert len(queue) == 0

    async def test_heap_is_compacted_when_cancelled_entries_dominate(self) -> None:
        queue = DeadlineQueue()
        entries = [queue.schedule(time.time() + 3600, lambda: None) for _ in range(200)]
        for entry in entries[:150]:
            queue.cancel(entry)
        assert len(queue) == 50
        assert len(queue._heap) < 200  # compacted, not just marked


class TestRpcClient:
    class _Channel:
        """Stands for both the aio-pika channel and its aiormq underlay: publishes go nowhere."""

        is_closed = False

        async def basic_publish(self, *args: Any, **kwargs: Any) -> None:
            return None

    @classmethod
    def attached(cls, client: RpcClient) -> RpcClient:
        client._channel = client._underlay = cls._Channel()  # type: ignore[assignment]
        return client

    async def test_without_a_channel_requests_fail_fast(self) -> None:
        with pytest.raises(RpcUnavailable):
            await RpcClient("herald.rpc", 1.0, "guest").call(b"{}")

    async def test_unanswered_request_times_out(self) -> None:
        client = self.attached(RpcClient("herald.rpc", 0.05, "guest"))
        with pytest.raises(RpcTimeout):
            await client.call(b"{}")
        assert client.in_flight == 0

    async def test_losing_the_channel_fails_every_pending_request(self) -> None:
        client = self.attached(RpcClient("herald.rpc", 30.0, "guest"))
        calls = [asyncio.create_task(client.call(b"{}")) for _ in range(5)]
        await wait_until(lambda: client.in_flight == 5, 5, "five requests in flight")
        client.detach()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(outcome, RpcUnavailable) for outcome in outcomes)
        assert client.in_flight == 0


@pytest.mark.parametrize("sub", ["u1\n", "", "a" * 129, "user with space", "ü"])
def test_a_sub_that_is_not_a_user_id_is_refused(sub: str) -> None:
    # `$` in a Python regex also matches before a final newline: the check must be a full match.
    with pytest.raises(AuthError, match="sub"):
        claims_from_payload({"sub": sub, "exp": 2_000_000_000})
