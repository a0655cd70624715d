"""Hypothesis-generated frames against a real gateway process: every frame gets a well-formed reply (or,
for a valid notification, none), the connection stays open, and the process never crashes."""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.protocol import METHODS
from herald_ops.testing.stack import fresh_id, http_status, mint, stack_context

if TYPE_CHECKING:
    from collections.abc import Iterator

    from herald_ops.testing.stack import HeraldProcess

_probes = itertools.count()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
ids = st.none() | st.integers() | st.text(max_size=200) | st.floats(allow_nan=False) | json_values
requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0"]) | json_values,
        "id": ids,
        "method": st.sampled_from(sorted(METHODS | {"session.open", "nope"})) | st.text(max_size=40),
        "params": json_values
        | st.dictionaries(st.sampled_from(["token", "ids", "limit", "since"]), json_values),
    },
)
frames = (
    requests.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=300) | st.binary(max_size=300)
)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[HeraldProcess]:
    # No responder: forwarded requests time out quickly (5003), which exercises that path too.
    with stack_context("herald_gwfuzz") as stack:
        yield stack.start_gateway(
            rpc_timeout=0.3,
            rate_limit_per_second=100_000,
            rate_limit_burst=100_000,
            user_rate_limit_per_second=100_000,
            user_rate_limit_burst=100_000,
        )


@pytest.fixture(scope="module")
def client(fuzzed: HeraldProcess) -> Iterator[ClientConnection]:
    with connect(f"{fuzzed.ws_url}?token={mint(fresh_id('fuzz'))}") as ws:
        assert orjson.loads(ws.recv(timeout=10))["method"] == "connected"
        yield ws


def probe(ws: ClientConnection) -> None:
    """Ping with a fresh id and read until its pong; every frame read on the way must be JSON-RPC."""
    probe_id = f"probe-{next(_probes)}"
    ws.send(orjson.dumps({"jsonrpc": "2.0", "id": probe_id, "method": "ping"}).decode())
    while True:
        reply: dict[str, Any] = orjson.loads(ws.recv(timeout=10))
        assert reply["jsonrpc"] == "2.0"
        assert ("result" in reply) != ("error" in reply) or "method" in reply
        if reply.get("id") == probe_id:
            assert reply["result"] == "pong"
            return


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_generated_frames_never_break_the_connection_or_the_gateway(
    fuzzed: HeraldProcess, client: ClientConnection, frame: str | bytes
) -> None:
    client.send(frame)
    probe(client)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
# A method the error echoes, 128 bytes of UTF-8 in 64 characters: the close reason quoting it must be cut
# by bytes (RFC 6455 allows 123), or closing fails and the client sees 1011.
@example(frame=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "é" * 64, "params": {}}, ensure_ascii=False))
def test_any_first_frame_without_a_valid_token_is_closed_4401(
    fuzzed: HeraldProcess, frame: str | bytes
) -> None:
    with connect(fuzzed.ws_url) as ws:
        ws.send(frame)
        with contextlib.suppress(ConnectionClosed):
            while True:  # the error reply, then the close (a silent gateway fails recv's timeout)
                ws.recv(timeout=10)
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 4401


def test_the_gateway_is_still_healthy_after_fuzzing(fuzzed: HeraldProcess, client: ClientConnection) -> None:
    probe(client)
    assert fuzzed.popen is not None
    assert fuzzed.popen.poll() is None
    assert http_status(f"{fuzzed.url}/healthz") == 200
