"""Where and when the client reconnects: its gateway URLs in turn, and the backoff between rounds.

Sans-I/O; :class:`HeraldClient` reports how each attempt ended and sleeps for the delay returned.

- An attempt that failed before a session opened moves to the next URL at once; only after every URL
  failed in a row does the client wait, with full-jitter exponential backoff.
- The backoff starts over as soon as a gateway *answers* (its WebSocket handshake completed, or it sent
  an HTTP status): a restarted gateway is used at once, instead of after delays that doubled while it
  was down.
- A session that ended also moves to the next URL (its gateway may be gone), except on 4401, which only
  needs a fresh token; with several URLs that attempt is immediate. With one URL it is immediate after
  4401 and 1001 (the gateway shutting down), else after the first backoff step.
"""

from __future__ import annotations

import random

from herald_client.protocol import CloseCode

_IMMEDIATE_AFTER_SESSION = frozenset({int(CloseCode.UNAUTHORIZED), int(CloseCode.GOING_AWAY)})


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


class Reconnect:
    """The URL to try next and the pause before it; see the module docstring."""

    __slots__ = ("_attempt", "_base", "_cap", "_failures_in_row", "_index", "urls")

    def __init__(self, urls: tuple[str, ...], base: float, cap: float) -> None:
        if not urls:
            raise ValueError("at least one gateway URL is required")
        self.urls = urls
        self._base = base
        self._cap = cap
        self._attempt = 0
        self._index = 0
        self._failures_in_row = 0

    @property
    def url(self) -> str:
        """The URL of the next attempt."""
        return self.urls[self._index]

    def ended(self, *, opened: bool, answered: bool, code: int | None) -> float:
        """Record how an attempt ended; return the seconds to wait before the next one."""
        if answered or opened:
            self._attempt = 0
        self._failures_in_row = 0 if opened else self._failures_in_row + 1
        if code != CloseCode.UNAUTHORIZED:
            self._index = (self._index + 1) % len(self.urls)
        if opened and (code in _IMMEDIATE_AFTER_SESSION or len(self.urls) > 1):
            return 0.0  # the session's gateway may be gone: another one is tried at once
        if not opened and self._failures_in_row % len(self.urls):
            return 0.0  # another gateway is left to try in this round
        delay = backoff_delay(self._attempt, self._base, self._cap)
        self._attempt += 1
        return delay
