"""Client requests forwarded by gateways over ``herald.rpc`` (docs/protocol.md §5; wire format: amendment 3).

A gateway publishes ``{"method", "params", "user_id", "admin"}`` with ``reply_to`` and ``correlation_id``;
this module answers with exactly :func:`shared.jsonrpc.rpc_result` or :func:`shared.jsonrpc.rpc_error` bytes,
published to ``reply_to`` with the request's ``correlation_id`` (:class:`RpcConsumer`). The methods themselves
live in :mod:`worker.requests`; this module is transport and error mapping only.

No exception escapes a handler: a bad envelope is -32600, an unknown method -32601, bad params -32602 with
``data`` naming the offending field, a database that cannot be reached 5003, anything else -32603
(logged with its traceback). Every answer is counted in ``herald_worker_requests_total{method, outcome}``
and timed in ``herald_worker_request_seconds{method}``. The request is acked in every case: a redelivered
request would run again for a gateway that stopped waiting (``expiration`` drops requests nobody waits
for any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Annotated, Any, Final, cast

import orjson
import structlog
from aiormq import spec
from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue, RabbitResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from shared.events import USER_ID_PATTERN
from shared.jsonrpc import ErrorCode, JsonRpcError, rpc_error, rpc_result
from worker.acks import CLOSED_CHANNEL_ERRORS, AckTracker
from worker.amqp import raw_body
from worker.consumers import QueueConsumer
from worker.requests.common import Caller, invalid_params
from worker.requests.registry import METHODS
from worker.store.pool import is_outage

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    import aiormq
    from aiormq.abc import AbstractChannel, DeliveredMessage

    from shared.settings import Settings
    from shared.topology import Topology
    from worker.runtime import Runtime

log = structlog.get_logger(__name__)

_JSON: Final = "application/json"

REQUESTS: Final = Counter(
    "herald_worker_requests",
    "Client requests answered, by method (``unknown`` for methods that do not exist) and outcome "
    "(``ok`` or the JSON-RPC error code).",
    ["method", "outcome"],
)
REQUEST_SECONDS: Final = Histogram(
    "herald_worker_request_seconds",
    "Time to answer one request in the worker (SQL and event publish included).",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class Envelope(BaseModel):
    """A gateway's request: the client's method and params plus the verified caller."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    method: str = Field(min_length=1, max_length=100)
    params: Any = Field(default_factory=dict)
    user_id: str = Field(pattern=USER_ID_PATTERN)
    admin: bool = False


# The handler validates the raw body itself (a bad envelope is a -32600 reply, not a dropped message);
# the annotation documents the shape in the AsyncAPI document.
RequestBody = Annotated[
    bytes,
    WithJsonSchema(
        {
            **Envelope.model_json_schema(),
            "description": "A client request forwarded by a gateway with the verified caller. The reply "
            '(to reply_to, same correlation_id) is exactly {"result": ...} or {"error": {code, message, '
            "data?}}.",
        }
    ),
]


def document_requests(settings: Settings, topology: Topology, runtime: Callable[[], Runtime]) -> RabbitBroker:
    """A broker that never connects, carrying the ``herald.rpc`` subscriber for the AsyncAPI document.

    Requests are consumed by :class:`RpcConsumer`, not by FastStream: its per-message machinery (parser,
    middlewares, fast-depends) and its reply publish were most of the worker's time per request
    (docs/performance.md). The subscriber here has the queue, channel settings and body schema of that
    consumer, and its handler answers exactly as the consumer does.
    """
    broker = RabbitBroker(settings.amqp_url, logger=None)
    queue = RabbitQueue(topology.rpc_queue, durable=True, auto_delete=False)

    @broker.subscriber(
        queue,
        channel=Channel(prefetch_count=settings.rpc_prefetch),
        ack_policy=AckPolicy.ACK,
        decoder=raw_body,
        title="herald.rpc",
        description="Client requests forwarded by gateways; replies go to reply_to.",
    )
    async def answer_request(body: RequestBody) -> RabbitResponse:
        return RabbitResponse(await handle_request(runtime(), body), content_type=_JSON, mandatory=False)

    return broker


