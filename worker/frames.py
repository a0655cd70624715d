"""A message whose AMQP properties cannot be decoded reaches its consumer instead of closing the connection.

pamqp decodes a content header strictly: a ``message_id``, ``type`` or header name that is not UTF-8, or
a ``timestamp`` beyond year 9999, raises while the frame is read. aiormq then closes the whole
connection, every consumer on it with it, and RabbitMQ redelivers the message to the next consumer, which
fails the same way. Any producer could stop every worker like that. RabbitMQ relays such properties
unchecked (the AMQP 0-9-1 short string is bytes), so the worker and ``herald-delivery`` read their
content headers through :func:`install`: a header that fails to decode keeps its body size, which the
connection needs to read the body, and gets only the :data:`UNDECODABLE` header in place of its
properties. The consumers dead-letter such a message with a reason (:func:`undecodable`).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import pamqp.frame
from pamqp import commands, exceptions, header

if TYPE_CHECKING:
    from collections.abc import Callable

#: The only header of a message whose properties could not be decoded.
UNDECODABLE = "x-herald-undecodable-properties"
#: The dead-letter reason of such a message.
UNDECODABLE_REASON = "amqp: the message's properties cannot be decoded (a string that is not UTF-8?)"

_CLASS_WEIGHT_SIZE = struct.Struct(">HHQ")  # the content header's fixed start (AMQP 0-9-1 §4.2.6)
_strict: Callable[[bytes], header.ContentHeader] = pamqp.frame._unmarshal_header_frame


def _tolerant_header_frame(frame_data: bytes) -> header.ContentHeader:
    try:
        return _strict(frame_data)
    except exceptions.UnmarshalingException:
        if len(frame_data) < _CLASS_WEIGHT_SIZE.size:
            raise  # not even a body size: the frame itself is broken
        _, weight, body_size = _CLASS_WEIGHT_SIZE.unpack_from(frame_data)
        return header.ContentHeader(weight, body_size, commands.Basic.Properties(headers={UNDECODABLE: True}))


def install() -> None:
    """Read content headers tolerantly in this process (idempotent)."""
    pamqp.frame._unmarshal_header_frame = _tolerant_header_frame


def undecodable(headers: object) -> bool:
    """Whether a delivery's headers (a properties' ``headers``) are those of an undecodable header."""
    return isinstance(headers, dict) and headers.get(UNDECODABLE) is True
