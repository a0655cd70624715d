"""Signing keys from a JWKS endpoint, by ``kid``, with a lifetime and a fetch cool-down.

PyJWT's :class:`jwt.PyJWKClient` fetches and parses the key set; its own caches are off. Its per-``kid``
cache (``cache_keys=True``) is an ``lru_cache`` that never expires, so a key the identity provider
removed would keep verifying until restart, and its cool-down only starts after a *successful* fetch,
so junk ``kid`` values while the provider fails make one fetch each. :class:`KeySetCache` (sans-I/O)
holds the rules instead:

- a fetched key set is used for ``lifespan`` seconds (``HERALD_JWT_JWKS_LIFESPAN``), then fetched again:
  a removed key stops verifying within that time;
- an unknown ``kid`` or an expired set causes a fetch, but at most one per ``cooldown`` seconds
  (``HERALD_JWT_JWKS_COOLDOWN``), counted from the last attempt, failed or not;
- when the set has expired and the provider cannot be reached, tokens are refused (fail closed) until a
  fetch succeeds.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

import jwt
import structlog

from gateway.errors import AuthError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from jwt import PyJWK

log = structlog.get_logger("gateway.jwks")

JWKS_TIMEOUT_SECONDS: Final = 5.0


class KeySetCache:
    """The key set last fetched and when; decides whether a fetch may happen now. Sans-I/O."""

    __slots__ = ("_attempted_at", "_cooldown", "_fetched_at", "_keys", "_lifespan")

    def __init__(self, lifespan: float, cooldown: float) -> None:
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None

    def get(self, kid: str, now: float) -> PyJWK | None:
        """The key named ``kid`` if the set holding it is younger than the lifespan."""
        if self._fetched_at is None or now - self._fetched_at >= self._lifespan:
            return None
        return self._keys.get(kid)

    def may_fetch(self, now: float) -> bool:
        """Whether the cool-down since the last attempt (successful or not) is over."""
        return self._attempted_at is None or now - self._attempted_at >= self._cooldown

    def attempted(self, now: float) -> None:
        self._attempted_at = now

    def store(self, keys: Iterable[PyJWK], now: float) -> None:
        """A successful fetch: the new set replaces the old one entirely (removed keys are gone)."""
        self._keys = {key.key_id: key for key in keys if key.key_id}
        self._fetched_at = now


class JwksKeys:
    """Looks keys up in a :class:`KeySetCache`, fetching the set (in a thread) when the rules allow."""

    def __init__(self, url: str, lifespan: float, cooldown: float) -> None:
        self._client = jwt.PyJWKClient(
            url, cache_keys=False, cache_jwk_set=False, timeout=JWKS_TIMEOUT_SECONDS
        )
        self._cache = KeySetCache(lifespan, cooldown)
        self._fetching = asyncio.Lock()

    async def key(self, kid: str) -> PyJWK:
        """The signing key ``kid``; :class:`AuthError` when it is unknown or the set cannot be fetched."""
        found = self._cache.get(kid, time.monotonic())
        if found is None:
            async with self._fetching:  # one fetch at a time; waiters then find its result
                found = self._cache.get(kid, time.monotonic())
                if found is None and self._cache.may_fetch(time.monotonic()):
                    await self._fetch()
                    found = self._cache.get(kid, time.monotonic())
        if found is None:
            raise AuthError("unknown signing key")
        return found

    async def _fetch(self) -> None:
        self._cache.attempted(time.monotonic())
        try:
            keys = await asyncio.to_thread(self._client.get_signing_keys)
        except Exception as exc:  # unreachable or malformed endpoint: refuse, log, retry after the cool-down
            log.warning("JWKS fetch failed", url=self._client.uri, error=str(exc) or type(exc).__name__)
            return
        self._cache.store(keys, time.monotonic())
