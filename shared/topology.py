"""AMQP names and arguments of Herald's topology (PROTOCOL §3), derived from one prefix.

Only names and argument tables live here, so producers, the worker, the gateway and the CLI agree on them
without sharing any I/O code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from herald_client.protocol import (
    BROADCAST_ROUTING_KEY,
    PROFILE_ROUTING_KEY,
    SEND_ROUTING_KEY,
    events_exchange,
)

__all__ = [
    "BROADCAST_CRITICAL_HEADER",
    "BROADCAST_ROUTING_KEY",
    "BROADCAST_TYPE_HEADER",
    "ERROR_HEADER",
    "EVENTS_BINDING_KEY",
    "ORIGINAL_EXCHANGE_HEADER",
    "ORIGINAL_ROUTING_KEY_HEADER",
    "PROFILE_ROUTING_KEY",
    "SEND_ROUTING_KEY",
    "Topology",
]

EVENTS_BINDING_KEY: Final = "notification.#"
ERROR_HEADER: Final = "x-herald-error"
ORIGINAL_ROUTING_KEY_HEADER: Final = "x-herald-routing-key"
ORIGINAL_EXCHANGE_HEADER: Final = "x-herald-exchange"
# Broadcast frames carry their notification type (and whether it is critical) as headers, so gateways
# filter them by the user's in-app switches without parsing the body.
BROADCAST_TYPE_HEADER: Final = "x-herald-type"
BROADCAST_CRITICAL_HEADER: Final = "x-herald-critical"


@dataclass(frozen=True, slots=True)
class Topology:
    """Every exchange and queue name, built from ``HERALD_AMQP_PREFIX`` (default ``herald``)."""

    prefix: str = "herald"

    @property
    def events_exchange(self) -> str:
        """Durable topic exchange producers publish to."""
        return events_exchange(self.prefix)

    @property
    def events_queue(self) -> str:
        """Durable quorum queue, the worker's input; dead-letters to :attr:`dead_letter_exchange`."""
        return f"{self.prefix}.events"

    @property
    def dead_letter_exchange(self) -> str:
        """Fanout exchange receiving rejected events."""
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        """Durable queue holding rejected events with their ``x-herald-error`` reason."""
        return f"{self.prefix}.events.dead"

    @property
    def users_exchange(self) -> str:
        """Durable direct exchange; routing key = user id; the worker's live in-app frames."""
        return f"{self.prefix}.users"

    @property
    def broadcast_exchange(self) -> str:
        """Durable fanout exchange for frames addressed to everyone."""
        return f"{self.prefix}.broadcast"

    @property
    def deliveries_exchange(self) -> str:
        """Durable topic exchange, keys ``email`` and ``push``, for external senders."""
        return f"{self.prefix}.deliveries"

    def delivery_queue(self, channel: str) -> str:
        """The ``herald-delivery`` input queue of one channel (``email`` or ``push``), bound by that key."""
        return f"{self.prefix}.deliveries.{channel}"

    @property
    def deliveries_dead_queue(self) -> str:
        """Durable queue of jobs that failed for good, with their ``x-herald-error`` reason."""
        return f"{self.prefix}.deliveries.dead"

    @property
    def outcomes_exchange(self) -> str:
        """Durable topic exchange, routing key = the notification type: the actions users took."""
        return f"{self.prefix}.outcomes"

    @property
    def rpc_queue(self) -> str:
        """Queue of gateway → worker requests."""
        return f"{self.prefix}.rpc"

    def user_exchange(self, user_id: str) -> str:
        """The per-user fanout exchange a gateway owns while the user is connected to it."""
        return f"{self.prefix}.user.{user_id}"

    def events_queue_arguments(self, delivery_limit: int) -> dict[str, str | int]:
        """Arguments of the input queue; they must match everywhere it is declared."""
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": delivery_limit,
        }
