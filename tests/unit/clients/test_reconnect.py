"""The Python client's reconnect policy (sans-I/O): URL failover and a backoff that starts over once a
gateway answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from herald_client.reconnect import Reconnect

if TYPE_CHECKING:
    import pytest

A, B = "ws://a/notifications", "ws://b/notifications"


def test_a_refused_attempt_fails_over_to_the_next_url_at_once_and_waits_only_after_a_round() -> None:
    policy = Reconnect((A, B), base=10.0, cap=60.0)
    assert policy.url == A
    assert policy.ended(opened=False, answered=False, code=None) == 0.0
    assert policy.url == B
    assert 0.0 <= policy.ended(opened=False, answered=False, code=None) <= 10.0  # both failed: back off
    assert policy.url == A


def test_the_backoff_starts_over_once_a_gateway_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("herald_client.reconnect.random.uniform", lambda low, high: high)
    policy = Reconnect((A,), base=1.0, cap=60.0)
    assert [policy.ended(opened=False, answered=False, code=None) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    # The gateway is back: its handshake answered (here with a refusal), so the doubling is forgotten.
    assert policy.ended(opened=False, answered=True, code=None) == 1.0


def test_a_session_that_ends_moves_on_except_for_a_token_refresh() -> None:
    policy = Reconnect((A, B), base=1.0, cap=60.0)
    assert policy.ended(opened=True, answered=True, code=4401) == 0.0
    assert policy.url == A  # an expired token only needs a new token
    assert policy.ended(opened=True, answered=True, code=1001) == 0.0
    assert policy.url == B  # a gateway shutting down: the next one, at once


def test_a_crashed_session_fails_over_at_once_when_another_gateway_is_configured() -> None:
    policy = Reconnect((A, B), base=60.0, cap=60.0)
    assert policy.ended(opened=True, answered=True, code=1006) == 0.0
    assert policy.url == B
