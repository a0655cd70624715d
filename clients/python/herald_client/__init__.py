"""Herald's Python SDK: the async WebSocket client for apps and the event producer for services.

Installs on its own (``pip install ./clients/python``) with no server dependency: ``websockets`` for the
client, ``aio-pika`` and ``orjson`` for the producer.
"""

from herald_client.client import (
    Event,
    HeraldAuthError,
    HeraldClient,
    HeraldClosedError,
    HeraldConnectionError,
    HeraldError,
    HeraldRequestError,
    HeraldTimeoutError,
)
from herald_client.producer import UNSET, InvalidEvent, Producer, PublishError
from herald_client.protocol import CloseCode, ErrorCode, JsonRpcError

__all__ = [
    "UNSET",
    "CloseCode",
    "ErrorCode",
    "Event",
    "HeraldAuthError",
    "HeraldClient",
    "HeraldClosedError",
    "HeraldConnectionError",
    "HeraldError",
    "HeraldRequestError",
    "HeraldTimeoutError",
    "InvalidEvent",
    "JsonRpcError",
    "Producer",
    "PublishError",
]
