"""``Producer.send`` / ``broadcast`` refuse what the worker would dead-letter before publishing anything
(herald_client/producer.py): a channel outside PROTOCOL §4's, ``data`` that is no JSON object."""

from __future__ import annotations

from typing import Any

import pytest

from herald_client.producer import InvalidEvent, Producer


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> tuple[Producer, list[dict[str, Any]]]:
    """A producer whose publishing only records the bodies it would have sent (no broker)."""
    producer = Producer("amqp://guest:guest@127.0.0.1:5672/")
    bodies: list[dict[str, Any]] = []

    async def record(body: dict[str, Any], routing_key: str, message_id: str) -> None:
        bodies.append(body)

    monkeypatch.setattr(producer, "_publish", record)
    return producer, bodies


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"channels": ["sms"]}, "channels"),
        ({"channels": ["email", "fax"]}, "channels"),
        ({"data": [1]}, "data"),
        ({"data": []}, "data"),
        ({"data": "text"}, "data"),
    ],
)
async def test_send_refuses_unknown_channels_and_data_that_is_no_object(
    published: tuple[Producer, list[dict[str, Any]]], fields: dict[str, Any], field: str
) -> None:
    producer, bodies = published
    with pytest.raises(InvalidEvent, match=f"^{field}:"):
        await producer.send("u1", "GRADE_RELEASED", "Graded", **fields)
    assert bodies == []


async def test_broadcast_refuses_data_that_is_no_object(
    published: tuple[Producer, list[dict[str, Any]]],
) -> None:
    producer, bodies = published
    with pytest.raises(InvalidEvent, match=r"^data:"):
        await producer.broadcast("MAINTENANCE", "Tonight", data=[1])  # type: ignore[arg-type]
    assert bodies == []


async def test_send_publishes_known_channels_and_an_object(
    published: tuple[Producer, list[dict[str, Any]]],
) -> None:
    producer, bodies = published
    await producer.send("u1", "GRADE_RELEASED", "Graded", channels=["push", "in_app"], data={"grade": 5})
    [body] = bodies
    assert body["channels"] == ["in_app", "push"]
    assert body["data"] == {"grade": 5}
