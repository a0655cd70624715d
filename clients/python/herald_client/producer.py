"""A small producer for Python services: validated events, published with publisher confirms.

Example::

    async with Producer("amqp://guest:guest@127.0.0.1:5672/") as producer:
        await producer.send("u1", "COURSE_NEW_CONTENT", "New lesson", "Lesson 7 is up")

Every event gets an ``event_id`` (a random one unless given) that is also its AMQP ``message_id``, so a
retried ``send`` after a lost confirm stores nothing twice. ``Producer(..., source="billing")`` scopes
those ids to this producer: another producer's equal ``event_id`` is then a different event.

Publishing raises :class:`InvalidEvent` (checked before anything is sent) or :class:`PublishError` (the
broker did not take the event), nothing else: after a dropped broker connection it waits up to
:data:`RECONNECT_WAIT_SECONDS` for the robust connection to come back and publishes once more.
"""

from __future__ import annotations

import asyncio
import enum
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Self

import aio_pika
import aiormq
import orjson
from aio_pika.exceptions import (
    AMQPChannelError,
    AMQPConnectionError,
    ChannelInvalidStateError,
    DeliveryError,
)

from herald_client.protocol import (
    BROADCAST_ROUTING_KEY,
    CHANNELS,
    MAX_ACTION_LABEL_CHARS,
    MAX_ACTIONS,
    MAX_COLLAPSE_KEY_CHARS,
    MAX_DATA_BYTES,
    MAX_EVENT_ID_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_RECIPIENTS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    PROFILE_ROUTING_KEY,
    SEND_ROUTING_KEY,
    SOURCE_PATTERN,
    TYPE_PATTERN,
    USER_ID_PATTERN,
    events_exchange,
)
from herald_client.urls import url_problem

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection


_USER_ID = re.compile(USER_ID_PATTERN)
_TYPE = re.compile(TYPE_PATTERN)
_SOURCE = re.compile(SOURCE_PATTERN)
#: How long a publish on a dropped broker connection waits for aio-pika's robust connection to be back
#: (it reconnects every 5 s) before :class:`PublishError`.
RECONNECT_WAIT_SECONDS: Final = 15.0
# What a publish raises while the connection or channel is down: aio-pika checks the channel before it
# waits for a reconnect (ChannelInvalidStateError), aiormq fails a publish in flight with the close reason.
_CONNECTION_LOST = (AMQPConnectionError, AMQPChannelError, ChannelInvalidStateError, ConnectionError)


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = enum.auto()


#: A profile field not given to :meth:`Producer.profile`: the stored value is kept (``None`` clears it).
UNSET: Final = Unset.UNSET


