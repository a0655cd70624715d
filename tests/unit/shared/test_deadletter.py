"""Dead-letter header rules: which headers Herald wrote, how large they grow, and where a replay may go."""

from __future__ import annotations

from typing import Any, Final, cast

import pytest
from aio_pika import DeliveryMode, IncomingMessage
from aiormq import spec
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

from shared.deadletter import (
    HEADERS_DROPPED,
    MAX_REASON_CHARS,
    ReplayRefused,
    copy_message,
    dead_letter_copy,
    dead_letter_headers,
    header_frame_bytes,
    replay_destination,
)
from shared.topology import ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, Topology

TOPOLOGY = Topology()
#: RabbitMQ's default ``frame_max``, which every frame (a content header included) must fit.
RABBITMQ_FRAME_MAX: Final = 131072


def test_the_worker_drops_dead_letter_headers_a_producer_sent() -> None:
    incoming: dict[str, Any] = {
        "x-trace": "t-1",
        "x-death": [{"reason": "expired", "exchange": "", "routing-keys": ["herald.rpc"]}],
        "x-first-death-exchange": "",
        ERROR_HEADER: "forged",
        ORIGINAL_EXCHANGE_HEADER: "",
        ORIGINAL_ROUTING_KEY_HEADER: "herald.rpc",
    }
    headers = dead_letter_headers(incoming, "json: not JSON", "herald.events", "notification.send")
    assert headers == {
        "x-trace": "t-1",
        ERROR_HEADER: "json: not JSON",
        ORIGINAL_EXCHANGE_HEADER: "herald.events",
        ORIGINAL_ROUTING_KEY_HEADER: "notification.send",
    }


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [
        ("herald.events", "notification.send"),
        ("herald.events", "notification.broadcast"),
        ("herald.events", "user.deleted"),
        ("", "herald.events"),  # producers that publish to the queue through the default exchange
    ],
)
def test_replays_to_herald_input_are_allowed(exchange: str, routing_key: str) -> None:
    assert replay_destination(exchange, routing_key, TOPOLOGY) == (exchange, routing_key)


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [
        ("", "herald.rpc"),
        ("herald.users", "u1"),
        ("herald.broadcast", ""),
        ("herald.events", "rpc"),
        ("herald.events", "notification"),
        ("", "herald.events.dead"),
        ("amq.topic", "notification.send"),
    ],
)
def test_replays_anywhere_else_are_refused(exchange: str, routing_key: str) -> None:
    with pytest.raises(ReplayRefused):
        replay_destination(exchange, routing_key, TOPOLOGY)


def test_a_long_reason_is_cut_with_an_ellipsis() -> None:
    # A reason can quote its input (a Postgres error, an envelope's pattern): without a cap, an
    # x-herald-error over the broker's frame_max closed the worker's whole connection.
    headers = dead_letter_headers({}, "é" * (MAX_REASON_CHARS + 1), "herald.events", "notification.send")
    assert headers[ERROR_HEADER] == "é" * (MAX_REASON_CHARS - 1) + "…"
    exact = "é" * MAX_REASON_CHARS
    assert dead_letter_headers({}, exact, "herald.events", "notification.send")[ERROR_HEADER] == exact


def rejected(headers: dict[str, Any]) -> IncomingMessage:
    """A delivery from ``herald.events`` with the producer's ``headers``, as the worker reads it."""
    properties = spec.Basic.Properties(headers=headers, message_id="m-1", app_id="producer")
    delivered = DeliveredMessage(
        delivery=spec.Basic.Deliver(
            delivery_tag=1, exchange="herald.events", routing_key="notification.send"
        ),
        header=ContentHeader(properties=properties),
        body=b"{not json",
        channel=cast("Any", None),
    )
    return IncomingMessage(delivered, no_ack=True)


def test_the_copy_keeps_the_producers_headers_when_they_fit() -> None:
    copy = dead_letter_copy(rejected({"x-trace": "t-1"}), "body: not valid JSON", RABBITMQ_FRAME_MAX)
    assert copy.headers == {
        "x-trace": "t-1",
        ERROR_HEADER: "body: not valid JSON",
        ORIGINAL_EXCHANGE_HEADER: "herald.events",
        ORIGINAL_ROUTING_KEY_HEADER: "notification.send",
    }
    assert (copy.body, copy.message_id, copy.app_id) == (b"{not json", "m-1", "producer")
    assert copy.delivery_mode == DeliveryMode.PERSISTENT


def test_the_copy_drops_the_producers_headers_when_they_leave_no_room_in_one_frame() -> None:
    """The producer's headers fit its own frame; with Herald's added they would not, and the broker would
    close the worker's connection over the header frame: the copy goes without them."""
    incoming = rejected({"x-big": "a" * (RABBITMQ_FRAME_MAX - 200)})
    assert header_frame_bytes(copy_message(incoming, incoming.headers)) <= RABBITMQ_FRAME_MAX
    copy = dead_letter_copy(incoming, "é" * MAX_REASON_CHARS, RABBITMQ_FRAME_MAX)
    assert header_frame_bytes(copy) <= RABBITMQ_FRAME_MAX
    assert set(copy.headers) == {ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER}
    reason = str(copy.headers[ERROR_HEADER])
    assert reason.startswith(f"{HEADERS_DROPPED}; éé")
    assert len(reason) == MAX_REASON_CHARS
    assert copy.message_id == "m-1"


def test_a_copy_that_fits_no_frame_is_refused_before_it_reaches_the_broker() -> None:
    with pytest.raises(ValueError, match="do not fit in one frame of 1024 bytes"):
        dead_letter_copy(rejected({}), "\U000f0000" * MAX_REASON_CHARS, 1024)
