"""Routing, sans-I/O: from parsed events, preferences, the catalog and the time to what a batch stores and
publishes — rows to insert, ``notification:new`` frames, email/push jobs, outcome counts.

No SQL and no AMQP here: :mod:`worker.pipeline` reads the users' overrides, stored duplicates and the
open rows of collapse keys, hands them in, writes what this module lists and publishes what it returns.
A batch of sends is routed in three steps around the pipeline's statements::

    routing = SendRouting(batch, overrides, catalog, now)        # who gets what, on which channel
    writes = routing.writes(await existing(routing.keyed()),     # in-app rows not stored yet, and
                            await targets(routing.collapsible())) # collapses into open rows
    outgoing = routing.outgoing(await write(writes))              # frames, jobs and outcomes

Collapse (docs/protocol.md §10): the fresh in-app copies of a batch with the same user and
``collapse_key`` become one write with the latest event's content — an update of the user's open
(unread) notification with that key when there is one, else one new row with ``count`` = how many
events it holds. Their frame and email/push jobs go out once, for the final state.

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
from worker.writes import Job, Writes

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from shared.events import BroadcastEvent, SendEvent
    from shared.events import IdempotencyKey as Key
    from shared.preferences import Catalog
    from worker.writes import Content, Written

log = structlog.get_logger("herald.worker")

NEW_METHOD: Final = "notification:new"


def notification_id(scoped: Key | None) -> str:
    """The id of the notification an event creates: 32 hex characters.

    With an idempotency key the id is derived from it, so a redelivered or repeated event yields the same
    id everywhere (in-app row, live frame, email/push jobs — senders can deduplicate on it) and a broadcast
    shares one id among its recipients; the source is the BLAKE2b key (none, the empty key: the id unscoped
    events always had). Without an idempotency key: time-ordered (millisecond prefix) and random.
    """
    if scoped is not None:
        return hashlib.blake2b(scoped.key.encode(), digest_size=16, key=scoped.source.encode()).hexdigest()
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(slots=True)
class Outgoing:
    """What a batch publishes (frames per user, broadcast frames) and the email/push jobs it records."""

    frames: list[tuple[str, bytes]] = field(default_factory=list)  # (user id, frame)
    broadcasts: list[tuple[str, bool, bytes]] = field(default_factory=list)  # (type, critical, frame)
    deliveries: list[Job] = field(default_factory=list)
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
        for job in self.deliveries:
            counts[job.channel] = counts.get(job.channel, 0) + 1
        return counts


@dataclass(slots=True)
class _Recipient:
    """One (event, user) pair and the Notification object it gets (``seq`` filled in after the insert)."""

    index: int  # of the event in the batch
    user: str
    key: Key | None
    params: dict[str, Any]


def notification_params(
    nid: str, event: SendEvent | BroadcastEvent, category: str, now: datetime
) -> dict[str, Any]:
    """A new Notification object (docs/protocol.md §5, §10), ``seq`` filled in after the insert."""
    return {
        "id": nid,
        "seq": None,
        "type": event.type,
        "category": category,
        "title": event.title,
        "message": event.message,
        "data": event.data,
        "url": event.url,
        "actions": [action.model_dump(exclude_none=True) for action in event.actions],
        "count": 1,
        "created_at": now,
        "read_at": None,
        "seen_at": None,
        "archived_at": None,
        "acted_at": None,
        "action_id": None,
        "expires_at": event.expires_at,
    }


def _add_content(content: Content, params: dict[str, Any], cache: dict[int, tuple[str, str]]) -> None:
    """Append ``params``' content; JSON is serialized once per event (``cache`` by the data's identity:
    a fan-out event's recipients share its data)."""
    data = params["data"]
    texts = cache.get(id(data))
    if texts is None:
        texts = cache[id(data)] = (orjson.dumps(data).decode(), orjson.dumps(params["actions"]).decode())
    content.add(params, *texts)


def job_key(notification_id: str, user_id: str, channel: str) -> str:
    """The identity of a notification's email/push job on one channel: the same for every version of a
    collapsed notification, so a delivery process replaces a waiting job instead of adding one."""
    return f"{notification_id}:{user_id}:{channel}"