class InvalidEvent(ValueError):
    """The event breaks a PROTOCOL §4 rule; the worker would dead-letter it with the same ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PublishError(RuntimeError):
    """The broker did not take the event (unroutable: no worker has declared the input queue yet), the
    events exchange does not exist and this broker user may not declare it, or the broker connection was
    lost and did not come back within :data:`RECONNECT_WAIT_SECONDS`."""


class Producer:
    """Publishes Herald events to the events exchange and waits for the broker's confirm.

    :meth:`send`, :meth:`broadcast` and :meth:`profile` raise :class:`InvalidEvent` or
    :class:`PublishError` only (see the module docstring): a dropped connection is waited out and the
    event published again with the same ``message_id``, which the worker stores once.

    Args:
        amqp_url: RabbitMQ URL.
        prefix: the topology prefix (``HERALD_AMQP_PREFIX``), ``herald`` by default.
        source: this producer's name (1–64 characters of ``[A-Za-z0-9._:-]``), sent as every event's
            ``source``: its ``event_id`` values need to be unique only among its own events.

    Raises:
        InvalidEvent: ``source`` breaks its rule.
        ValueError: ``amqp_url`` is no AMQP URL (its scheme, host or port).
    """

    def __init__(self, amqp_url: str, prefix: str = "herald", source: str | None = None) -> None:
        if source is not None and not _SOURCE.fullmatch(source):
            raise InvalidEvent(f"source: {source!r} must match {SOURCE_PATTERN}")
        problem = url_problem(amqp_url, ("amqp", "amqps"))
        if problem is not None:
            # Checked here: aio-pika's robust connection retries a URL it cannot parse forever.
            raise ValueError(f"amqp_url: {problem}")
        self._source = source
        self._url = amqp_url
        self._exchange_name = events_exchange(prefix)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def __aenter__(self) -> Self:
        connection = self._connection = await aio_pika.connect_robust(self._url)
        try:
            await self._ensure_exchange(connection)
            channel = self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange = await channel.get_exchange(self._exchange_name, ensure=False)
        except BaseException:
            # __aexit__ is not called when __aenter__ fails: a robust connection left open would keep
            # reconnecting for the life of the process.
            self._connection = None
            await connection.close()
            raise
        return self

    async def _ensure_exchange(self, connection: AbstractRobustConnection) -> None:
        """Check that the events exchange exists, and declare it only when it does not.

        A check (a passive declare) needs no broker permission, so a least-privilege producer user, which
        may only write to the exchange, works once a worker has declared it. Declaring it takes configure
        permission, which only an administrator's or a development user has. Each attempt gets its own
        channel, because a failed declare closes the channel it was sent on.
        """
        if await self._exchange_exists(connection):
            return
        declaring = await connection.channel()
        try:
            await declaring.declare_exchange(self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise PublishError(
                f"{self._exchange_name} does not exist and this broker user may not declare it:"
                " start a worker first (it declares the topology)"
            ) from exc
        await declaring.close()

    async def _exchange_exists(self, connection: AbstractRobustConnection) -> bool:
        probe = await connection.channel()
        try:
            await probe.get_exchange(self._exchange_name, ensure=True)  # a passive declare
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False  # the broker closed the probe's channel
        await probe.close()
        return True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Forgotten first: a send after this is refused at once, not waited out as a dropped connection.
        self._channel = self._exchange = None
        if self._connection is not None:
            await self._connection.close()

    async def send(
        self,
        user_ids: str | Iterable[str],
        type: str,
        title: str,
        message: str = "",
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
        channels: Iterable[str] | None = None,
        expires_at: datetime | None = None,
        url: str | None = None,
        actions: list[dict[str, str]] | None = None,
        collapse_key: str | None = None,
    ) -> str:
        """Publish a ``notification.send`` event; return its ``event_id``.

        ``url`` is the click target, ``actions`` up to 3 buttons ``{"id", "label", "url"?}`` (the user's
        choice comes back on ``herald.outcomes``), and ``collapse_key`` groups repeats: an event with the
        key of one of the user's unread notifications updates it in place (PROTOCOL §10).

        Raises:
            InvalidEvent: the event breaks a PROTOCOL §4 rule (checked before anything is sent).
            PublishError: the broker returned the message as unroutable, or the connection stayed lost.
        """
        recipients = [user_ids] if isinstance(user_ids, str) else list(user_ids)
        body: dict[str, Any] = {"user_ids": recipients}
        body.update(self._common(type, title, message, data, event_id, channels, expires_at))
        extras = {"url": url, "actions": actions, "collapse_key": collapse_key}
        body.update({name: value for name, value in extras.items() if value is not None})
        _check_recipients(recipients)
        _check_common(body)
        _check_inbox_fields(body)
        await self._publish(body, SEND_ROUTING_KEY, str(body["event_id"]))
        return str(body["event_id"])

    async def broadcast(
        self,
        type: str,
        title: str,
        message: str = "",
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Publish a ``notification.broadcast`` event for every known user; return its ``event_id``."""
        body = self._common(type, title, message, data, event_id, None, None)
        _check_common(body)
        await self._publish(body, BROADCAST_ROUTING_KEY, str(body["event_id"]))
        return str(body["event_id"])

    async def profile(
        self,
        user_id: str,
        *,
        email: str | Unset | None = UNSET,
        name: str | Unset | None = UNSET,
        locale: str | Unset | None = UNSET,
        timezone: str | Unset | None = UNSET,
        changed_at: datetime | None = None,
    ) -> None:
        """Publish a ``user.profile`` event: the user's contact data for email and push (PROTOCOL §9).

        Args:
            user_id: whose profile.
            email: the address emails go to; ``None`` clears it, not given keeps the stored one.
            name: the name emails greet; ``None`` clears it, not given keeps it.
            locale: a BCP 47 tag such as ``pt-BR``, for the templates; ``None`` clears it, not given keeps it.
            timezone: an IANA zone for quiet hours; ``None`` clears it, not given keeps it.
            changed_at: when this data changed (with a time zone offset); now by default. A field is
                stored only if no later change of it is, so this event, if the broker delivers it again
                after a newer one, does not overwrite the newer data.

        Raises:
            InvalidEvent: a bad ``user_id`` or a ``changed_at`` without an offset (the worker checks the
                fields themselves, and dead-letters an event with a bad one, with its reason).
            PublishError: the broker returned the message as unroutable, or the connection stayed lost.
        """
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise InvalidEvent(f"user_id: {user_id!r} is not a valid user id")
        changed = datetime.now(UTC) if changed_at is None else changed_at
        if changed.tzinfo is None:
            raise InvalidEvent("changed_at: must include a time zone offset")
        fields = {"email": email, "name": name, "locale": locale, "timezone": timezone}
        body: dict[str, Any] = {"user_id": user_id}
        body.update({field: value for field, value in fields.items() if value is not UNSET})
        body["changed_at"] = changed.isoformat()
        await self._publish(body, PROFILE_ROUTING_KEY, uuid.uuid4().hex)

    def _common(
        self,
        type: str,
        title: str,
        message: str,
        data: dict[str, Any] | None,
        event_id: str | None,
        channels: Iterable[str] | None,
        expires_at: datetime | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": event_id or uuid.uuid4().hex,
            "type": type,
            "title": title,
            "message": message,
            "data": {} if data is None else data,
        }
        if self._source is not None:
            body["source"] = self._source
        if channels is not None:
            body["channels"] = sorted(set(channels))
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return body

    async def _publish(self, body: dict[str, Any], routing_key: str, message_id: str) -> None:
        if self._exchange is None or self._channel is None:
            raise RuntimeError("use `async with Producer(...)` before publishing")
        message = aio_pika.Message(
            orjson.dumps(body),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
        )
        exchange, channel = self._exchange, self._channel
        try:
            try:
                await exchange.publish(message, routing_key=routing_key, mandatory=True)
            except _CONNECTION_LOST:
                # The robust connection restores the channel in the background but does not replay a
                # publish. Sent again with the same message_id, the event is still stored once.
                async with asyncio.timeout(RECONNECT_WAIT_SECONDS):
                    await channel.ready()
                await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except DeliveryError as exc:
            raise PublishError(
                f"{self._exchange_name} returned the event as unroutable: "
                "start a worker once so the input queue exists"
            ) from exc
        except (*_CONNECTION_LOST, TimeoutError) as exc:
            raise PublishError(
                f"the broker connection was lost (waited up to {RECONNECT_WAIT_SECONDS:g}s for it): "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _check_recipients(recipients: list[str]) -> None:
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise InvalidEvent(f"user_ids: give 1 to {MAX_RECIPIENTS} recipients")
    for user_id in recipients:
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise InvalidEvent(f"user_ids: {user_id!r} is not a valid user id")


def _check_common(body: dict[str, Any]) -> None:
    # The worker's rules for the fields a producer sets here, so a mistake is reported at once instead of
    # surfacing in the dead-letter queue; the worker still validates everything (shared/events.py).
    if not _TYPE.fullmatch(body["type"]):
        raise InvalidEvent(f"type: {body['type']!r} must match {TYPE_PATTERN}")
    if not 1 <= len(body["title"]) <= MAX_TITLE_CHARS:
        raise InvalidEvent(f"title: must be 1 to {MAX_TITLE_CHARS} characters")
    if len(body["message"]) > MAX_MESSAGE_CHARS:
        raise InvalidEvent(f"message: must be at most {MAX_MESSAGE_CHARS} characters")
    if len(body["event_id"].encode("utf-8", "surrogatepass")) > MAX_EVENT_ID_BYTES:
        raise InvalidEvent(f"event_id: must be at most {MAX_EVENT_ID_BYTES} bytes in UTF-8")
    if not isinstance(body["data"], dict):
        raise InvalidEvent("data: must be a JSON object (a dict)")
    if len(orjson.dumps(body["data"])) > MAX_DATA_BYTES:
        raise InvalidEvent(f"data: must serialize to at most {MAX_DATA_BYTES} bytes")
    unknown = [name for name in body.get("channels", ()) if name not in CHANNELS]
    if unknown:
        raise InvalidEvent(f"channels: {unknown!r} not among {', '.join(CHANNELS)}")


def _check_url(field: str, url: object) -> None:
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > MAX_URL_CHARS:
        raise InvalidEvent(f"{field}: must be an http(s) URL of at most {MAX_URL_CHARS} characters")


def _check_inbox_fields(body: dict[str, Any]) -> None:
    # The outline of PROTOCOL §10's limits (the worker parses URLs fully and checks action ids).
    if "url" in body:
        _check_url("url", body["url"])
    actions = body.get("actions", [])
    if len(actions) > MAX_ACTIONS:
        raise InvalidEvent(f"actions: at most {MAX_ACTIONS}")
    for index, action in enumerate(actions):
        if not 1 <= len(action.get("label", "")) <= MAX_ACTION_LABEL_CHARS:
            raise InvalidEvent(f"actions.{index}.label: must be 1 to {MAX_ACTION_LABEL_CHARS} characters")
        if "url" in action:
            _check_url(f"actions.{index}.url", action["url"])
    if len(body.get("collapse_key", "")) > MAX_COLLAPSE_KEY_CHARS:
        raise InvalidEvent(f"collapse_key: must be at most {MAX_COLLAPSE_KEY_CHARS} characters")
