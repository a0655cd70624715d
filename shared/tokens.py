"""Minting development tokens (``herald token``, ``/dev/token``, tests).

In production the product's own authentication service mints Herald's tokens; this module exists so that
local development and tests can do the same with the configured HS256 secret.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:
    from shared.settings import Settings


class TokenError(RuntimeError):
    """A token cannot be minted with the current configuration."""


def mint_token(
    secret: str,
    user_id: str,
    *,
    admin: bool = False,
    ttl: float = 3600.0,
    audience: str | None = None,
    issuer: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """An HS256 JWT for ``user_id`` (``sub``) expiring in ``ttl`` seconds.

    ``roles`` is ``["admin"]`` when ``admin``; ``aud``/``iss`` are set only when given.
    """
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + int(ttl), "roles": []}
    if admin:
        claims["roles"] = ["admin"]
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_dev_token(settings: Settings, user_id: str, *, admin: bool = False, ttl: float = 3600.0) -> str:
    """:func:`mint_token` with the configured secret, audience and issuer.

    Raises:
        TokenError: ``HERALD_JWT_SECRET`` is not set, or HS256 is not in ``HERALD_JWT_ALGORITHMS``.
    """
    if settings.jwt_secret is None:
        raise TokenError("HERALD_JWT_SECRET is not set: dev tokens are signed with it (HS256)")
    if "HS256" not in settings.jwt_algorithms:
        raise TokenError("HERALD_JWT_ALGORITHMS does not allow HS256, so the gateway would refuse the token")
    return mint_token(
        settings.jwt_secret.get_secret_value(),
        user_id,
        admin=admin,
        ttl=ttl,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
