"""JWT verification (PyJWT) and the per-connection authentication state machine (PROTOCOL §5).

:class:`TokenVerifier` turns a token into :class:`Claims` or raises :class:`AuthError`:

- the header's ``alg`` must be in ``HERALD_JWT_ALGORITHMS`` (``none`` never is);
- HMAC algorithms are verified with ``HERALD_JWT_SECRET`` only, asymmetric ones with
  ``HERALD_JWT_PUBLIC_KEY`` or the JWKS key named by ``kid`` — so an HS256 token signed with the RSA
  public key is checked against the secret and fails (no algorithm confusion);
- ``exp`` and ``sub`` are required, ``nbf`` is honoured, ``aud``/``iss`` are checked when configured;
- ``exp`` must be a date RFC 3339 can write (:data:`MAX_EXPIRY`, the end of year 9999), since ``auth``
  and ``auth.refresh`` answer it as ``expires_at``; PyJWT bounds ``nbf`` and ``iat`` (not in the future)
  but not ``exp``, and an ``exp`` in milliseconds is a common mistake;
- ``sub`` must be a valid user id (PROTOCOL §4), since it names an exchange and a routing key;
- ``roles`` (a list) containing ``admin`` grants admin methods.

JWKS keys come from :class:`gateway.jwks.JwksKeys` (a key set lives ``HERALD_JWT_JWKS_LIFESPAN``
seconds, so a removed key stops verifying within it; refetched on an unknown ``kid`` at most once per
``HERALD_JWT_JWKS_COOLDOWN``, failed fetches included, so a stream of made-up ``kid`` values cannot hammer
the identity provider); the blocking HTTP fetch runs in a thread, never on the event loop.

Any error while checking a token — PyJWT's, or an unexpected one such as the ``TypeError`` of an ES256
token checked against an RSA key — refuses the token (401 / 4401); none escapes as a 500.

:class:`AuthState` is sans-I/O: it records who the connection is and until when, and decides what an
``auth.refresh`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import jwt
import structlog
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.datastructures import Headers as StarletteHeaders
from websockets.datastructures import Headers as WebSocketHeaders

from gateway.errors import AuthError, SubjectMismatch
from gateway.jwks import JwksKeys
from shared.events import is_valid_user_id
from shared.logs import configure_logging
from shared.settings import ConfigError, exit_with_config_error, load_settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.settings import Settings

log = structlog.get_logger("gateway.auth")

_HMAC: Final = frozenset({"HS256", "HS384", "HS512"})
#: The last second an RFC 3339 timestamp can name, 9999-12-31T23:59:59Z: ``datetime`` has no year 10000.
MAX_EXPIRY: Final = 253_402_300_799


def load_edge_settings() -> Settings:
    """An edge's settings at start: exit 2 naming a bad variable, or the missing way to verify tokens;
    then logging configured. Both edges (``herald-gateway``, ``herald-api``) start with it."""
    settings = load_settings()
    try:
        settings.require_jwt_key()
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    configure_logging(settings)
    return settings


@dataclass(frozen=True, slots=True)
class Claims:
    """What the gateway takes from a verified token."""

    user_id: str
    expires_at: float
    admin: bool


class TokenVerifier:
    """Verifies tokens with the configured keys; see the module docstring for the rules."""

    def __init__(self, settings: Settings) -> None:
        settings.require_jwt_key()
        self._algorithms = frozenset(a for a in settings.jwt_algorithms if a.lower() != "none")
        # An empty secret is no secret: HMAC with "" would accept tokens anyone can mint.
        self._secret = (settings.jwt_secret.get_secret_value() if settings.jwt_secret else "") or None
        self._public_key: Any = (
            load_pem_public_key(settings.jwt_public_key.encode()) if settings.jwt_public_key else None
        )
        self._jwks = (
            JwksKeys(settings.jwt_jwks_url, settings.jwt_jwks_lifespan, settings.jwt_jwks_cooldown)
            if settings.jwt_jwks_url
            else None
        )
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._fixed_key = self._only_key()

    def _only_key(self) -> tuple[Any, list[str]] | None:
        """The key and its allowed algorithms when the configuration leaves a token no other: a secret
        alone, or a public key alone, without JWKS. Then the header need not be read first to pick the
        key (PyJWT parses the whole token for it: 72 µs per token against 50, bench/token_verify.py)."""
        if self._jwks is not None or (self._secret is None) == (self._public_key is None):
            return None
        hmac = self._secret is not None
        algorithms = sorted(a for a in self._algorithms if (a in _HMAC) == hmac)
        # No algorithm left for the key: the header path refuses every token with the right reason.
        return ((self._secret if hmac else self._public_key), algorithms) if algorithms else None

    @property
    def lacks_audience(self) -> bool:
        """Asymmetric keys (PEM or JWKS) without ``HERALD_JWT_AUDIENCE``: an identity provider's tokens for
        *any* of its applications would be accepted here."""
        return self._audience is None and (self._public_key is not None or self._jwks is not None)

    async def verify(self, token: str) -> Claims:
        """The token's claims; :class:`AuthError` with a short reason when it is refused."""
        if self._fixed_key is not None:
            key, algorithms = self._fixed_key
        else:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError:
                raise AuthError("malformed token") from None
            alg = header.get("alg")
            if not isinstance(alg, str) or alg not in self._algorithms:
                raise AuthError("token algorithm not allowed")
            key, algorithms = await self._key_for(alg, header), [alg]
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise AuthError("token audience or issuer not accepted") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token algorithm not allowed") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token") from None
        except jwt.DecodeError:  # not three base64url segments of JSON (InvalidSignatureError is one too)
            raise AuthError("malformed token") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        except Exception as exc:  # a key that does not fit the algorithm (e.g. ES256 vs RSA): refused too
            log.info("token refused by an unexpected verification error", error=type(exc).__name__)
            raise AuthError("invalid token") from None
        return claims_from_payload(payload)

    async def _key_for(self, alg: str, header: Mapping[str, Any]) -> Any:
        if alg in _HMAC:
            if self._secret is None:
                raise AuthError("token algorithm not allowed")
            return self._secret
        if self._jwks is not None and (header.get("kid") is not None or self._public_key is None):
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise AuthError("unknown signing key")
            return (await self._jwks.key(kid)).key
        if self._public_key is None:
            raise AuthError("token algorithm not allowed")
        return self._public_key


