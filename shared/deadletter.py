"""Dead-letter header rules, spoken by the worker (which dead-letters) and ``herald dlq`` (which replays).

The worker publishes an invalid event to ``herald.dlx`` as a copy of the producer's message plus
``x-herald-error`` (the reason), ``x-herald-routing-key`` and ``x-herald-exchange``. The broker adds
``x-death`` (and ``x-first-death-*`` / ``x-last-death-*``) when it dead-letters after the delivery limit.
A replayed event starts again without any of these headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import aio_pika

from shared.topology import ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, HeadersType

#: Headers that describe a past dead-lettering.
DEAD_LETTER_HEADERS: Final = frozenset(
    {ERROR_HEADER, ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_EXCHANGE_HEADER, "x-death", "x-delivery-count"}
)
DEAD_LETTER_HEADER_PREFIXES: Final = ("x-first-death-", "x-last-death-")


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
