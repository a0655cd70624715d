"""Per-connection protections and the close codes they lead to (PROTOCOL §7). Sans-I/O.

Frames over ``max_size`` are refused by websockets itself (close 1009); everything else the gateway
decides lives here as plain functions and a small class, with time passed in so tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.jsonrpc import CloseCode


class TokenBucket:
    """Token bucket: ``burst`` tokens, refilled at ``rate`` per second; each request takes one.

    Every client frame (valid or not) takes a token, so a flood of garbage is limited like a flood of
    requests. A refused frame gets error 4029 and takes nothing.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now`` (monotonic seconds); ``False`` when the bucket is empty."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def admission_close_code(open_connections: int, cap: int) -> CloseCode | None:
    """4008 when a user already holds ``cap`` connections on this gateway, else ``None`` (admit)."""
    return CloseCode.TOO_MANY_CONNECTIONS if open_connections >= cap else None


def lagging(write_buffer_bytes: int, limit: int) -> bool:
    """Whether a connection whose transport holds ``write_buffer_bytes`` unsent bytes must be closed 1013.

    Checked before every relayed frame and every request reply, so a buffer exceeds ``limit`` by at most
    one frame.
    """
    return write_buffer_bytes > limit


class KeyedBuckets:
    """One :class:`TokenBucket` per key (the HTTP API's per-user limit), at most ``max_keys`` of them.

    A WebSocket connection owns its bucket; HTTP requests have no connection, so the API keys buckets by
    the verified user id. The map is bounded: when it is full, the least recently used key's bucket is
    dropped (that user starts again with a full burst, which is what an idle user would have anyway).
    """

    __slots__ = ("_buckets", "_burst", "_max_keys", "_rate")

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        """Take one token of ``key``'s bucket at ``now``; ``False`` when it is empty."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                del self._buckets[next(iter(self._buckets))]
            bucket = TokenBucket(self._rate, self._burst, now)
        self._buckets[key] = bucket  # re-inserted last: dicts keep insertion order, oldest first
        return bucket.take(now)


class KeyedSlots:
    """At most ``cap`` requests in flight per key (the HTTP API's per-user cap on requests awaiting the
    worker, ``HERALD_MAX_USER_REQUESTS_IN_FLIGHT`` as on a gateway).

    A WebSocket gateway stops reading a user's connections at the cap; an HTTP request cannot be left
    unread, so the API refuses it instead (:meth:`take` is ``False``). Only keys with a request in flight
    are remembered: a key's count is dropped when it returns to 0, so the map never holds more keys than
    there are requests in flight.
    """

    __slots__ = ("_cap", "_counts")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def take(self, key: str) -> bool:
        """Take one of ``key``'s slots; ``False`` (nothing taken) when it holds ``cap`` already."""
        count = self._counts.get(key, 0)
        if count >= self._cap:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Give back a slot :meth:`take` gave ``key``."""
        count = self._counts.pop(key) - 1
        if count:
            self._counts[key] = count


@dataclass(frozen=True, slots=True)
class UserLimits:
    """What one user may spend on one gateway, across all of its connections there.

    ``rate``/``burst`` size the user's token bucket (taken on top of each connection's own), and
    ``in_flight`` caps the user's requests awaiting the worker, which bounds the work a single user can
    queue on ``herald.rpc`` to ``in_flight`` per gateway.
    """

    rate: float
    burst: int
    in_flight: int