def claims_from_payload(payload: Mapping[str, Any]) -> Claims:
    """:class:`Claims` from a verified payload; :class:`AuthError` when ``sub`` is not a valid user id or
    ``exp`` is not a date up to :data:`MAX_EXPIRY`."""
    sub = payload.get("sub")
    if not isinstance(sub, str) or not is_valid_user_id(sub):
        raise AuthError("token sub is not a valid user id")
    exp: Any = payload.get("exp")
    try:
        # PyJWT let through whatever int() takes; float() of an integer past 1e308 overflows.
        expires_at = float(exp)
    except (TypeError, ValueError, OverflowError):
        raise AuthError("token exp is not a number") from None
    if not expires_at <= MAX_EXPIRY:  # also NaN
        raise AuthError("token exp is after the year 9999")
    roles = payload.get("roles")
    admin = isinstance(roles, list | tuple) and "admin" in roles
    return Claims(sub, expires_at, admin)


class RepeatedHeader(ValueError):
    """A header that may appear once came several times: the request is ambiguous (400, or 401 for
    ``Authorization``), whichever value a proxy or the server would have picked."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} header given more than once")


def single_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, ``None`` without it; :class:`RepeatedHeader` when it is repeated.

    Neither library's ``get`` tells a repeat: websockets' raises ``MultipleValuesError`` (a 500 if left
    alone) and Starlette's returns the first value. So their lists are read; a plain mapping (tests) holds
    one value per name.
    """
    if isinstance(headers, WebSocketHeaders):
        values = headers.get_all(name)
    elif isinstance(headers, StarletteHeaders):
        values = headers.getlist(name)
    else:
        value = headers.get(name)
        values = [] if value is None else [value]
    if len(values) > 1:
        raise RepeatedHeader(name)
    return values[0] if values else None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, ``None`` without the header.

    A present header with another scheme or no value is returned as ``""`` so that it is refused (401)
    rather than ignored; a repeated one raises :class:`AuthError` (which credential is meant?). ``headers``
    must look names up case-insensitively (websockets' and Starlette's do).
    """
    try:
        authorization = single_header(headers, "Authorization")
    except RepeatedHeader as exc:
        raise AuthError(str(exc)) from None
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def handshake_token(headers: Mapping[str, str], query: str) -> str | None:
    """The token a client put in the handshake: ``Authorization: Bearer …``, else ``?token=…``, else ``None``.

    A present but empty value is returned as ``""`` so that it is refused (401) rather than ignored; a
    repeated ``Authorization`` raises :class:`AuthError`.
    """
    token = bearer_token(headers)
    if token is not None:
        return token
    values = parse_qs(query, keep_blank_values=True).get("token")
    return values[0] if values else None


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (Unix seconds) as an RFC 3339 UTC string, e.g. ``2026-01-01T00:00:00Z``."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AuthState:
    """Who a connection is and until when. Sans-I/O: callers pass the time and schedule the expiry check.

    States: *pending* (``claims is None``, waiting for the first-frame ``auth``) → *authenticated*. An
    authenticated connection is *expired* once ``now ≥ expires_at``; the caller closes it with 4401.
    """

    __slots__ = ("claims",)

    def __init__(self, claims: Claims | None = None) -> None:
        self.claims = claims

    @property
    def authenticated(self) -> bool:
        return self.claims is not None

    def authenticate(self, claims: Claims) -> None:
        """Leave *pending*; ``auth`` is accepted once per connection (a second one is a caller error)."""
        if self.claims is not None:
            raise RuntimeError("already authenticated")
        self.claims = claims

    def refresh(self, claims: Claims) -> None:
        """Adopt a newer token for the same user: later expiry, current roles.

        Raises:
            SubjectMismatch: the token is for another user; the connection keeps its current token.
        """
        if self.claims is None:
            raise RuntimeError("not authenticated")
        if claims.user_id != self.claims.user_id:
            raise SubjectMismatch("token is for another user")
        self.claims = claims

    def expired(self, now: float) -> bool:
        """Whether the current token has expired at ``now`` (Unix seconds)."""
        return self.claims is not None and now >= self.claims.expires_at