class RpcConsumer(QueueConsumer):
    """The ``herald.rpc`` consumer: a channel of its own, so requests never wait behind event batches.

    ``settings.rpc_prefetch`` bounds how many requests one worker answers at once; the channel has no
    publisher confirms (a reply nobody can receive any more is not worth a confirm). The reply goes
    straight to aiormq with ``wait=False`` (aio-pika's ``Exchange.publish`` holds the channel lock until
    the frame is flushed), and the acks of requests answered in the same turn of the event loop leave as
    one ``basic.ack(multiple=True)`` (:class:`worker.acks.AckTracker`); a request still running after
    :data:`SLOW_REQUEST_SECONDS` is held, so the requests answered after it are acked on their own. The
    queue is durable and classic with no arguments, as every declarer agrees (channel and callback:
    :mod:`worker.consumers`). Only requests whose broker-validated AMQP ``user_id`` is a trusted broker
    user (``HERALD_RPC_TRUSTED_USERS``, default: the worker's own) are served; others get 4003.
    """

    def __init__(self, settings: Settings, topology: Topology, runtime: Callable[[], Runtime]) -> None:
        super().__init__()
        self._settings = settings
        self._queue_name = topology.rpc_queue
        self._runtime = runtime
        self._acks = AckTracker()
        self._answered: dict[AbstractChannel, list[int]] = {}

    async def start(self, broker: RabbitBroker) -> None:
        """Declare ``herald.rpc`` on a channel of ``broker``'s connection and start consuming."""
        await self._consume(
            broker,
            self._settings.rpc_prefetch,
            lambda channel: channel.declare_queue(self._queue_name, durable=True, auto_delete=False),
            self._on_request,
        )

    def _on_request(self, message: DeliveredMessage) -> Coroutine[Any, Any, None]:
        return self._answer(message)

    async def _answer(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        channel = cast("aiormq.Channel", message.channel)  # the abstract type lacks ``wait``
        # Only a trusted broker user's requests run: the broker validated ``user_id`` against the
        # publishing connection, so anyone else who can reach the default exchange gets 4003.
        if self._settings.rpc_caller_trusted(properties.user_id):
            tag = message.delivery_tag
            slow = None
            if tag is not None:
                slow = asyncio.get_running_loop().call_later(SLOW_REQUEST_SECONDS, self._hold, channel, tag)
            try:
                reply = await handle_request(self._runtime(), message.body)
            finally:
                if slow is not None:
                    slow.cancel()
        else:
            reply = refuse_untrusted(properties.user_id)
        with contextlib.suppress(*CLOSED_CHANNEL_ERRORS):
            if properties.reply_to:
                # mandatory=False: a gateway that went away leaves nobody to route the reply to.
                await channel.basic_publish(
                    reply,
                    exchange="",
                    routing_key=properties.reply_to,
                    properties=spec.Basic.Properties(
                        content_type=_JSON, correlation_id=properties.correlation_id
                    ),
                    mandatory=False,
                    wait=False,
                )
        answered = self._answered.get(channel)
        if answered is None:
            answered = self._answered[channel] = []
            asyncio.get_running_loop().call_soon(self._settle, channel)
        if message.delivery_tag is not None:
            answered.append(message.delivery_tag)

    def _settle(self, channel: AbstractChannel) -> None:
        self._spawn(self._acks.settle(channel, self._answered.pop(channel, [])))

    def _hold(self, channel: AbstractChannel, tag: int) -> None:
        """A request still running: the requests answered after it are acked on their own from now on
        (and those answered already, at once), so it does not hold up the prefetch window."""
        self._acks.hold(channel, tag)
        self._spawn(self._acks.settle(channel, ()))


#: A request running longer than this is *held* (worker.acks): the acks of the requests answered after it
#: leave one by one instead of waiting for its tag, which a multiple-ack cannot pass. Otherwise one slow
#: request (a lock wait, a long mark_all_read) would leave the requests answered behind it unacked, and
#: RabbitMQ would deliver this worker nothing more once they filled ``HERALD_RPC_PREFETCH``.
SLOW_REQUEST_SECONDS: Final = 0.05


def refuse_untrusted(publisher: str | None) -> bytes:
    """The reply to a request whose publisher is not a trusted broker user; logged and counted."""
    log.warning("rpc_refused_untrusted_publisher", amqp_user_id=publisher)
    REQUESTS.labels("untrusted", str(int(ErrorCode.FORBIDDEN))).inc()
    return rpc_error(
        ErrorCode.FORBIDDEN, "forbidden: requests are served only from the gateways' broker user"
    )


async def handle_request(runtime: Runtime, body: bytes) -> bytes:
    """Run one request body and return the reply body; never raises. Counted in the request metrics."""
    started = time.perf_counter()
    method, code, reply = await _answer(runtime, body)
    REQUESTS.labels(method, "ok" if code is None else str(code)).inc()
    REQUEST_SECONDS.labels(method).observe(time.perf_counter() - started)
    return reply


async def _answer(runtime: Runtime, body: bytes) -> tuple[str, int | None, bytes]:
    """(method label, error code or ``None``, reply body). Unknown methods are labelled ``unknown``."""
    try:
        envelope = Envelope.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        return _error("invalid", ErrorCode.INVALID_REQUEST, f"invalid request: {_first_line(exc)}")
    method = METHODS.get(envelope.method)
    if method is None:
        return _error("unknown", ErrorCode.METHOD_NOT_FOUND, f"method not found: {envelope.method}")
    name = envelope.method
    if method.admin_only and not envelope.admin:
        return _error(name, ErrorCode.FORBIDDEN, "forbidden: admin only")
    caller = Caller(user_id=envelope.user_id, admin=envelope.admin)
    try:
        # JSON-RPC allows omitting params; a method without params takes {}.
        params = method.params.model_validate({} if envelope.params is None else envelope.params)
        result = await method.run(runtime, caller, params)
    except ValidationError as exc:
        error = invalid_params(exc, method.params)
        return _error(name, error.code, error.message, error.data)
    except JsonRpcError as exc:
        return _error(name, exc.code, exc.message, exc.data)
    except Exception as exc:
        if is_outage(exc):
            log.warning("rpc_unavailable", method=name, exc_info=True)
            return _error(
                name, ErrorCode.UNAVAILABLE, "unavailable: the database cannot be reached, try again"
            )
        log.exception("rpc_failed", method=name, user_id=envelope.user_id)
        return _error(name, ErrorCode.INTERNAL_ERROR, "internal error")
    return name, None, rpc_result(result)


def _first_line(error: Exception) -> str:
    # pydantic's messages run over several lines; the first names what is wrong.
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _error(method: str, code: int, message: str, data: Any = None) -> tuple[str, int, bytes]:
    return method, int(code), rpc_error(code, message, data)