def held_until(user: str, quiet_hours: dict[str, str] | None, now: datetime) -> datetime | None:
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
        batch: Sequence[SendEvent],
        overrides: Mapping[str, Mapping[str, Any] | None],
        catalog: Catalog,
        now: datetime,
    ) -> None:
        self._batch = batch
        self._in_app: list[_Recipient] = []
        self._by_mail: list[tuple[_Recipient, str, datetime | None]] = []
        self._fresh: list[_Recipient] = []
        self._inserted: list[dict[str, Any]] = []  # Notification objects of the new rows, in row order
        self._json: dict[int, tuple[str, str]] = {}  # id(event data) → (data, actions) as JSON text
        self._grouped: set[int] = set()  # id() of the in-app copies that are part of a collapse group
        self._new_groups: list[tuple[str, dict[str, Any]]] = []  # (user, Notification) of groups inserted
        self._collapsed_groups: list[tuple[str, dict[str, Any]]] = []  # ... and collapsed, in write order
        self._duplicates: set[tuple[str, Key | None]] = set()
        self._muted = self._repeated = 0
        defaults = default_preferences(catalog)
        preferences: dict[str, dict[str, Any]] = {}
        # By the stored overrides' content: users who changed anything mostly changed the same switches.
        merged: dict[bytes, dict[str, Any]] = {b"": defaults}
        seen: set[tuple[str, Key]] = set()
        for index, event in enumerate(batch):
            kind = catalog[event.type]
            key = event.idempotency_key
            nid = notification_id(key)
            reached = False
            first_copy = key is None
            for user in event.user_ids:
                prefs = preferences.get(user)
                if prefs is None:
                    stored = overrides.get(user)
                    content = orjson.dumps(stored, option=orjson.OPT_SORT_KEYS) if stored else b""
                    prefs = merged.get(content)
                    if prefs is None:
                        prefs = merged[content] = effective_preferences(catalog, stored)
                    preferences[user] = prefs
                channels = decide_channels(kind, prefs, event.channels)
                if key is not None:
                    if (user, key) in seen:
                        continue  # the same event twice in one batch
                    seen.add((user, key))
                    first_copy = True
                if not channels:
                    continue
                reached = True
                recipient = _Recipient(index, user, key, notification_params(nid, event, kind.category, now))
                if "in_app" in channels:
                    self._in_app.append(recipient)
                external = [channel for channel in DELIVERY_CHANNELS if channel in channels]
                if external:
                    held = held_until(user, prefs["quiet_hours"], now)
                    self._by_mail += [(recipient, channel, held) for channel in external]
            if not first_copy:
                self._repeated += 1
            elif not reached:
                self._muted += 1

    def keyed(self) -> list[tuple[str, Key]]:
        """The ``(user id, idempotency key)`` of every in-app copy that may already be stored."""
        return [(r.user, r.key) for r in self._in_app if r.key is not None]

    def collapsible(self) -> list[tuple[str, str]]:
        """The ``(user id, collapse key)`` of every in-app copy that may collapse into a stored row."""
        keys = {(r.user, key) for r in self._in_app if (key := self._batch[r.index].collapse_key) is not None}
        return sorted(keys)

    def writes(
        self, stored: Mapping[tuple[str, Key], dict[str, Any]], targets: Mapping[tuple[str, str], str]
    ) -> Writes:
        """What to write, given the Notification objects already ``stored`` for :meth:`keyed` and the
        open notification ids (``targets``) of :meth:`collapsible`.

        A stored copy is published again as it was stored (same seq), and not written.
        """
        writes = Writes()
        groups: dict[tuple[str, str], list[_Recipient]] = {}
        for recipient in self._in_app:
            previous = stored.get((recipient.user, recipient.key)) if recipient.key else None
            if previous is not None:
                self._duplicates.add((recipient.user, recipient.key))
                recipient.params = previous
                continue
            self._fresh.append(recipient)
            collapse_key = self._batch[recipient.index].collapse_key
            if collapse_key is None:
                self._insert(writes, recipient.user, recipient.key, None, recipient.params)
            else:
                groups.setdefault((recipient.user, collapse_key), []).append(recipient)
        for (user, collapse_key), members in groups.items():
            # The latest event's content under the first event's id (or the open row's), for all members.
            params = {**members[-1].params, "id": members[0].params["id"], "count": len(members)}
            absorbed = [m.key for m in members if m.key is not None]
            target = targets.get((user, collapse_key))
            self._grouped.update(id(member) for member in members)
            if target is None:
                self._insert(writes, user, members[0].key, collapse_key, params)
                self._new_groups.append((user, params))
                absorbed = [m.key for m in members[1:] if m.key is not None]
            else:
                params["id"] = target
                collapses = writes.collapses
                collapses.user_id.append(user)
                collapses.id.append(target)
                collapses.count.append(len(members))
                _add_content(collapses.content, params, self._json)
                self._collapsed_groups.append((user, params))
            writes.keys += [(user, key, params["id"]) for key in absorbed]
            for member in members:
                member.params = params
        return writes

    def _insert(
        self, writes: Writes, user: str, key: Key | None, collapse_key: str | None, params: dict[str, Any]
    ) -> None:
        rows = writes.rows
        rows.user_id.append(user)
        rows.id.append(params["id"])
        rows.idempotency_key.append(key)
        rows.collapse_key.append(collapse_key)
        rows.count.append(params["count"])
        _add_content(rows.content, params, self._json)
        self._inserted.append(params)

    def outgoing(self, written: Written) -> Outgoing:
        """Frames, jobs and outcomes, given what the statements returned for the :meth:`writes`."""
        for params, (seq, created_at) in zip(self._inserted, written.inserted, strict=True):
            params["seq"], params["created_at"] = seq, created_at
        collapsed = [params for _, params in self._collapsed_groups]
        for params, (seq, count, created_at) in zip(collapsed, written.collapsed, strict=True):
            params["seq"], params["count"], params["created_at"] = seq, count, created_at
        out = Outgoing(rows=len(self._inserted))
        # Collapsed copies share one Notification object: one frame, and one job per channel, for it.
        # Frames go out in each user's seq order: single rows, then new groups, then collapses.
        published = [(r.user, r.params) for r in self._in_app if id(r) not in self._grouped]
        published += self._new_groups + self._collapsed_groups
        out.frames = [(user, notification_frame(NEW_METHOD, params)) for user, params in published]
        jobs: set[tuple[int, str]] = set()
        copies: dict[int, str] = {}  # id(Notification object) → JSON, shared by its email and push jobs
        for recipient, channel, held in self._by_mail:
            if (recipient.user, recipient.key) in self._duplicates:
                continue  # stored before: its jobs were recorded in the same transaction
            if (id(recipient.params), channel) in jobs:
                continue
            jobs.add((id(recipient.params), channel))
            params = recipient.params
            text: str | None = None  # stored in-app: the job keeps no copy, its claim reads the row
            if params["seq"] is None:
                text = copies.get(id(params)) or copies.setdefault(id(params), dumps(params).decode())
            out.deliveries.append(_job(recipient, channel, held, text))
        # Per event: a duplicate found nothing new to store (every in-app copy existed, or it repeated an
        # event of this batch); muted reached no channel; stored is the rest (collapsed ones included).
        with_fresh_rows = {r.index for r in self._fresh}
        already_stored = {r.index for r in self._in_app if (r.user, r.key) in self._duplicates}
        duplicate_events = self._repeated + len(already_stored - with_fresh_rows)
        out.outcomes = {
            "stored": len(self._batch) - self._muted - duplicate_events,
            "muted": self._muted,
            "duplicate": duplicate_events,
        }
        return out


