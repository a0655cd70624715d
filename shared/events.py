"""Producer events (PROTOCOL §4): the accepted shapes, their limits, and one parser for all of them.

Sans-I/O: :func:`parse_event` takes the raw body and two AMQP properties and returns a validated event or
raises :class:`InvalidEvent` with a reason fit for the ``x-herald-error`` header. Whether the ``type`` is in
the catalog is the worker's question (the catalog is data in Postgres), not this module's.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NamedTuple, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# The limits belong to the wire vocabulary the Python SDK speaks too; re-exported for the services.
from herald_client.protocol import (
    ACTION_ID_PATTERN as ACTION_ID_PATTERN,
)
from herald_client.protocol import (
    CHANNELS as CHANNELS,
)
from herald_client.protocol import (
    MAX_ACTION_LABEL_CHARS as MAX_ACTION_LABEL_CHARS,
)
from herald_client.protocol import (
    MAX_ACTIONS as MAX_ACTIONS,
)
from herald_client.protocol import (
    MAX_BODY_BYTES as MAX_BODY_BYTES,
)
from herald_client.protocol import (
    MAX_COLLAPSE_KEY_CHARS as MAX_COLLAPSE_KEY_CHARS,
)
from herald_client.protocol import (
    MAX_DATA_BYTES as MAX_DATA_BYTES,
)
from herald_client.protocol import (
    MAX_EVENT_ID_BYTES as MAX_EVENT_ID_BYTES,
)
from herald_client.protocol import (
    MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS,
)
from herald_client.protocol import (
    MAX_RECIPIENTS as MAX_RECIPIENTS,
)
from herald_client.protocol import (
    MAX_TITLE_CHARS as MAX_TITLE_CHARS,
)
from herald_client.protocol import (
    MAX_URL_CHARS as MAX_URL_CHARS,
)
from herald_client.protocol import (
    SOURCE_PATTERN as SOURCE_PATTERN,
)
from herald_client.protocol import (
    TYPE_PATTERN as TYPE_PATTERN,
)
from herald_client.protocol import (
    USER_ID_PATTERN as USER_ID_PATTERN,
)
from shared.topology import BROADCAST_ROUTING_KEY, PROFILE_ROUTING_KEY, SEND_ROUTING_KEY

if TYPE_CHECKING:
    from pydantic.config import JsonDict

Channel = Literal["in_app", "email", "push"]
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
_USER_ID_RE: Final = re.compile(USER_ID_PATTERN)
_SOURCE_RE: Final = re.compile(SOURCE_PATTERN)


class InvalidEvent(ValueError):
    """The event can never be processed; ``reason`` says why (it goes into ``x-herald-error``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_NUL_REFUSED: Final = "must not contain NUL (U+0000): Postgres text and jsonb cannot store it"
#: ``\u0000`` in orjson's output, preceded by an even number of backslashes (an odd one would make it
#: the text "\\u0000", which is fine).
_ESCAPED_NUL: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(_NUL_REFUSED)
    return value


#: orjson reads 1,024 levels of nesting but writes 254, and the deepest document holding ``data`` (the
#: ``notifications.list`` reply, ``{"result": {"items": [{"data": …}]}}``) wraps it in four: deeper data
#: could be stored, but neither its frame nor the user's inbox could be written.
MAX_DATA_DEPTH: Final = 254 - 4


def _data_within_limit(value: dict[str, Any]) -> dict[str, Any]:
    try:
        # Within four levels, as that reply holds it. Too deep is the one error orjson can meet with a
        # document it parsed, and its TypeError would escape validation entirely.
        serialized = orjson.dumps([[[[value]]]])[4:-4]
    except orjson.JSONEncodeError:
        raise ValueError(f"must be nested at most {MAX_DATA_DEPTH} levels deep") from None
    if len(serialized) > MAX_DATA_BYTES:
        raise ValueError(f"must serialize to at most {MAX_DATA_BYTES} bytes")
    if _ESCAPED_NUL.search(serialized):
        raise ValueError(_NUL_REFUSED)
    return value


NulFree = Annotated[str, AfterValidator(_no_nul)]


def _event_id_fits(value: str) -> str:
    # Counted in bytes: a broadcast's key becomes the AMQP message_id of its copy, which holds 255.
    if len(value.encode("utf-8", "surrogatepass")) > MAX_EVENT_ID_BYTES:
        raise ValueError(f"must be at most {MAX_EVENT_ID_BYTES} bytes in UTF-8")
    return value


EventId = Annotated[str, AfterValidator(_no_nul), AfterValidator(_event_id_fits)]


def _source_name(value: str) -> str:
    if not _SOURCE_RE.fullmatch(value):
        raise ValueError("must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    return value


#: The producer an event comes from (``source``): a namespace for its idempotency keys.
Source = Annotated[str, AfterValidator(_source_name)]


class IdempotencyKey(NamedTuple):
    """What makes two events the same event: the producer's ``key`` within its ``source``.

    ``source`` is ``""`` for events without one: they share one namespace, as before sources existed.
    """

    source: str
    key: str


_HTTP_URL: Final = TypeAdapter(HttpUrl)
_CONTROL_OR_SPACE: Final = re.compile(r"[\x00-\x20\x7f]")


def _http_url(value: str) -> str:
    # The URL parser drops tabs and newlines silently; a click target must be exactly what was sent.
    if _CONTROL_OR_SPACE.search(value):
        raise ValueError("must not contain spaces or control characters")
    return str(_HTTP_URL.validate_python(value))


#: A click target: an absolute ``http(s)`` URL of at most 2,000 characters, stored as parsed (normalized).
Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(_http_url)]


class Action(BaseModel):
    """A button on a notification (PROTOCOL §10): its id (what ``notifications.act`` reports), label, url."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(pattern=ACTION_ID_PATTERN)]
    label: NulFree = Field(min_length=1, max_length=MAX_ACTION_LABEL_CHARS)
    url: Url | None = None


def _distinct_action_ids(actions: tuple[Action, ...]) -> tuple[Action, ...]:
    if len({action.id for action in actions}) != len(actions):
        raise ValueError("action ids must be distinct")
    return actions


def _with_offset(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must include a time zone offset")
    return value


#: A timestamp in an event: RFC 3339 with its offset, so it names one instant whatever the producer's zone.
Aware = Annotated[datetime, AfterValidator(_with_offset)]


class _EventFields(BaseModel):
    """What send and broadcast events have in common."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    event_id: EventId | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EVENT_ID_BYTES,  # characters, for the schema; the bytes are checked too
        validation_alias=AliasChoices("event_id", "eventId"),
    )
    source: Source | None = None
    type: Annotated[str, StringConstraints(pattern=TYPE_PATTERN)]
    title: NulFree = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    message: NulFree = Field(default="", max_length=MAX_MESSAGE_CHARS)
    data: Annotated[dict[str, Any], AfterValidator(_data_within_limit)] = Field(default_factory=dict)
    channels: frozenset[Channel] | None = None
    expires_at: Aware | None = Field(default=None, validation_alias=AliasChoices("expires_at", "expiresAt"))

    url: Url | None = None
    actions: Annotated[tuple[Action, ...], AfterValidator(_distinct_action_ids)] = Field(
        default=(), max_length=MAX_ACTIONS
    )

    @property
    def idempotency_key(self) -> IdempotencyKey | None:
        """The event's key scoped by its ``source``; ``None`` without an ``event_id`` (never deduplicated)."""
        if self.event_id is None:
            return None
        return IdempotencyKey(self.source or "", self.event_id)


