"""Typed configuration for every Herald process.

All settings come from the environment (prefix ``HERALD_``) or a ``.env`` file in the working directory.
:func:`load_settings` is the one entry point processes use: a missing or malformed value stops the process
at start with a single line that names the variable, instead of a traceback minutes later.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Annotated, Final, Literal, NoReturn
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "HERALD_"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


#: The browsers' push services: Chrome and the other Chromium browsers (FCM), Firefox (Mozilla autopush),
#: Safari (``web.push.apple.com``), Edge (WNS, ``<node>.notify.windows.com``).
DEFAULT_PUSH_HOSTS: Final = (
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    ".push.apple.com",
    ".notify.windows.com",
)
_HOST_NAME: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def push_host_entry(entry: str) -> str:
    """One ``push_hosts`` entry, normalised: ``*``, an IP address, a host name (lower case, no trailing
    dot) or ``.`` and a domain (its subdomains); ``ValueError`` for anything else (a scheme, port, path)."""
    entry = entry.strip().lower()
    if entry == "*":
        return entry
    dot = "." if entry.startswith(".") else ""
    name = entry.removeprefix(dot).removesuffix(".")
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        if _HOST_NAME.fullmatch(name):
            return dot + name
    else:
        if not dot:
            return str(address)
    raise ValueError(
        f"{entry!r} is not a host name: give host names without scheme, port or path "
        "('.example.com' for its subdomains, '*' for any host)"
    )


#: HS secrets shorter than this are refused: RFC 7518 §3.2 asks for a key at least as long as the hash.
MIN_SECRET_BYTES: Final = 32
#: Example values from docs and manifests; a deployment that kept one accepts tokens anyone can mint.
PLACEHOLDER_SECRETS: Final = frozenset(
    {"replace-me-with-at-least-32-random-bytes", "changeme", "change-me", "secret", "replace-me"}
)
_PLACEHOLDER_MARKERS: Final = ("replace-me", "replaceme", "changeme", "change-me", "placeholder")


def weak_secret_reason(secret: str) -> str | None:
    """Why ``secret`` cannot sign HS256 tokens (short, or a placeholder), or ``None`` when it can."""
    lowered = secret.lower()
    if lowered in PLACEHOLDER_SECRETS or any(marker in lowered for marker in _PLACEHOLDER_MARKERS):
        return "is a placeholder; create one with: openssl rand -hex 32"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"must be at least {MIN_SECRET_BYTES} bytes; create one with: openssl rand -hex 32"
    return None


class Settings(BaseSettings):
    """Every knob of Herald; each field maps to ``HERALD_<FIELD NAME IN UPPER CASE>``.

    Parameters (defaults in brackets):

    Connections
        amqp_url: RabbitMQ URL [``amqp://guest:guest@127.0.0.1:5672/``].
        amqp_prefix: prefix of every exchange and queue name [``herald``].
        database_url: PostgreSQL DSN [``postgresql://postgres@127.0.0.1:5432/herald``].
        db_pool_min, db_pool_max: asyncpg pool bounds per process [2, 10].
        db_command_timeout: seconds one statement of the pool may take before its connection is given
            up (terminated; the batch or request retried on another as an outage). Above the slowest
            legitimate statement (a broadcast chunk, a retention batch, a lock wait); it is what ends a
            connection that went silent without a reset (a failover, a dropped route) [30].

    JWT (the gateway needs one of secret, public key or JWKS URL)
        jwt_secret: HS256 secret; also what ``herald token`` and ``/dev/token`` sign with. At least 32
            bytes and not a known placeholder (refused at start); empty means unset.
        jwt_public_key: PEM text, or ``@path`` to read it from a file (RS256/ES256/EdDSA).
        jwt_jwks_url: JWKS endpoint (``https://``); keys are cached and refetched on an unknown ``kid``.
        jwt_jwks_allow_http: accept a plain ``http://`` JWKS URL (a trusted sidecar, tests) [false].
        jwt_jwks_lifespan: seconds a fetched key set is used; a key removed from the JWKS stops
            verifying within this time [300].
        jwt_jwks_cooldown: minimum seconds between two JWKS fetches forced by unknown ``kid`` values or
            following a failed fetch [30].
        jwt_algorithms: comma-separated allowlist [``HS256``]; ``none`` is always refused.
        jwt_audience, jwt_issuer: checked only when set.

    Gateway
        gateway_host, gateway_port: listen address [``127.0.0.1``, 8765].
        allowed_origins: comma-separated browser origins; unset = same-origin and Origin-less clients
            only; ``*`` allows every origin.
        auth_timeout: seconds a client without a handshake token has to send ``auth`` [10].
        max_frame_bytes: largest client frame; larger ones close with 1009 [65536].
        max_connections_per_user: per gateway process; one more closes with 4008 [16].
        send_buffer_bytes: per-connection write buffer cap; a reader above it closes with 1013 [1 MiB].
        rate_limit_per_second, rate_limit_burst: per-connection request token bucket [20, 40].
        user_rate_limit_per_second, user_rate_limit_burst: per-user token bucket on each gateway, shared
            by all of the user's connections there, taken on top of the connection's [40, 80].
        max_requests_in_flight: forwarded requests of one connection awaiting the worker; at the cap the
            gateway stops reading that connection until one is answered [8].
        max_user_requests_in_flight: the same across all of a user's connections on one gateway; also a
            user's requests awaiting the worker on one ``herald-api``, refused with 429 past it [32].
        rpc_timeout: seconds the gateway waits for the worker before error 5003 [5].
        ping_interval, ping_timeout: keepalive, seconds [20, 20].
        dev_tokens: serve ``GET /dev/token`` (``herald dev`` only; never in production) [false].

    HTTP API (``herald-api``; shares the gateway's JWT, Origin, rate-limit, in-flight and RPC settings)
        api_host, api_port: listen address [``127.0.0.1``, 8767].
        api_max_body_bytes: largest request body; larger ones get 413 [65536].
        api_max_head_bytes: largest request line and headers; larger ones get 431 and the connection is
            closed [16384].
        api_head_timeout: seconds a request's line and headers may take to arrive, from the connection's
            start or the previous response; slower ones get 408 and the connection is closed [10].

    Worker
        worker_http_host, worker_http_port: ``/healthz``, ``/readyz``, ``/metrics`` [127.0.0.1, 8766].
        prefetch: unacked events in flight per worker [500].
        batch_size: events committed in one transaction [200].
        batch_timeout_ms: how long a partial batch waits for more events [2].
        broadcast_chunk_size: known users a broadcast stores per transaction, beside the per-user
            batches; a batch that locks a user of the chunk in progress waits for it, so a smaller chunk
            shortens that wait and lengthens the broadcast [1000].
        retention_days: notifications older than this are deleted [90].
        retention_interval_seconds: pause between retention passes [3600].
        retention_batch_size: rows per DELETE statement [1000].
        delivery_limit: redeliveries of a crashing event before the queue dead-letters it [20].
        rpc_prefetch: client requests a worker answers concurrently [64].
        rpc_trusted_users: comma-separated broker users whose requests on ``herald.rpc`` the worker
            serves, checked against the broker-validated AMQP ``user_id`` the gateways set; unset = the
            worker's own broker user (one shared user in development); ``*`` = anyone (no check).
        confirm_frames: wait for publisher confirms of live event frames before acking [false]; see
            docs/design.md (frames precede the ack on the same connection either way).

    Web Push (the worker answers ``push.*`` requests, ``herald-delivery`` sends)
        vapid_private_key: the VAPID key pair's private half, PEM text or ``@path`` (``herald vapid``
            prints one); unset = ``push.vapid_key`` and push sending are unavailable.
        push_allow_http: accept ``http://`` push endpoints, and under ``push_hosts`` ``*`` hosts that
            are not public (development and tests only) [false].
        push_hosts: comma-separated hosts push endpoints may name, checked at ``push.subscribe`` and
            again before each push; ``.example.com`` matches its subdomains; ``*`` any public host: not
            a loopback, private, link-local or other non-global IP address, ``localhost`` or a name
            without a dot (unless ``push_allow_http``) [the browsers' push services,
            :data:`DEFAULT_PUSH_HOSTS`].
        push_max_subscriptions: subscriptions kept per user; one more drops the oldest [20].

    Logging
        log_format: ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise) [auto].
        log_level: ``DEBUG`` … ``ERROR`` [INFO].
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_prefix: str = Field(default="herald", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    database_url: str = "postgresql://postgres@127.0.0.1:5432/herald"
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    db_command_timeout: float = Field(default=30.0, gt=0)

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    # Before jwt_jwks_url: its validator reads this flag.
    jwt_jwks_allow_http: bool = False
    jwt_jwks_url: str | None = None
    jwt_jwks_lifespan: float = Field(default=300.0, gt=0)
    jwt_jwks_cooldown: float = Field(default=30.0, ge=0)
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8765, ge=0, le=65535)
    allowed_origins: Annotated[tuple[str, ...] | None, NoDecode] = None
    auth_timeout: float = Field(default=10.0, gt=0)
    max_frame_bytes: int = Field(default=65536, ge=1024)
    max_connections_per_user: int = Field(default=16, ge=1)
    send_buffer_bytes: int = Field(default=1 << 20, ge=1024)
    rate_limit_per_second: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    user_rate_limit_per_second: float = Field(default=40.0, gt=0)
    user_rate_limit_burst: int = Field(default=80, ge=1)
    max_requests_in_flight: int = Field(default=8, ge=1)
    max_user_requests_in_flight: int = Field(default=32, ge=1)
    rpc_timeout: float = Field(default=5.0, gt=0)
    ping_interval: float = Field(default=20.0, gt=0)
    ping_timeout: float = Field(default=20.0, gt=0)
    dev_tokens: bool = False

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8767, ge=0, le=65535)
    api_max_body_bytes: int = Field(default=65536, ge=1024)
    api_max_head_bytes: int = Field(default=16384, ge=1024)
    api_head_timeout: float = Field(default=10.0, gt=0)

    worker_http_host: str = "127.0.0.1"
    worker_http_port: int = Field(default=8766, ge=0, le=65535)
    prefetch: int = Field(default=500, ge=1, le=65535)
    batch_size: int = Field(default=200, ge=1, le=5000)
    batch_timeout_ms: float = Field(default=2.0, ge=0)
    broadcast_chunk_size: int = Field(default=1000, ge=1, le=100_000)
    retention_days: int = Field(default=90, ge=1)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    retention_batch_size: int = Field(default=1000, ge=1)
    delivery_limit: int = Field(default=20, ge=1)
    rpc_prefetch: int = Field(default=64, ge=1, le=65535)
    rpc_trusted_users: Annotated[tuple[str, ...] | None, NoDecode] = None
    confirm_frames: bool = False

    vapid_private_key: SecretStr | None = None
    push_allow_http: bool = False
    push_hosts: Annotated[tuple[str, ...], NoDecode] = DEFAULT_PUSH_HOSTS
    push_max_subscriptions: int = Field(default=20, ge=1, le=1000)

    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _parse_algorithms(cls, value: object) -> object:
        value = _split_commas(value)
        if isinstance(value, tuple | list):
            if not value:
                raise ValueError("at least one algorithm is required")
            if any(str(alg).lower() == "none" for alg in value):
                raise ValueError("'none' is never an accepted algorithm")
        return value

    @field_validator("jwt_secret", mode="after")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # empty = unset (a secret of "" would accept tokens anyone can mint)
        refusal = weak_secret_reason(value.get_secret_value())
        if refusal is not None:
            raise ValueError(refusal)
        return value

    @field_validator("jwt_jwks_url", mode="after")
    @classmethod
    def _https_jwks(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value:
            return None
        scheme = value.partition("://")[0].lower()
        if scheme == "http" and not info.data.get("jwt_jwks_allow_http"):
            raise ValueError(
                f"plain http lets anyone on the path swap the signing keys; use https, or set "
                f"{ENV_PREFIX}JWT_JWKS_ALLOW_HTTP=true for a trusted local endpoint"
            )
        if scheme not in ("http", "https"):
            raise ValueError("must be an https:// URL")
        return value

    @field_validator("allowed_origins", "rpc_trusted_users", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_commas(value) if value != "" else None

    @field_validator("push_hosts", mode="before")
    @classmethod
    def _parse_push_hosts(cls, value: object) -> object:
        return DEFAULT_PUSH_HOSTS if value == "" else _split_commas(value)  # "": compose's `${VAR:-}`

    @field_validator("push_hosts", mode="after")
    @classmethod
    def _check_push_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one host (or '*') is required")
        return tuple(push_host_entry(entry) for entry in value)

    @property
    def amqp_user(self) -> str:
        """The broker user of ``amqp_url`` (:func:`broker_user`)."""
        return broker_user(self.amqp_url)

    def rpc_caller_trusted(self, user_id: str | None) -> bool:
        """Whether a request whose AMQP ``user_id`` is ``user_id`` may be served (see
        ``rpc_trusted_users``). The broker refuses a ``user_id`` other than the publisher's own user."""
        trusted = self.rpc_trusted_users
        if trusted is not None and "*" in trusted:
            return True
        return user_id is not None and user_id in (trusted if trusted is not None else (self.amqp_user,))

    @field_validator("jwt_public_key", mode="after")
    @classmethod
    def _read_key_file(cls, value: str | None) -> str | None:
        return read_at_path(value)

    @field_validator("vapid_private_key", mode="before")
    @classmethod
    def _read_vapid_key(cls, value: object) -> object:
        if value == "":
            return None  # an empty variable (compose's `${VAR:-}`) is unset
        return read_at_path(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def require_jwt_key(self) -> None:
        """Raise :class:`ConfigError` unless a way to verify tokens is configured (gateway only)."""
        if not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url):
            raise ConfigError(
                f"{ENV_PREFIX}JWT_SECRET: one of {ENV_PREFIX}JWT_SECRET, {ENV_PREFIX}JWT_PUBLIC_KEY "
                f"or {ENV_PREFIX}JWT_JWKS_URL is required"
            )


def read_at_path(value: str | None) -> str | None:
    """``value`` itself, or the text of the file it names when it starts with ``@``."""
    if value is not None and value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read key file {path}: {exc.strerror}") from exc
    return value


def broker_user(amqp_url: str) -> str:
    """The user an AMQP URL connects as (``guest`` when it names none, as aio-pika assumes)."""
    return unquote(urlsplit(amqp_url).username or "guest")


class ConfigError(Exception):
    """A setting is missing or malformed; the message starts with the variable's name."""


_SECRET_FIELDS = frozenset({"jwt_secret", "vapid_private_key", "smtp_url"})


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first offending variable and why it was refused."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    value = first.get("input")
    shown = "" if field in _SECRET_FIELDS else f" (got {value!r})"
    return f"{ENV_PREFIX}{field.upper()}: {first['msg']}{shown}"


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings`, or exit with status 2 and one line naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        exit_with_config_error(describe_validation_error(exc))


def exit_with_config_error(message: str) -> NoReturn:
    """Print ``herald: configuration error: <message>`` to stderr and exit with status 2."""
    print(f"herald: configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)
