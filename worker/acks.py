"""Settling deliveries of the input queue: one ``basic.ack(multiple=True)`` per committed prefix.

Acking each event costs a frame per event; ``multiple=True`` acks every outstanding delivery up to a tag
at once, which is only safe for a prefix of deliveries that are *all* settled: batches commit and publish
concurrently, and an unsettled delivery under an acked tag would be lost in a crash.

Delivery tags are consecutive integers per channel, so :class:`AckTracker` keeps the last acked tag and the
set of settled tags above it, and acks only when the run of consecutive settled tags grows. A tag that is
not yet settled (still in a batch, or not yet handed to the batcher) stops the run, whatever the order in
which handlers happened to run. Tags restart at 1 on a new channel (a reconnect), so the tracker keeps
one state per channel object; a closed channel's deliveries are requeued by RabbitMQ and redelivered.

A broadcast is stored chunk by chunk and settled only after its last chunk, seconds later; a request on
``herald.rpc`` may run long too (``worker.rpc.SLOW_REQUEST_SECONDS``). Such a tag is
*held* (:meth:`AckTracker.hold`): while a held tag stops the run, the deliveries settled above it are acked
one by one (``multiple=False``), so they neither wait for it nor fill the prefetch window.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiormq

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiormq.abc import AbstractChannel

# What acking on a channel that just closed raises; the deliveries come back anyway.
CLOSED_CHANNEL_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


class _ChannelState:
    __slots__ = ("acked", "gone", "held", "lock", "settled")

    def __init__(self) -> None:
        self.acked = 0
        self.settled: set[int] = set()
        # Nacked, or acked alone: the broker no longer knows these tags, so no multiple-ack may name one.
        self.gone: set[int] = set()
        # Unsettled for long (a broadcast in progress); see the module docstring.
        self.held: set[int] = set()
        # Acks must leave in tag order: a multiple-ack for a lower tag sent after a higher one names an
        # already-acked tag, and the broker closes the channel (PRECONDITION_FAILED unknown delivery tag).
        self.lock = asyncio.Lock()


class AckTracker:
    """Acks settled deliveries of one consumer, in contiguous runs, with ``multiple=True``."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[AbstractChannel, _ChannelState] = {}

    def _state(self, channel: AbstractChannel) -> _ChannelState:
        state = self._channels.get(channel)
        if state is None:
            # Forget channels that closed: their unacked deliveries were requeued by the broker.
            for old in [c for c in self._channels if c.is_closed]:
                del self._channels[old]
            state = self._channels[channel] = _ChannelState()
        return state

    def hold(self, channel: AbstractChannel, tag: int) -> None:
        """Mark ``tag`` as a delivery that stays unsettled for long; it is released when it is settled."""
        self._state(channel).held.add(tag)

    async def settle(self, channel: AbstractChannel, tags: Iterable[int]) -> None:
        """Mark ``tags`` (acked or already nacked) as done and ack the grown contiguous prefix.

        The ack names the highest tag of the run the broker still knows (acking a nacked tag closes the
        channel: PRECONDITION_FAILED unknown delivery tag); a run of such tags alone sends nothing. While a
        tag is held, every settled tag above the run is acked on its own.
        """
        state = self._state(channel)
        done = set(tags)
        state.settled |= done
        state.held -= done
        async with state.lock:
            top = state.acked
            ackable = 0
            while top + 1 in state.settled:
                top += 1
                state.settled.discard(top)
                if top in state.gone:
                    state.gone.discard(top)
                else:
                    ackable = top
            state.acked = top
            with contextlib.suppress(*CLOSED_CHANNEL_ERRORS):
                if ackable:
                    await channel.basic_ack(ackable, multiple=True)
                if state.held:
                    for tag in sorted(state.settled - state.gone):
                        await channel.basic_ack(tag, multiple=False)
                        state.gone.add(tag)

    async def requeue(self, channel: AbstractChannel, tags: Iterable[int]) -> None:
        """Nack ``tags`` with requeue (the quorum queue counts it against ``x-delivery-limit``)."""
        done = []
        for tag in tags:
            with contextlib.suppress(*CLOSED_CHANNEL_ERRORS):
                await channel.basic_nack(tag, multiple=False, requeue=True)
            done.append(tag)
        self._state(channel).gone.update(done)
        await self.settle(channel, done)