def _document_single_recipient(schema: JsonDict) -> None:
    # The parser folds `user_id` into `user_ids` before validation, so the generated schema (AsyncAPI,
    # docs/asyncapi.json) would otherwise hide the single-recipient form producers use most.
    properties = cast("dict[str, JsonDict]", schema["properties"])
    properties["user_id"] = {
        **cast("JsonDict", properties["user_ids"]["items"]),
        "title": "User Id",
        "description": "A single recipient, instead of user_ids (camelCase userId is accepted too).",
    }
    schema["required"] = [name for name in cast("list[str]", schema["required"]) if name != "user_ids"]
    schema["oneOf"] = [{"required": ["user_id"]}, {"required": ["user_ids"]}]


class SendEvent(_EventFields):
    """``notification.send``: one notification for each of ``user_ids`` (deduplicated, order kept)."""

    model_config = ConfigDict(json_schema_extra=_document_single_recipient)

    user_ids: tuple[UserId, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    # Per recipient: a new event with the key of one of their unread notifications updates it in place.
    collapse_key: NulFree | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COLLAPSE_KEY_CHARS,
        validation_alias=AliasChoices("collapse_key", "collapseKey"),
    )

    @model_validator(mode="before")
    @classmethod
    def _collect_recipients(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        single = raw.get("user_id", raw.get("userId"))
        many = raw.get("user_ids", raw.get("userIds"))
        if single is not None and many is not None:
            raise ValueError("give either user_id or user_ids, not both")
        if single is not None:
            return {**raw, "user_ids": [single]}
        if many is None:
            raise ValueError("user_id or user_ids is required")
        return {**raw, "user_ids": many}

    @field_validator("user_ids", mode="after")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


class BroadcastEvent(_EventFields):
    """``notification.broadcast``: stored for every known user whose preferences allow the type."""


PROFILE_FIELDS: Final = ("email", "name", "locale", "timezone")
_EMAIL_PATTERN: Final = r"^[^@\s<>,;]{1,64}@[^@\s<>,;]{1,190}\.[^@\s<>,;.]{1,63}$"
_LOCALE_PATTERN: Final = r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8}){0,3}$"


