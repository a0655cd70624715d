"""Dead-letter header rules: which headers Herald wrote, and where a replay may go."""

from __future__ import annotations

from typing import Any

import pytest

from shared.deadletter import ReplayRefused, dead_letter_headers, replay_destination
from shared.topology import ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, Topology

TOPOLOGY = Topology()


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
