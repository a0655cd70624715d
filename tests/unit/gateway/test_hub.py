"""The hub's bookkeeping without sockets or a broker: attach/detach refcounting, buffering until
``connected``, the relay, laggards, rebuild after a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from websockets.protocol import State

from gateway.errors import TopologyError
from gateway.hub import PENDING_FRAMES_CAP, SYNC_REQUIRED, Hub, InAppFilter
from gateway.limits import UserLimits
from gateway.metrics import Metrics
from herald_ops.testing.stack import wait_until
from shared.jsonrpc import CloseCode, notification_frame
from shared.preferences import channel_enabled


class FakeTopology:
    def __init__(self) -> None:
        self.generation = 1
        self.ready = True
        self.calls: list[tuple[str, str]] = []
        self.fail_attach = False
        #: With ``fail_attach``: the link drops while the attach waits, as a broker restart does.
        self.drop_link_in_attach = False
        self.fail_detach: Exception | None = None
        #: Set to make the next attach wait for it, as an attach queued behind its lane's batch does.
        self.hold_attach: asyncio.Event | None = None

    async def attach(self, user_id: str) -> int:
        if self.fail_attach:
            if self.drop_link_in_attach:
                self.ready = False
            raise TopologyError("refused")
        if self.hold_attach is not None:
            await self.hold_attach.wait()
        self.calls.append(("attach", user_id))
        return self.generation  # the generation whose queue it bound: the one current when it ran

    async def detach(self, user_id: str, generation: int) -> None:
        if self.fail_detach is not None:
            raise self.fail_detach
        if generation == self.generation:
            self.calls.append(("detach", user_id))


class FakeTransport:
    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class FakeProtocol:
    def __init__(self, sink: list[bytes]) -> None:
        self.state = State.OPEN
        self.sink = sink
        self.failed: tuple[int, str] | None = None

    def send_text(self, data: bytes) -> None:
        self.sink.append(data)

    def fail(self, code: int, reason: str) -> None:
        self.failed = (code, reason)
        self.state = State.CLOSING

    def data_to_send(self) -> list[bytes]:
        return [b"close frame"]


class FakeConnection:
    """Just what ``websockets.broadcast`` and the hub touch."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.protocol = FakeProtocol(self.received)
        self.transport = FakeTransport()
        self.send_in_progress = None
        self.closed_with: tuple[int, str] | None = None

    def send_data(self) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
        self.protocol.state = State.CLOSED


def frame(n: int) -> bytes:
    return notification_frame("notification:new", {"id": str(n)})


@pytest.fixture
def topology() -> FakeTopology:
    return FakeTopology()


@pytest.fixture
def hub(topology: FakeTopology) -> Hub:
    return Hub(topology, Metrics(), 1024, 2, UserLimits(rate=10, burst=10, in_flight=4))


async def live(hub: Hub, user: str) -> Any:
    connection = FakeConnection()
    slot = hub.admit(connection, user)  # type: ignore[arg-type]
    assert not isinstance(slot, CloseCode)
    await hub.attach(slot)
    hub.go_live(connection, slot)  # type: ignore[arg-type]
    return connection, slot


async def test_one_attach_per_user_and_detach_with_the_last_connection(
    hub: Hub, topology: FakeTopology
) -> None:
    first, slot = await live(hub, "u1")
    second, _ = await live(hub, "u1")
    assert topology.calls == [("attach", "u1")]
    await hub.release(first, slot)
    assert topology.calls == [("attach", "u1")]
    await hub.release(second, slot)
    assert topology.calls == [("attach", "u1"), ("detach", "u1")]
    assert "u1" not in hub.users


async def test_a_user_bound_after_a_reconnect_it_waited_through_is_unbound_by_its_last_release(
    hub: Hub, topology: FakeTopology
) -> None:
    connection = FakeConnection()
    slot = hub.admit(connection, "u1")  # type: ignore[arg-type]
    assert not isinstance(slot, CloseCode)
    topology.hold_attach = asyncio.Event()
    attaching = asyncio.create_task(hub.attach(slot))
    await wait_until(lambda: slot.lock.locked(), 5, "the attach is waiting")
    topology.generation += 1  # the link reconnected meanwhile: the attach binds the new connection's queue
    topology.hold_attach.set()
    await attaching
    assert slot.attached_generation == topology.generation
    hub.go_live(connection, slot)  # type: ignore[arg-type]
    await hub.release(connection, slot)
    # Recorded under the generation read before the call, the detach would be skipped as stale and the
    # binding left behind on the live connection.
    assert topology.calls == [("attach", "u1"), ("detach", "u1")]


