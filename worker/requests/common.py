"""What every request area shares: the caller, strict params, errors, the method entry, event publishing.

Every mutation that changed something publishes its event to ``herald.users`` keyed by the user id, after
the statement committed, so every connection of the user, on every gateway, follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict

from shared.jsonrpc import ErrorCode, JsonRpcError, notification_frame

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import ValidationError

    from worker.runtime import Runtime

log = structlog.get_logger(__name__)


def bad_param(field: str, reason: str) -> JsonRpcError:
    """-32602 whose ``data`` is ``field`` (a dotted path into params), as the gateway's own -32602 errors."""
    return JsonRpcError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {reason}", field)


def invalid_params(error: ValidationError) -> JsonRpcError:
    """-32602 naming the first field pydantic refused (``params`` when the params are not an object)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "params"
    return bad_param(field, first["msg"])


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: the user id the gateway verified, and whether the token carried the admin role."""

    user_id: str
    admin: bool = False


class Params(BaseModel):
    """Strict params: no coercion (``"20"`` is not a limit) and no unknown members."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoParams(Params):
    """A method without params (``{}``)."""


@dataclass(frozen=True, slots=True)
class Method:
    """A request method: its params model, its coroutine, and whether only admins may call it."""

    params: type[BaseModel]
    run: Callable[[Runtime, Caller, Any], Awaitable[Any]]
    admin_only: bool = False


async def publish_event(runtime: Runtime, user_id: str, method: str, params: Any) -> None:
    """Publish one event to the user's connections; a failure is logged, never turned into an error.

    The change is committed by then: answering with an error would make the client retry a request that
    already happened. A connection that missed the frame catches up on its next sync or list. Like the
    frames of event batches, it is not confirmed unless ``HERALD_CONFIRM_FRAMES`` (docs/design.md).
    """
    try:
        await runtime.publisher.live_frame(user_id, method, notification_frame(method, params))
    except Exception:
        log.warning("event_publish_failed", method=method, user_id=user_id, exc_info=True)
