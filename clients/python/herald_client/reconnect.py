"""Whether, where and when the client reconnects: its gateway URLs in turn, and the backoff between rounds.

Sans-I/O; :class:`HeraldClient` reports how each attempt ended and sleeps for the delay returned.

- 4008 (too many connections) stops the client, and so do :data:`MAX_AUTH_FAILURES` refusals of fresh
  tokens in a row; every other close reconnects.
- A failed attempt moves to the next URL at once; only after every URL failed in a row does the client
  wait, with full-jitter exponential backoff. Failed means refused, timed out, answered with an HTTP
  status (a proxy's 502, a 404) instead of the WebSocket handshake, or a session that closed within
  :data:`STABLE_SESSION_SECONDS` of ``connected``: a gateway that accepts and drops at once is as broken
  as one that refuses. Only a session that stayed open longer starts the backoff over.
- A stable session that ended also moves to the next URL (its gateway may be gone), except on 4401,
  which only needs a fresh token; with several URLs that attempt is immediate. With one URL it is
  immediate after 4401 and 1001 (the gateway shutting down), else after the first backoff step.
- A 4401 or 1001 that ends a short session is immediate too, unless the attempt before failed as well:
  a gateway that answers ``connected`` and closes at once is not retried in a loop.
"""

from __future__ import annotations

import random
from typing import Final

from herald_client.errors import HeraldAuthError, HeraldClosedError
from herald_client.protocol import CloseCode

#: Consecutive authentication failures (4401 or a failed ``auth``) after which the client gives up.
MAX_AUTH_FAILURES: Final = 2
#: How long a session must stay open to count as working: only then does the backoff start over. Long
#: enough that a gateway failing right after ``connected`` is backed off, short next to any real session.
STABLE_SESSION_SECONDS: Final = 10.0

_IMMEDIATE_AFTER_SESSION = frozenset({int(CloseCode.UNAUTHORIZED), int(CloseCode.GOING_AWAY)})


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


class Reconnect:
    """Whether to reconnect, the URL to try next and the pause before it; see the module docstring."""

    __slots__ = ("_attempt", "_auth_failures", "_base", "_cap", "_failures_in_row", "_index", "urls")

    def __init__(self, urls: tuple[str, ...], base: float, cap: float) -> None:
        if not urls:
            raise ValueError("at least one gateway URL is required")
        self.urls = urls
        self._base = base
        self._cap = cap
        self._attempt = 0
        self._index = 0
        self._failures_in_row = 0
        self._auth_failures = 0

    @property
    def url(self) -> str:
        """The URL of the next attempt."""
        return self.urls[self._index]

    def refusal(self, code: int | None, reason: str, *, opened: bool) -> HeraldClosedError | None:
        """What to stop with when an attempt that ended so must not be retried; ``None`` to reconnect."""
        if code == CloseCode.TOO_MANY_CONNECTIONS:
            return HeraldClosedError("too many connections for this user", code, reason)
        # A 4401 after a working session is an expired token: only refusals of fresh tokens count.
        self._auth_failures = self._auth_failures + 1 if code == CloseCode.UNAUTHORIZED and not opened else 0
        if self._auth_failures >= MAX_AUTH_FAILURES:
            return HeraldAuthError("authentication refused", code, reason)
        return None

    def ended(self, *, open_for: float | None, code: int | None) -> float:
        """Record how an attempt ended; return the seconds to wait before the next one.

        ``open_for`` is how long its session was open (from ``connected``), ``None`` if none opened.
        """
        stable = open_for is not None and open_for >= STABLE_SESSION_SECONDS
        if stable:
            self._attempt = 0
            self._failures_in_row = 0
        else:
            self._failures_in_row += 1
        if code != CloseCode.UNAUTHORIZED:
            self._index = (self._index + 1) % len(self.urls)
        if open_for is not None and code in _IMMEDIATE_AFTER_SESSION and self._failures_in_row <= 1:
            return 0.0  # an expired token, or a gateway shutting down: the next session is likely fine
        if (stable and len(self.urls) > 1) or self._failures_in_row % len(self.urls):
            return 0.0  # another gateway is left to try in this round
        delay = backoff_delay(self._attempt, self._base, self._cap)
        self._attempt += 1
        return delay
