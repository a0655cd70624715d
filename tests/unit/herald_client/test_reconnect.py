"""The Python client's reconnect policy (sans-I/O, herald_client/reconnect.py): URL failover, a backoff
that starts over only after a session that stayed open, and the closes that stop the client.

Every delay is the top of its jitter range (``random.uniform`` patched), so each step of the backoff shows.
"""

from __future__ import annotations

import pytest

from herald_client.errors import HeraldAuthError, HeraldClosedError
from herald_client.reconnect import MAX_AUTH_FAILURES, STABLE_SESSION_SECONDS, Reconnect

A, B = "ws://a/notifications", "ws://b/notifications"
SHORT = 0.2  # seconds a session stayed open after `connected`: far below STABLE_SESSION_SECONDS


@pytest.fixture(autouse=True)
def _delays_at_their_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("herald_client.reconnect.random.uniform", lambda low, high: high)


def test_a_refused_attempt_fails_over_to_the_next_url_at_once_and_waits_only_after_a_round() -> None:
    policy = Reconnect((A, B), base=10.0, cap=60.0)
    assert policy.url == A
    assert policy.ended(open_for=None, code=None) == 0.0
    assert policy.url == B
    assert policy.ended(open_for=None, code=None) == 10.0  # both failed: back off
    assert policy.url == A


def test_attempts_that_never_open_a_session_keep_doubling_the_delay() -> None:
    """Refused, timed out, or answered with an HTTP status (a load balancer's 503): none is a working
    gateway, so none starts the backoff over."""
    policy = Reconnect((A,), base=1.0, cap=60.0)
    assert [policy.ended(open_for=None, code=None) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert policy.ended(open_for=None, code=None) == 60.0  # capped


def test_sessions_that_close_right_after_connected_are_backed_off_like_failures() -> None:
    policy = Reconnect((A,), base=1.0, cap=60.0)
    assert [policy.ended(open_for=SHORT, code=1011) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_with_several_urls_short_sessions_fail_over_at_once_only_once_per_round() -> None:
    policy = Reconnect((A, B), base=1.0, cap=60.0)
    delays = [policy.ended(open_for=SHORT, code=1011) for _ in range(6)]
    assert delays == [0.0, 1.0, 0.0, 2.0, 0.0, 4.0]


def test_only_a_session_that_stayed_open_starts_the_backoff_over() -> None:
    policy = Reconnect((A,), base=1.0, cap=60.0)
    assert [policy.ended(open_for=None, code=None) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert policy.ended(open_for=STABLE_SESSION_SECONDS - 0.1, code=1011) == 8.0
    assert policy.ended(open_for=STABLE_SESSION_SECONDS, code=1011) == 1.0  # the first step again
    assert policy.ended(open_for=None, code=None) == 2.0


def test_a_stable_session_that_ends_moves_on_at_once_except_for_a_token_refresh() -> None:
    policy = Reconnect((A, B), base=60.0, cap=60.0)
    assert policy.ended(open_for=STABLE_SESSION_SECONDS, code=4401) == 0.0
    assert policy.url == A  # an expired token only needs a new token
    assert policy.ended(open_for=STABLE_SESSION_SECONDS, code=1001) == 0.0
    assert policy.url == B  # a gateway shutting down: the next one, at once
    assert policy.ended(open_for=STABLE_SESSION_SECONDS, code=1006) == 0.0
    assert policy.url == A  # a crashed gateway: the other one, at once


@pytest.mark.parametrize("code", [4401, 1001])
def test_an_expiry_or_a_shutdown_reconnects_at_once_but_not_in_a_loop(code: int) -> None:
    policy = Reconnect((A,), base=1.0, cap=60.0)
    assert policy.ended(open_for=SHORT, code=code) == 0.0
    # The gateway closed the next session the same way at once: it is failing, not restarting.
    assert [policy.ended(open_for=SHORT, code=code) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert policy.ended(open_for=STABLE_SESSION_SECONDS, code=code) == 0.0


def test_4008_and_repeated_refusals_of_fresh_tokens_stop_the_client() -> None:
    policy = Reconnect((A,), base=1.0, cap=60.0)
    too_many = policy.refusal(4008, "too many", opened=False)
    assert isinstance(too_many, HeraldClosedError)
    assert (too_many.code, too_many.reason) == (4008, "too many")
    assert policy.refusal(4401, "expired", opened=True) is None  # an expired token after a session
    for _ in range(MAX_AUTH_FAILURES - 1):
        assert policy.refusal(4401, "bad token", opened=False) is None
    refused = policy.refusal(4401, "bad token", opened=False)
    assert isinstance(refused, HeraldAuthError)
    assert policy.refusal(1006, "", opened=False) is None
