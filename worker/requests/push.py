"""``push.*``: the VAPID key and the caller's Web Push subscriptions (docs/protocol.md §9)."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints

from shared.jsonrpc import ErrorCode, JsonRpcError
from worker.push_endpoint import check_host, parse_endpoint
from worker.requests.common import Method, NoParams, Params, bad_param
from worker.store import push as store
from worker.text import refuse_control_characters
from worker.vapid import load_vapid, public_key

if TYPE_CHECKING:
    from worker.requests.common import Caller
    from worker.runtime import Runtime

MAX_ENDPOINT_BYTES: Final = 2048


def _within_bytes(value: str) -> str:
    # Counted in UTF-8, not characters: an endpoint is a key of a unique index, whose rows hold at most
    # 2,704 bytes, and 2,048 characters of CJK are over 6,000.
    if len(value.encode()) > MAX_ENDPOINT_BYTES:
        raise ValueError(f"must be at most {MAX_ENDPOINT_BYTES} bytes in UTF-8")
    return value


Key = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_\-=]+$")]
# NUL would fail the query (Postgres text cannot hold it), other control characters the push (httpx
# refuses them): both are invalid params.
Endpoint = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ENDPOINT_BYTES),
    AfterValidator(refuse_control_characters),
    AfterValidator(_within_bytes),
]
Device = Annotated[str, StringConstraints(max_length=100), AfterValidator(refuse_control_characters)]
# (key name, decoded length): an uncompressed P-256 point, a 16-byte auth secret.
_KEY_LENGTHS: Final = {"p256dh": 65, "auth": 16}


class SubscriptionKeys(Params):
    """``keys`` of a ``PushSubscription.toJSON()``."""

    p256dh: Key
    auth: Key


class SubscribeParams(Params):
    """``push.subscribe``: a browser ``PushSubscription.toJSON()`` and an optional device label."""

    # Browsers add members over time (expirationTime today): ignore what we do not use.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    endpoint: Endpoint
    keys: SubscriptionKeys
    expiration_time: int | float | None = Field(default=None, alias="expirationTime")
    device: Device | None = None


class UnsubscribeParams(Params):
    """``push.unsubscribe``: the endpoint to forget. Not parsed as a URL: a subscription stored before
    ``push.subscribe`` parsed endpoints (or while ``HERALD_PUSH_ALLOW_HTTP`` was on) can still go."""

    endpoint: Endpoint


def _check_endpoint(endpoint: str, allow_http: bool, hosts: tuple[str, ...]) -> None:
    """Parsed as the sender's httpx will parse it, so what is stored can be posted to, and naming a host
    of ``HERALD_PUSH_HOSTS``, so herald-delivery posts to push services only (not inside its network)."""
    try:
        url = parse_endpoint(endpoint, ("https", "http") if allow_http else ("https",))
        check_host(url, hosts, allow_local=allow_http)
    except ValueError as exc:
        raise bad_param("endpoint", str(exc)) from None


def _check_key(name: str, value: str) -> None:
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise bad_param(f"keys.{name}", "must be base64url") from None
    if len(decoded) != _KEY_LENGTHS[name]:
        raise bad_param(f"keys.{name}", f"must decode to {_KEY_LENGTHS[name]} bytes")


def _unavailable() -> JsonRpcError:
    return JsonRpcError(ErrorCode.UNAVAILABLE, "web push is not configured (no VAPID key)")


async def vapid_key(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``push.vapid_key``: the application server key browsers subscribe with."""
    secret = runtime.settings.vapid_private_key
    if secret is None:
        raise _unavailable()
    return {"public_key": public_key(load_vapid(secret.get_secret_value()))}


async def subscribe(runtime: Runtime, caller: Caller, params: SubscribeParams) -> dict[str, Any]:
    """``push.subscribe``: store the subscription (the same endpoint twice is one); ``{"id"}``."""
    settings = runtime.settings
    if settings.vapid_private_key is None:
        raise _unavailable()
    _check_endpoint(params.endpoint, settings.push_allow_http, settings.push_hosts)
    _check_key("p256dh", params.keys.p256dh)
    _check_key("auth", params.keys.auth)
    subscription_id = await store.subscribe(
        runtime.pool,
        uuid.uuid4().hex,
        caller.user_id,
        params.endpoint,
        (params.keys.p256dh, params.keys.auth),
        params.device,
        settings.push_max_subscriptions,
    )
    return {"id": subscription_id}


async def unsubscribe(runtime: Runtime, caller: Caller, params: UnsubscribeParams) -> dict[str, Any]:
    """``push.unsubscribe``: ``{"removed": 0 or 1}``."""
    return {"removed": await store.unsubscribe(runtime.pool, caller.user_id, params.endpoint)}


async def list_subscriptions(runtime: Runtime, caller: Caller, params: NoParams) -> dict[str, Any]:
    """``push.list``: the caller's subscriptions, newest first."""
    return {"items": await store.list_subscriptions(runtime.pool, caller.user_id)}


METHODS: Final = {
    "push.vapid_key": Method(NoParams, vapid_key),
    "push.subscribe": Method(SubscribeParams, subscribe),
    "push.unsubscribe": Method(UnsubscribeParams, unsubscribe),
    "push.list": Method(NoParams, list_subscriptions),
}