@pytest.mark.parametrize("failure", [TopologyError("down"), ConnectionError("closed under the unbind")])
async def test_a_failed_detach_still_forgets_the_user(
    hub: Hub, topology: FakeTopology, failure: Exception
) -> None:
    connection, slot = await live(hub, "u1")
    topology.fail_detach = failure
    with contextlib.suppress(ConnectionError):  # only the gateway's own errors are logged and swallowed
        await hub.release(connection, slot)
    assert "u1" not in hub.users


async def test_admission_is_capped_per_user(hub: Hub) -> None:
    await live(hub, "u1")
    await live(hub, "u1")
    assert hub.admit(FakeConnection(), "u1") is CloseCode.TOO_MANY_CONNECTIONS  # type: ignore[arg-type]
    assert not isinstance(hub.admit(FakeConnection(), "u2"), CloseCode)  # type: ignore[arg-type]


async def test_frames_before_connected_are_buffered_then_written_in_order(hub: Hub) -> None:
    connection = FakeConnection()
    slot = hub.admit(connection, "u1")  # type: ignore[arg-type]
    assert not isinstance(slot, CloseCode)
    hub.relay_user("u1", frame(1), "notification:new")
    hub.relay_broadcast(frame(2), "NEW_COMMENT", critical=False)
    assert connection.received == []  # `connected` has not been written yet
    connection.received.append(b"connected")
    hub.go_live(connection, slot)  # type: ignore[arg-type]
    hub.relay_user("u1", frame(3), "notification:new")
    assert connection.received == [b"connected", frame(1), frame(2), frame(3)]


async def test_too_many_buffered_frames_become_one_sync_required(hub: Hub) -> None:
    connection = FakeConnection()
    slot = hub.admit(connection, "u1")  # type: ignore[arg-type]
    assert not isinstance(slot, CloseCode)
    for n in range(PENDING_FRAMES_CAP + 1):
        hub.relay_user("u1", frame(n), "notification:new")
    hub.go_live(connection, slot)  # type: ignore[arg-type]
    assert connection.received == [SYNC_REQUIRED]


async def test_relay_reaches_only_the_user_and_skips_laggards(hub: Hub) -> None:
    fast, _ = await live(hub, "u1")
    slow, slot = await live(hub, "u1")
    other, _ = await live(hub, "u2")
    slow.transport.buffered = 4096  # above send_buffer_bytes
    hub.relay_user("u1", frame(1), "notification:new")
    assert fast.received == [frame(1)]
    assert slow.received == []
    assert other.received == []
    assert slow not in slot.live
    await wait_closed(slow)
    assert slow.closed_with == (CloseCode.TRY_AGAIN_LATER, "reader too slow")


async def wait_closed(connection: FakeConnection) -> None:
    await wait_until(lambda: connection.closed_with is not None, 5, "the laggard closed")


async def test_a_peer_flooding_past_its_send_buffer_is_dropped_at_once_and_counted_once(hub: Hub) -> None:
    flooder, _ = await live(hub, "u1")
    hub.drop_flooder(flooder)  # type: ignore[arg-type]
    hub.drop_flooder(flooder)  # type: ignore[arg-type]  # more data arrived meanwhile: no second count
    # No closing handshake: waiting for it, the peer would go on filling the buffer.
    assert flooder.protocol.failed == (CloseCode.TRY_AGAIN_LATER, "reader too slow")
    assert flooder.transport.aborted
    assert hub._metrics.registry.get_sample_value("herald_gateway_closes_total", {"code": "1013"}) == 1


async def test_preferences_updated_frames_change_the_broadcast_filter(hub: Hub) -> None:
    quiet, slot = await live(hub, "quiet")
    hub.set_preferences(
        slot,
        {"channels": {"in_app": True}, "types": {"COURSE_UPDATE": {"in_app": False}}},
        slot.prefs_version,
    )
    hub.relay_broadcast(frame(1), "COURSE_UPDATE", critical=False)
    hub.relay_broadcast(frame(2), "COURSE_UPDATE", critical=True)
    assert quiet.received == [frame(2)]
    update = notification_frame("preferences:updated", {"channels": {"in_app": True}, "types": {}})
    hub.relay_user("quiet", update, "preferences:updated")
    hub.relay_broadcast(frame(3), "COURSE_UPDATE", critical=False)
    assert quiet.received == [frame(2), update, frame(3)]


