"""The client's tokens: what a token provider may be, calling it, and reading a token's expiry."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    #: Returns a JWT, plainly or as an awaitable; called on every (re)connect and before expiry.
    TokenProvider = Callable[[], Awaitable[str] | str]


async def fetch_token(provider: TokenProvider) -> str:
    """Call ``provider`` (sync or async) and check that it gave a non-empty string."""
    outcome = provider()
    token = await outcome if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future) else outcome
    if not isinstance(token, str) or not token:
        raise TypeError(f"token provider returned {type(token).__name__}, not a JWT string")
    return token


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, read without verifying it; ``None`` if absent."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None