def _job(recipient: _Recipient, channel: str, held: datetime | None, notification: str | None) -> Job:
    """One email/push job (``notification``: the Notification object as JSON, ``None`` if stored in-app).

    ``job_key`` is stable across a collapsed notification's versions and ``version`` (its seq) grows with
    each; both are ``None`` when nothing is stored in-app. The row id is the job key for a notification's
    first version (``count`` 1, as before collapse keys existed) and ``<job key>:<seq>`` for later ones.
    """
    params = recipient.params
    key = job_key(params["id"], recipient.user, channel)
    version = params["seq"]
    return Job(
        id=key if params["count"] == 1 else f"{key}:{version}",
        notification_id=params["id"],
        user_id=recipient.user,
        channel=channel,
        notification=notification,
        type=params["type"],
        created_at=params["created_at"],
        deliver_after=held,
        job_key=None if version is None else key,
        version=version,
    )


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
    actions_json: str
    params: dict[str, Any]
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
    nid = notification_id(event.idempotency_key)
    params = notification_params(nid, event, kind.category, now)
    return BroadcastRouting(
        event=event,
        muted=event.channels is not None and "in_app" not in event.channels,
        notification_id=nid,
        category=kind.category,
        critical=kind.critical,
        data_json=orjson.dumps(event.data).decode(),
        actions_json=orjson.dumps(params["actions"]).decode(),
        params=params,
        frame=notification_frame(NEW_METHOD, params),
    )
