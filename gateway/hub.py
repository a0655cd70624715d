"""Users ↔ local connections, per-user attach/detach, and the relay of frames from the broker.

Each user with a connection here has a :class:`UserSlot`: its connections, a lock serializing its topology
work, the broker generation it is attached in, and its cached in-app switches for broadcasts. Topology
calls happen once per user per process (first connection attaches, last one detaches), not per connection.

A connection is *pending* from the moment it is admitted (its user's exchange is being bound and
``session.open`` asked) until ``connected`` was written; frames arriving meanwhile are buffered and
written right after ``connected``, so nothing committed after the worker read ``last_seq`` is missed and
nothing precedes ``connected``. Then it is *live*: relayed frames are written to it synchronously with
:func:`websockets.broadcast`, byte for byte as the worker published them. A live connection whose
transport holds more than ``send_buffer_bytes`` unsent bytes is dropped from the relay at once and closed
with 1013; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
import structlog
from websockets.asyncio.server import broadcast
from websockets.protocol import State

from gateway.background import spawn
from gateway.errors import GatewayError
from gateway.limits import TokenBucket, UserLimits, admission_close_code, lagging
from gateway.timers import drop
from shared.jsonrpc import CloseCode, notification_frame
from shared.preferences import channel_enabled

if TYPE_CHECKING:
    from collections.abc import Iterator

    from websockets.asyncio.server import ServerConnection

    from gateway.metrics import Metrics

log = structlog.get_logger("gateway.hub")

SYNC_REQUIRED: Final = notification_frame("sync:required", {})
PREFERENCES_UPDATED: Final = "preferences:updated"
#: Frames buffered for a pending connection; past this it gets ``sync:required`` instead.
PENDING_FRAMES_CAP: Final = 256


class UserTopology(Protocol):
    """What the hub needs from the broker link (see :class:`gateway.broker.BrokerLink`)."""

    @property
    def generation(self) -> int:
        """Increments at every successful (re)connect; 0 while never connected."""
        ...

    @property
    def ready(self) -> bool: ...

    async def attach(self, user_id: str) -> int:
        """Declare the user's exchange and bind it both ways; the generation whose queue it bound.

        Raises :class:`GatewayError` on failure."""
        ...

    async def detach(self, user_id: str, generation: int) -> None:
        """Unbind the process queue from the user's exchange, if still attached in ``generation``."""
        ...


@dataclass(frozen=True, slots=True)
class InAppFilter:
    """A user's in-app switches, as far as broadcasts need them. Sans-I/O."""

    master: bool = True
    off_types: frozenset[str] = frozenset()

    @classmethod
    def from_document(cls, document: Any) -> InAppFilter:
        """From an effective Preferences document; anything unreadable counts as "on" (the default)."""
        if not isinstance(document, dict):
            return ALL_ON
        channels = document.get("channels")
        master = not (isinstance(channels, dict) and channels.get("in_app") is False)
        types = document.get("types")
        off = (
            frozenset(t for t, s in types.items() if isinstance(s, dict) and s.get("in_app") is False)
            if isinstance(types, dict)
            else frozenset()
        )
        # Most users keep the defaults: share one instance rather than hold one per user.
        return ALL_ON if master and not off else cls(master, off)

    def allows(self, notification_type: str | None, critical: bool = False) -> bool:
        """Whether a broadcast of ``notification_type`` is relayed; critical types always are."""
        return channel_enabled(
            "in_app",
            master=self.master,
            type_switch=notification_type not in self.off_types,
            critical=critical,
        )


ALL_ON: Final = InAppFilter()


@dataclass(slots=True, eq=False)
class UserSlot:
    """One user's local state; see the module docstring. ``bucket`` and ``requests`` are the user's
    shared rate budget and in-flight cap on this gateway (:class:`~gateway.limits.UserLimits`)."""

    user_id: str
    bucket: TokenBucket
    requests: asyncio.Semaphore
    live: set[ServerConnection] = field(default_factory=set)
    #: pending connection → frames to write after ``connected`` (``None`` once the cap overflowed).
    pending: dict[ServerConnection, list[bytes] | None] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    attached_generation: int = 0
    prefs: InAppFilter = ALL_ON
    #: ``preferences:updated`` frames relayed so far: tells a ``session.open`` read from before one apart.
    prefs_version: int = 0

    @property
    def connection_count(self) -> int:
        return len(self.live) + len(self.pending)


def _pop_pending(slot: UserSlot, connection: ServerConnection) -> list[bytes] | None:
    buffered = slot.pending.pop(connection, [])
    if not slot.pending:
        # A dict keeps its table after its last pop; an empty literal shares the interpreter's.
        slot.pending = {}
    return buffered


