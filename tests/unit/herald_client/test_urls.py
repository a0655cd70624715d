"""The SDK refuses a URL it cannot connect with when it is given, instead of retrying it forever."""

from __future__ import annotations

import pytest

from herald_client import HeraldClient, Producer


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("amqp://guest:secret@localhost:notaport/", "Port could not be cast"),
        ("amqp://guest:secret@localhost:99999/", "Port out of range"),
        ("localhost", "scheme must be amqp or amqps"),
        ("http://localhost:5672/", "scheme must be amqp or amqps"),
        ("amqp:///vhost", "names no host"),
    ],
)
def test_a_producer_refuses_a_malformed_amqp_url_without_quoting_it(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        Producer(url)
    assert "secret" not in str(refused.value)


def test_well_formed_urls_are_taken() -> None:
    Producer("amqps://user:pw@broker.example:5671/herald")
    HeraldClient(["ws://127.0.0.1:8765/notifications", "wss://gw.example/notifications"], lambda: "t")


@pytest.mark.parametrize("url", ["http://gw.example/notifications", "ws://gw.example:70000/", "gw.example"])
def test_a_client_refuses_a_malformed_gateway_url(url: str) -> None:
    with pytest.raises(ValueError, match="url: "):
        HeraldClient(["ws://ok.example/notifications", url], lambda: "t")