def _known_zone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown IANA time zone") from None
    return value


#: How far ahead of the worker's clock a profile's ``changed_at`` may be: clocks drift a little, but a
#: time far ahead would make every later change of the user's profile look older, and be refused.
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)


def _not_ahead(value: datetime) -> datetime:
    if value > datetime.now(UTC) + MAX_CLOCK_SKEW:
        raise ValueError(f"is more than {int(MAX_CLOCK_SKEW.total_seconds())} s ahead of the worker's clock")
    return value


class ProfileEvent(BaseModel):
    """``user.profile``: a user's contact data; a present ``null`` clears a field, an absent key keeps it."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    user_id: UserId = Field(validation_alias=AliasChoices("user_id", "userId"))
    email: Annotated[str, StringConstraints(pattern=_EMAIL_PATTERN, max_length=254)] | None = None
    name: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    locale: Annotated[str, StringConstraints(pattern=_LOCALE_PATTERN)] | None = None
    timezone: Annotated[str | None, AfterValidator(_known_zone)] = None
    #: When the producer's data changed; a field is stored only if no later change of it is (amendment 46).
    changed_at: Annotated[Aware, AfterValidator(_not_ahead)] | None = Field(
        default=None, validation_alias=AliasChoices("changed_at", "changedAt")
    )

    def changes(self) -> dict[str, str | None]:
        """The fields the event carried (``None`` for a present null), by name."""
        return {name: getattr(self, name) for name in PROFILE_FIELDS if name in self.model_fields_set}


Event = SendEvent | BroadcastEvent


def is_valid_user_id(user_id: str) -> bool:
    """Whether ``user_id`` satisfies PROTOCOL §4 (1–128 chars of ``[A-Za-z0-9._:@-]``)."""
    return _USER_ID_RE.fullmatch(user_id) is not None


def validation_reason(error: ValidationError) -> str:
    """Up to three field errors of ``error`` as one ``field: message; ...`` line."""
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_event(body: bytes, routing_key: str | None, message_id: str | None = None) -> Event | ProfileEvent:
    """Validate one AMQP message as a Herald event.

    Args:
        body: the raw message body; parsed as JSON whatever ``content_type`` claims (NestJS sends none).
        routing_key: the AMQP routing key; a NestJS envelope's ``pattern`` takes precedence, and so does
            ``pattern`` when the message came through the default exchange keyed by the queue name.
        message_id: the AMQP ``message_id``, the idempotency key when the body has no ``event_id``.

    Returns:
        A :class:`SendEvent` or :class:`BroadcastEvent`, with ``event_id`` filled from ``message_id``, or a
        :class:`ProfileEvent` for routing key ``user.profile``.

    Raises:
        InvalidEvent: the body is too large, not JSON, not an object, of an unknown kind, or breaks a limit.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEvent(f"body: {len(body)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"body: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("body: must be a JSON object")

    kind = routing_key
    if "pattern" in raw and "data" in raw:
        kind = raw["pattern"] if isinstance(raw["pattern"], str) else None
        raw = raw["data"]
        if not isinstance(raw, dict):
            raise InvalidEvent("data: the envelope's data must be a JSON object")

    if kind == PROFILE_ROUTING_KEY:
        try:
            return ProfileEvent.model_validate(raw)
        except ValidationError as exc:
            raise InvalidEvent(validation_reason(exc)) from None
    model: type[SendEvent] | type[BroadcastEvent]
    if kind == BROADCAST_ROUTING_KEY:
        model = BroadcastEvent
    elif kind == SEND_ROUTING_KEY or kind is None or not kind.startswith("notification."):
        # Through the default exchange the routing key is the queue's name: treat it as a send.
        model = SendEvent
    else:
        # A NestJS envelope's pattern is as long as the body allows: the reason quotes 64 characters.
        raise InvalidEvent(f"routing key: unknown event kind {kind[:64]!r}{'…' if len(kind) > 64 else ''}")

    if message_id and not raw.get("event_id") and not raw.get("eventId"):
        raw = {**raw, "event_id": message_id}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent(validation_reason(exc)) from None
