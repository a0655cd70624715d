"""Routing, sans-I/O: from parsed events, preferences, the catalog and the time to what a batch stores and
publishes — rows to insert, ``notification:new`` frames, email/push jobs, outcome counts.

No SQL and no AMQP here: :mod:`worker.pipeline` reads the users' overrides and stored duplicates, hands
them in, inserts the rows this module lists and publishes what it returns. A batch of sends is routed in
three steps around the pipeline's two statements::

    routing = SendRouting(batch, overrides, catalog, now)        # who gets what, on which channel
    rows = routing.new_rows(await existing(routing.keyed()))     # in-app rows not stored yet
    outgoing = routing.outgoing(await insert(rows))              # frames, jobs and outcomes

Channels per user come from :func:`shared.preferences.decide_channels` (master switch, type switch,
critical types, the event's own ``channels``); email and push are held until the end of the user's quiet
hours (``deliver_after``), in-app never is.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog

from shared.jsonrpc import dumps, notification_frame
from shared.preferences import (
    DELIVERY_CHANNELS,
    decide_channels,
    default_preferences,
    effective_preferences,
    quiet_hours_end,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from shared.events import BroadcastEvent, SendEvent
    from shared.preferences import Catalog

log = structlog.get_logger("herald.worker")

NEW_METHOD: Final = "notification:new"


def notification_id(idempotency_key: str | None) -> str:
    """The id of the notification an event creates: 32 hex characters.

    With an idempotency key the id is derived from it, so a redelivered or repeated event yields the same
    id everywhere (in-app row, live frame, email/push jobs — senders can deduplicate on it) and a broadcast
    shares one id among its recipients. Without a key: time-ordered (millisecond prefix) and random.
    """
    if idempotency_key is not None:
        return hashlib.blake2b(idempotency_key.encode(), digest_size=16).hexdigest()
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(slots=True)
class Outgoing:
    """What a committed batch publishes: frames per user, broadcast frames, email/push jobs."""

    frames: list[tuple[str, bytes]] = field(default_factory=list)  # (user id, frame)
    broadcasts: list[tuple[str, bool, bytes]] = field(default_factory=list)  # (type, critical, frame)
    deliveries: list[tuple[str, bytes, str]] = field(default_factory=list)  # (channel, body, message id)
    rows: int = 0  # notifications inserted
    outcomes: dict[str, int] = field(default_factory=dict)  # events by metrics outcome

    def extend(self, other: Outgoing) -> None:
        """Append ``other``'s messages after these (publish order follows commit order)."""
        self.frames += other.frames
        self.broadcasts += other.broadcasts
        self.deliveries += other.deliveries
        self.rows += other.rows
        for outcome, count in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count

    def delivery_counts(self) -> dict[str, int]:
        """Email/push jobs by channel."""
        counts: dict[str, int] = {}
        for channel, _, _ in self.deliveries:
            counts[channel] = counts.get(channel, 0) + 1
        return counts


@dataclass(slots=True)
class NewRows:
    """Columns of the notifications a batch inserts, one list per column, in insertion order."""

    user_id: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)  # JSON text, serialized once per event
    idempotency_key: list[str | None] = field(default_factory=list)
    expires_at: list[datetime | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_id)

    def columns(self) -> tuple[list[Any], ...]:
        """The nine arrays, in the order of the insert statement's parameters."""
        return (
            self.user_id,
            self.id,
            self.type,
            self.category,
            self.title,
            self.message,
            self.data,
            self.idempotency_key,
            self.expires_at,
        )


@dataclass(frozen=True, slots=True)
class Incoming:
    """One send event of a batch; ``redelivered``: the broker delivered it before (its jobs may be lost)."""

    event: SendEvent
    redelivered: bool = False


@dataclass(slots=True)
class _Recipient:
    """One (event, user) pair and the Notification object it gets (``seq`` filled in after the insert)."""

    index: int  # of the event in the batch
    user: str
    key: str | None
    params: dict[str, Any]


def _params(nid: str, event: SendEvent | BroadcastEvent, category: str, now: datetime) -> dict[str, Any]:
    return {
        "id": nid,
        "seq": None,
        "type": event.type,
        "category": category,
        "title": event.title,
        "message": event.message,
        "data": event.data,
        "created_at": now,
        "read_at": None,
    }


