"""What every request area shares: the caller, strict params, errors, the method entry, event publishing.

Every mutation that changed something publishes its event to ``herald.users`` keyed by the user id, after
the statement committed, so every connection of the user, on every gateway, follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

import structlog
from pydantic import BaseModel, ConfigDict

from shared.jsonrpc import ErrorCode, JsonRpcError, notification_frame

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

    from worker.runtime import Runtime

log = structlog.get_logger(__name__)


def bad_param(field: str, reason: str) -> JsonRpcError:
    """-32602 whose ``data`` is ``field`` (a dotted path into params), as the gateway's own -32602 errors."""
    return JsonRpcError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {reason}", field)


def invalid_params(error: ValidationError, model: type[BaseModel] | None = None) -> JsonRpcError:
    """-32602 naming the first field pydantic refused (``params`` when the params are not an object).

    With the params ``model`` that was validated, pydantic's ``loc`` is read against it: ``loc`` also names
    the member of a union pydantic tried (``("expirationTime", "int")``, then ``("expirationTime",
    "float")``), which is no field of params, so the path follows the model's fields instead
    (:func:`_client_path`), and the reason is what every member wanted. An error about another model (a
    ValidationError from inside a method) keeps its ``loc`` as pydantic gave it.
    """
    errors = error.errors()
    read_by = model if model is not None and error.title == model.__name__ else None

    def path(details: ErrorDetails) -> tuple[int | str, ...]:
        return tuple(details["loc"]) if read_by is None else _client_path(read_by, details["loc"])

    field = path(errors[0])
    reasons = dict.fromkeys(details["msg"] for details in errors if path(details) == field)
    return bad_param(".".join(str(part) for part in field) or "params", _either(list(reasons)))


def _client_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The part of ``loc`` the client wrote: field aliases into models, indexes into lists.

    It ends at a member the model does not have (an unknown one, the client's), or at a union: the part
    after it is pydantic's name for the member it tried (``int``, ``function-after[...]``, a class name).
    """
    path: list[int | str] = []
    annotation: Any = model
    for part in loc:
        annotation = _unwrapped(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            path.append(part)
            fields = {info.alias or name: info for name, info in annotation.model_fields.items()}
            if part not in fields:
                break
            annotation = fields[part].annotation
        elif isinstance(part, int) and get_origin(annotation) is list:
            path.append(part)
            (annotation,) = get_args(annotation)
        else:
            break
    return tuple(path)


def _unwrapped(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` and ``| None`` (pydantic adds no part to ``loc`` for those)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is UnionType:
            members = [member for member in get_args(annotation) if member is not type(None)]
            if len(members) > 1:
                return annotation  # a union: what comes next in loc is the member pydantic tried
            annotation = members[0]
        else:
            return annotation


def _either(reasons: list[str]) -> str:
    """One reason from a union's members': ``Input should be a valid integer or number``."""
    words = [reason.split(" ") for reason in reasons]
    shared = 0  # leading words all share, leaving each at least one of its own
    while all(len(each) > shared + 1 and each[shared] == words[0][shared] for each in words):
        shared += 1
    return " ".join([*words[0][:shared], " or ".join(" ".join(each[shared:]) for each in words)])


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