class Hub:
    """The user registry and the relay; one per process."""

    def __init__(
        self,
        topology: UserTopology,
        metrics: Metrics,
        send_buffer_bytes: int,
        max_per_user: int,
        user_limits: UserLimits,
    ) -> None:
        self.users: dict[str, UserSlot] = {}
        self._topology = topology
        self._metrics = metrics
        self._buffer_limit = send_buffer_bytes
        self._max_per_user = max_per_user
        self._user_limits = user_limits

    @property
    def connection_count(self) -> int:
        return sum(slot.connection_count for slot in self.users.values())

    def connections(self) -> Iterator[ServerConnection]:
        """Every admitted connection, live or pending."""
        for slot in self.users.values():
            yield from slot.live
            yield from slot.pending

    def admit(self, connection: ServerConnection, user_id: str) -> UserSlot | CloseCode:
        """Register ``connection`` as pending for ``user_id``, or return the close code refusing it (4008)."""
        slot = self.users.get(user_id)
        if slot is None:
            limits = self._user_limits
            bucket = TokenBucket(limits.rate, limits.burst, asyncio.get_running_loop().time())
            slot = self.users[user_id] = UserSlot(user_id, bucket, asyncio.Semaphore(limits.in_flight))
        refusal = admission_close_code(slot.connection_count, self._max_per_user)
        if refusal is not None:
            self._forget_if_empty(slot)
            return refusal
        slot.pending[connection] = []
        return slot

    async def attach(self, slot: UserSlot) -> bool:
        """Make sure the user's frames reach this process (no-op when already attached or the broker is
        down: the rebuild after the next reconnect attaches every user still connected).

        Returns whether they do or will. When the broker refused the attach on a live link (after the
        link's own retries), the user's connections would stay open and hear nothing, with no reconnect to
        repair it: they are closed 1013 instead, so that their clients come back with their backoff and
        sync, and this returns ``False``.
        """
        async with slot.lock:
            return await self._attach_locked(slot)

    async def _attach_locked(self, slot: UserSlot) -> bool:
        if (
            not slot.connection_count
            or slot.attached_generation == self._topology.generation
            or not self._topology.ready
        ):
            return True
        try:
            # The generation the binding was made in, not the one before the call: a reconnect while the
            # attach waited for its lane binds the new connection's queue, and the user's last release
            # must unbind that one (a detach naming an older generation is a no-op).
            slot.attached_generation = await self._topology.attach(slot.user_id)
        except GatewayError as exc:
            log.warning("attach failed", user_id=slot.user_id, error=str(exc))
            if self._topology.ready:  # else the link went down meanwhile, and its rebuild attaches the user
                for connection in (*slot.live, *slot.pending):
                    if self._count_drop(connection):
                        spawn(connection.close(CloseCode.TRY_AGAIN_LATER, "subscription failed"))
                return False
        return True

    def go_live(self, connection: ServerConnection, slot: UserSlot) -> None:
        """``connected`` was written: write the frames buffered meanwhile, then relay directly."""
        buffered = _pop_pending(slot, connection)
        if connection.protocol.state is not State.OPEN:
            return
        frames = [SYNC_REQUIRED] if buffered is None else buffered
        for frame in frames:
            broadcast((connection,), frame, text=True)
        slot.live.add(connection)

    async def release(self, connection: ServerConnection, slot: UserSlot) -> None:
        """``connection`` closed: forget it; the user's last connection detaches the user."""
        slot.live.discard(connection)
        _pop_pending(slot, connection)
        async with slot.lock:
            try:
                if not slot.connection_count and slot.attached_generation:
                    generation, slot.attached_generation = slot.attached_generation, 0
                    await self._topology.detach(slot.user_id, generation)
            except GatewayError as exc:
                log.warning("detach failed", user_id=slot.user_id, error=str(exc))
            finally:
                self._forget_if_empty(slot)  # whatever the broker did, the slot of nobody is not kept

    def _forget_if_empty(self, slot: UserSlot) -> None:
        # Only the slot registered under the name is removed; a newer one may have replaced it.
        if not slot.connection_count and self.users.get(slot.user_id) is slot:
            del self.users[slot.user_id]

    def set_preferences(self, slot: UserSlot, document: Any, since: int) -> None:
        """Cache the in-app switches from an effective Preferences document (``session.open``), asked when
        ``slot.prefs_version`` was ``since``: if a ``preferences:updated`` frame was relayed meanwhile,
        the document may predate it, and the frame's (already cached) is kept."""
        if slot.prefs_version == since:
            slot.prefs = InAppFilter.from_document(document)

    async def rebuild(self) -> None:
        """After a broker (re)connect: attach every user still connected here, then tell them to sync.

        Users are rebuilt concurrently (the broker link runs them on its topology lanes), and each user's
        connections get ``sync:required`` as soon as that user is attached again (by this rebuild or by a
        connection that came first). Users whose connections all closed meanwhile are not attached again.
        """

        async def rebuild_one(slot: UserSlot) -> bool:
            async with slot.lock:
                # A new connection of the user may have taken the lock first and attached it in this
                # generation already: the connections from before the reconnect still missed frames.
                await self._attach_locked(slot)
                if slot.attached_generation != self._topology.generation:
                    return False
                self._deliver(slot, SYNC_REQUIRED)
                return True

        outcomes = await asyncio.gather(*(rebuild_one(slot) for slot in list(self.users.values())))
        if any(outcomes):
            log.info("rebuilt user bindings after reconnect", users=sum(outcomes))

    def relay_user(self, user_id: str, body: bytes, method: str | None) -> None:
        """A frame from ``herald.users`` for ``user_id``: to all its local connections, bytes untouched."""
        slot = self.users.get(user_id)
        if slot is None:
            return
        if method == PREFERENCES_UPDATED:
            slot.prefs_version += 1
            try:
                slot.prefs = InAppFilter.from_document(orjson.loads(body).get("params"))
            except (orjson.JSONDecodeError, AttributeError):
                log.warning("unreadable preferences:updated frame", user_id=user_id)
        self._metrics.user_frames.inc(self._deliver(slot, body))

    def relay_broadcast(self, body: bytes, notification_type: str | None, critical: bool) -> None:
        """A frame from ``herald.broadcast``: to every connection whose user has the type on in-app."""
        targets: list[ServerConnection] = []
        for slot in self.users.values():
            if slot.prefs.allows(notification_type, critical):
                if slot.pending:
                    self._buffer(slot, body)
                self._collect(slot, targets)
        broadcast(targets, body, text=True)
        self._metrics.broadcast_frames.inc(len(targets))

    def _deliver(self, slot: UserSlot, body: bytes) -> int:
        if slot.pending:
            self._buffer(slot, body)
        if not slot.live:
            return 0
        targets: list[ServerConnection] = []
        self._collect(slot, targets)
        broadcast(targets, body, text=True)
        return len(targets)

    @staticmethod
    def _buffer(slot: UserSlot, body: bytes) -> None:
        for connection, frames in slot.pending.items():
            if frames is not None:
                if len(frames) < PENDING_FRAMES_CAP:
                    frames.append(body)
                else:
                    slot.pending[connection] = None

    def _collect(self, slot: UserSlot, targets: list[ServerConnection]) -> None:
        """Append ``slot``'s live connections to ``targets``, dropping (and closing 1013) the laggards."""
        laggards: list[ServerConnection] = []
        for connection in slot.live:
            if lagging(connection.transport.get_write_buffer_size(), self._buffer_limit):
                laggards.append(connection)
            else:
                targets.append(connection)
        for connection in laggards:
            slot.live.discard(connection)
            self.drop_laggard(connection)

    def writable(self, connection: ServerConnection) -> bool:
        """Whether a reply may be written to ``connection``; a laggard is closed 1013 instead.

        Replies are held to the same send-buffer cap as relayed frames, so a client that sends requests
        and never reads cannot make the gateway buffer its replies without bound.
        """
        if lagging(connection.transport.get_write_buffer_size(), self._buffer_limit):
            self.drop_laggard(connection)
            return False
        return True

    def drop_laggard(self, connection: ServerConnection) -> None:
        """Close a connection whose unsent bytes exceed the send buffer (1013); counted once.

        A closing handshake, so a reader that catches up learns why; one that never reads is aborted when
        the handshake's time is up (:meth:`gateway.http.HeraldConnection.close`).
        """
        if self._count_drop(connection):
            spawn(connection.close(CloseCode.TRY_AGAIN_LATER, "reader too slow"))

    def drop_flooder(self, connection: ServerConnection) -> None:
        """Drop at once a connection whose peer keeps sending while its send buffer is past the cap (pings
        whose pongs it never reads): waiting out a closing handshake, it would go on filling it."""
        if self._count_drop(connection):
            drop(connection, CloseCode.TRY_AGAIN_LATER, "reader too slow")

    def _count_drop(self, connection: ServerConnection) -> bool:
        """Whether ``connection`` is still open, and so is to be closed 1013; counted if so."""
        if connection.protocol.state is not State.OPEN:
            return False
        self._metrics.closes.labels(str(int(CloseCode.TRY_AGAIN_LATER))).inc()
        return True