def _held_until(user: str, quiet_hours: dict[str, str] | None, now: datetime) -> datetime | None:
    """End of ``user``'s quiet hours; stored hours that no longer parse hold nothing (and are logged)."""
    try:
        return quiet_hours_end(quiet_hours, now)
    except (KeyError, TypeError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        log.warning("ignoring unusable quiet hours", user_id=user, quiet_hours=quiet_hours, error=repr(exc))
        return None


class SendRouting:
    """A batch of send events routed to its recipients' channels (see the module docstring for the steps).

    Args:
        batch: the events, in batch order.
        overrides: each recipient's stored preference overrides (``None`` or absent: catalog defaults).
        catalog: the notification types; every event's type is in it.
        now: the batch's time (quiet hours, ``created_at`` of frames before the insert).
    """

    def __init__(
        self,
        batch: Sequence[Incoming],
        overrides: Mapping[str, Mapping[str, Any] | None],
        catalog: Catalog,
        now: datetime,
    ) -> None:
        self._batch = batch
        self._in_app: list[_Recipient] = []
        self._by_mail: list[tuple[_Recipient, str, datetime | None]] = []
        self._fresh: list[_Recipient] = []
        self._duplicates: set[tuple[str, str | None]] = set()
        self._muted = self._repeated = 0
        defaults = default_preferences(catalog)
        preferences: dict[str, dict[str, Any]] = {}
        seen: set[tuple[str, str]] = set()
        for index, incoming in enumerate(batch):
            event = incoming.event
            kind = catalog[event.type]
            key = event.event_id
            nid = notification_id(key)
            reached = False
            first_copy = key is None
            for user in event.user_ids:
                prefs = preferences.get(user)
                if prefs is None:
                    stored = overrides.get(user)
                    prefs = preferences[user] = effective_preferences(catalog, stored) if stored else defaults
                channels = decide_channels(kind, prefs, event.channels)
                if key is not None:
                    if (user, key) in seen:
                        continue  # the same event twice in one batch
                    seen.add((user, key))
                    first_copy = True
                if not channels:
                    continue
                reached = True
                recipient = _Recipient(index, user, key, _params(nid, event, kind.category, now))
                if "in_app" in channels:
                    self._in_app.append(recipient)
                external = [channel for channel in DELIVERY_CHANNELS if channel in channels]
                if external:
                    held = _held_until(user, prefs["quiet_hours"], now)
                    self._by_mail += [(recipient, channel, held) for channel in external]
            if not first_copy:
                self._repeated += 1
            elif not reached:
                self._muted += 1

    def keyed(self) -> list[tuple[str, str]]:
        """The ``(user id, idempotency key)`` of every in-app copy that may already be stored."""
        return [(r.user, r.key) for r in self._in_app if r.key is not None]

    def new_rows(self, stored: Mapping[tuple[str, str], dict[str, Any]]) -> NewRows:
        """The in-app rows to insert, given the Notification objects already ``stored`` for :meth:`keyed`.

        A stored copy is published again as it was stored (same seq), and not inserted.
        """
        rows = NewRows()
        data_of, data_json = -1, ""
        for recipient in self._in_app:
            previous = stored.get((recipient.user, recipient.key)) if recipient.key else None
            if previous is not None:
                self._duplicates.add((recipient.user, recipient.key))
                recipient.params = previous
                continue
            event = self._batch[recipient.index].event
            rows.user_id.append(recipient.user)
            rows.id.append(recipient.params["id"])
            rows.type.append(event.type)
            rows.category.append(recipient.params["category"])
            rows.title.append(event.title)
            rows.message.append(event.message)
            if recipient.index != data_of:  # a fan-out event's recipients are contiguous
                data_of, data_json = recipient.index, orjson.dumps(event.data).decode()
            rows.data.append(data_json)
            rows.idempotency_key.append(recipient.key)
            rows.expires_at.append(event.expires_at)
            self._fresh.append(recipient)
        return rows

    def outgoing(self, inserted: Sequence[tuple[int, datetime]]) -> Outgoing:
        """Frames, jobs and outcomes, given each new row's ``(seq, created_at)`` (in row order)."""
        for recipient, (seq, created_at) in zip(self._fresh, inserted, strict=True):
            recipient.params["seq"] = seq
            recipient.params["created_at"] = created_at
        out = Outgoing(rows=len(self._fresh))
        out.frames = [(r.user, notification_frame(NEW_METHOD, r.params)) for r in self._in_app]
        for recipient, channel, held in self._by_mail:
            duplicate = (recipient.user, recipient.key) in self._duplicates
            if duplicate and not self._batch[recipient.index].redelivered:
                continue  # a producer's repeat: its jobs went out the first time
            body = {
                "notification": recipient.params,
                "user_id": recipient.user,
                "channel": channel,
                "deliver_after": held,
            }
            out.deliveries.append(
                (channel, dumps(body), f"{recipient.params['id']}:{recipient.user}:{channel}")
            )
        # Per event: a duplicate found nothing new to store (every in-app copy existed, or it repeated an
        # event of this batch); muted reached no channel; stored is the rest.
        with_fresh_rows = {r.index for r in self._fresh}
        already_stored = {r.index for r in self._in_app if (r.user, r.key) in self._duplicates}
        duplicate_events = self._repeated + len(already_stored - with_fresh_rows)
        out.outcomes = {
            "stored": len(self._batch) - self._muted - duplicate_events,
            "muted": self._muted,
            "duplicate": duplicate_events,
        }
        return out


@dataclass(frozen=True, slots=True)
class BroadcastRouting:
    """What storing one broadcast takes (the recipients are chosen by SQL), and its frame.

    ``muted``: the event's ``channels`` exclude in-app, and broadcasts are in-app only: nothing is stored.
    """

    event: BroadcastEvent
    muted: bool
    notification_id: str
    category: str
    critical: bool
    data_json: str
    frame: bytes

    def outgoing(self, recipients: int) -> Outgoing:
        """The broadcast frame and outcome, once stored for ``recipients`` users."""
        if self.muted:
            return Outgoing(outcomes={"muted": 1})
        return Outgoing(
            broadcasts=[(self.event.type, self.critical, self.frame)],
            rows=recipients,
            outcomes={"broadcast": 1},
        )


def route_broadcast(event: BroadcastEvent, catalog: Catalog, now: datetime) -> BroadcastRouting:
    """Route one broadcast event: its notification id, row fields and live frame."""
    kind = catalog[event.type]
    nid = notification_id(event.event_id)
    return BroadcastRouting(
        event=event,
        muted=event.channels is not None and "in_app" not in event.channels,
        notification_id=nid,
        category=kind.category,
        critical=kind.critical,
        data_json=orjson.dumps(event.data).decode(),
        frame=notification_frame(NEW_METHOD, _params(nid, event, kind.category, now)),
    )