async def test_a_session_open_read_before_a_preferences_update_does_not_undo_it(hub: Hub) -> None:
    """A second tab connects: its ``session.open`` is asked, the user turns COURSE_UPDATE off in the first
    tab (``preferences:updated`` relayed), then the older reply arrives with the type still on."""
    _, slot = await live(hub, "u1")
    since = slot.prefs_version  # when the new connection's session.open is asked
    off = {"channels": {"in_app": True}, "types": {"COURSE_UPDATE": {"in_app": False}}}
    hub.relay_user("u1", notification_frame("preferences:updated", off), "preferences:updated")
    hub.set_preferences(slot, {"channels": {"in_app": True}, "types": {}}, since)  # read before the update
    assert not slot.prefs.allows("COURSE_UPDATE")
    hub.set_preferences(slot, {"channels": {"in_app": True}, "types": {}}, slot.prefs_version)  # read after
    assert slot.prefs.allows("COURSE_UPDATE")


async def test_rebuild_reattaches_only_connected_users_and_tells_them_to_sync(
    hub: Hub, topology: FakeTopology
) -> None:
    stays, _ = await live(hub, "stays")
    leaves, slot = await live(hub, "leaves")
    topology.ready = False  # the broker link dropped: the process queue and its bindings are gone
    await hub.release(leaves, slot)
    topology.calls.clear()
    topology.generation, topology.ready = 2, True
    await hub.rebuild()
    assert topology.calls == [("attach", "stays")]
    assert stays.received == [SYNC_REQUIRED]


async def test_an_attach_refused_on_a_live_link_closes_the_connection_1013(
    hub: Hub, topology: FakeTopology
) -> None:
    # Left open, the connection would get `connected` and then no frame ever, with no reconnect coming
    # to repair it; closed, its client comes back with its backoff and syncs.
    topology.fail_attach = True
    connection = FakeConnection()
    slot = hub.admit(connection, "u1")  # type: ignore[arg-type]
    assert not isinstance(slot, CloseCode)
    assert await hub.attach(slot) is False
    await wait_until(lambda: connection.closed_with is not None, 5, "the connection closed")
    assert connection.closed_with == (CloseCode.TRY_AGAIN_LATER, "subscription failed")
    topology.fail_attach = False
    again = FakeConnection()
    await hub.release(connection, slot)
    slot = hub.admit(again, "u1")  # type: ignore[arg-type]
    assert not isinstance(slot, CloseCode)
    assert await hub.attach(slot) is True  # the reconnect attaches
    assert topology.calls == [("attach", "u1")]


async def test_an_attach_refused_by_a_rebuild_closes_the_users_connections_1013(
    hub: Hub, topology: FakeTopology
) -> None:
    first, _ = await live(hub, "u1")
    second, _ = await live(hub, "u1")
    topology.generation += 1  # reconnected; the user's exchange is refused in the new generation
    topology.fail_attach = True
    await hub.rebuild()
    await wait_until(lambda: first.closed_with and second.closed_with, 5, "both connections closed")
    assert first.closed_with == second.closed_with == (CloseCode.TRY_AGAIN_LATER, "subscription failed")
    assert SYNC_REQUIRED not in first.received + second.received


async def test_an_attach_failed_as_the_link_dropped_waits_for_the_rebuild(
    hub: Hub, topology: FakeTopology
) -> None:
    topology.fail_attach = topology.drop_link_in_attach = True
    connection, slot = await live(hub, "u1")
    assert (slot.attached_generation, connection.closed_with) == (0, None)  # kept: the rebuild repairs it
    topology.fail_attach = False
    topology.generation, topology.ready = topology.generation + 1, True
    await hub.rebuild()
    assert slot.attached_generation == topology.generation
    assert connection.received == [SYNC_REQUIRED]


async def test_rebuild_tells_sync_even_when_a_new_connection_reattached_the_user_first(
    hub: Hub, topology: FakeTopology
) -> None:
    before, _ = await live(hub, "u1")
    topology.generation += 1  # reconnected; a new connection of u1 gets the slot's lock before rebuild
    await live(hub, "u1")
    assert topology.calls == [("attach", "u1"), ("attach", "u1")]
    await hub.rebuild()
    assert before.received == [SYNC_REQUIRED]  # frames published during the gap never reached it


@pytest.mark.parametrize("critical", [False, True])
@pytest.mark.parametrize("type_switch", [False, True])
@pytest.mark.parametrize("master", [False, True])
def test_the_gateway_broadcast_filter_follows_the_preference_rule(
    master: bool, type_switch: bool, critical: bool
) -> None:
    document = {"channels": {"in_app": master}, "types": {"NEW_COMMENT": {"in_app": type_switch}}}
    relayed = InAppFilter.from_document(document).allows("NEW_COMMENT", critical)
    assert relayed == channel_enabled("in_app", master=master, type_switch=type_switch, critical=critical)
    assert relayed == (critical or (master and type_switch))
