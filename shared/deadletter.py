"""Dead-letter header rules, spoken by the worker (which dead-letters) and ``herald dlq`` (which replays).

The worker publishes an invalid event to ``herald.dlx`` as a copy of the producer's message plus
``x-herald-error`` (the reason), ``x-herald-routing-key`` and ``x-herald-exchange``
(:func:`dead_letter_copy`). The broker adds ``x-death`` (and ``x-first-death-*`` / ``x-last-death-*``)
when it dead-letters after the delivery limit or an expiry. A replayed event starts again without any of
these headers.

A producer can set any header, so none of them is trusted blindly:

- the worker drops every dead-letter header the producer's message carried before adding its own, so a
  dead letter *without* ``x-death`` carries only headers the worker wrote; one *with* ``x-death`` was
  dead-lettered by the broker, and any ``x-herald-*`` on it came from the producer and is ignored;
- whatever the headers say, a replay goes only to Herald's input (:func:`replay_destination`): the events
  exchange with a ``notification.*`` or ``user.*`` routing key, or the events queue through the default
  exchange. A letter naming anything else (``herald.rpc``, another exchange) is refused and stays put.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import aio_pika
from pamqp.header import ContentHeader

from shared.topology import ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aio_pika.abc import AbstractIncomingMessage, HeadersType

    from shared.topology import Topology

#: Headers that describe a past dead-lettering.
DEAD_LETTER_HEADERS: Final = frozenset(
    {ERROR_HEADER, ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_EXCHANGE_HEADER, "x-death", "x-delivery-count"}
)
DEAD_LETTER_HEADER_PREFIXES: Final = ("x-first-death-", "x-last-death-")
#: Routing keys a replay may use on the events exchange (what producers publish Herald events under).
REPLAYABLE_ROUTING_PREFIXES: Final = ("notification.", "user.")
#: The longest ``x-herald-error``, in characters. A reason can quote its input (a Postgres error, an
#: envelope's ``pattern``), which only the message's size bounds, and the header must stay readable.
MAX_REASON_CHARS: Final = 1000
#: An AMQP frame's bytes around its payload: type, channel and size before it, the frame-end octet after.
FRAME_OVERHEAD: Final = 8
#: Leads the reason of a copy without the producer's headers, where the cap (it cuts the end) keeps it.
HEADERS_DROPPED: Final = "headers: the producer's were dropped (no room for them in one AMQP frame)"


class ReplayRefused(ValueError):
    """A dead letter names a destination that is not Herald's input; it is not replayed."""


def is_dead_letter_header(name: str) -> bool:
    """Whether ``name`` was added by a dead-lettering (the worker's or the broker's)."""
    return name in DEAD_LETTER_HEADERS or name.startswith(DEAD_LETTER_HEADER_PREFIXES)


def copy_message(
    message: AbstractIncomingMessage,
    headers: HeadersType,
    delivery_mode: aio_pika.DeliveryMode | int | None = None,
) -> aio_pika.Message:
    """``message``'s body and properties with ``headers`` (and ``delivery_mode`` when given).

    Used both to dead-letter an event (the worker) and to replay it (``herald dlq``), so a replayed event
    is the producer's original. ``expiration`` is dropped (a copy is published long after the original)
    and so is ``user_id`` (the broker checks it against the publishing connection's user).
    """
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode if delivery_mode is None else delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def replay_message(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A copy of ``message`` to publish again: same body and properties, no dead-lettering headers."""
    headers = {key: value for key, value in (message.headers or {}).items() if not is_dead_letter_header(key)}
    return copy_message(message, headers)


def bounded_reason(reason: str) -> str:
    """``reason`` as a dead letter carries it: at most :data:`MAX_REASON_CHARS`, ending in "…" if cut."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "…"


def dead_letter_headers(
    incoming: Mapping[str, Any], reason: str, exchange: str, routing_key: str
) -> dict[str, Any]:
    """The headers of the worker's copy of a rejected event: the producer's own headers, minus any
    dead-letter header it sent (so none can be forged), plus the reason (:func:`bounded_reason`) and
    where the event came from."""
    headers = {key: value for key, value in incoming.items() if not is_dead_letter_header(key)}
    headers[ERROR_HEADER] = bounded_reason(reason)
    headers[ORIGINAL_ROUTING_KEY_HEADER] = routing_key
    headers[ORIGINAL_EXCHANGE_HEADER] = exchange
    return headers


def header_frame_bytes(message: aio_pika.Message) -> int:
    """The size of ``message``'s content header frame (its properties, headers included) on the wire."""
    return len(ContentHeader(0, len(message.body), message.properties).marshal()) + FRAME_OVERHEAD


def dead_letter_copy(message: AbstractIncomingMessage, reason: str, frame_max: int) -> aio_pika.Message:
    """The worker's copy of a rejected event for ``herald.dlx``: persistent, with :func:`dead_letter_headers`.

    A body is split over as many frames as it takes, but the content header must fit in one of the
    connection's ``frame_max`` bytes: the broker closes the whole connection on a larger one. When the
    producer's own headers leave no room for Herald's, the copy goes without them (the reason says so),
    instead of the event coming back at every redelivery.

    Raises:
        ValueError: not even that copy fits (its other properties are each at most 255 bytes: only a
            ``frame_max`` near RabbitMQ's minimum, 4096, can be that small).
    """
    exchange, routing_key = message.exchange or "", message.routing_key or ""
    headers = dead_letter_headers(message.headers or {}, reason, exchange, routing_key)
    copy = copy_message(message, headers, aio_pika.DeliveryMode.PERSISTENT)
    if header_frame_bytes(copy) <= frame_max:
        return copy
    headers = dead_letter_headers({}, f"{HEADERS_DROPPED}; {reason}", exchange, routing_key)
    copy = copy_message(message, headers, aio_pika.DeliveryMode.PERSISTENT)
    if header_frame_bytes(copy) > frame_max:
        raise ValueError(f"the dead letter's properties do not fit in one frame of {frame_max} bytes")
    return copy


def replay_destination(exchange: str, routing_key: str, topology: Topology) -> tuple[str, str]:
    """``(exchange, routing_key)`` when a replay there reaches only Herald's input queue.

    Raises:
        ReplayRefused: any other destination (the RPC queue, another exchange, an unexpected key).
    """
    names_an_event = routing_key.startswith(REPLAYABLE_ROUTING_PREFIXES) and not routing_key.endswith(".")
    to_events_exchange = exchange == topology.events_exchange and names_an_event
    to_events_queue = exchange == "" and routing_key == topology.events_queue
    if to_events_exchange or to_events_queue:
        return exchange, routing_key
    raise ReplayRefused(
        f"destination {exchange or '(default exchange)'!s} / {routing_key!r} is not Herald's input "
        f"({topology.events_exchange} with notification.* or user.*)"
    )
