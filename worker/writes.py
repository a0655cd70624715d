"""What a batch of sends writes, sans-I/O: new rows, collapses into stored rows, absorbed keys, and the
email/push jobs of what was stored (:class:`Job`, recorded by :func:`worker.store.deliveries.record` in the
same transaction).

:class:`worker.routing.SendRouting` fills a :class:`Writes`; :func:`worker.store.events.write` runs it as
three statements (insert, collapse, remember keys), column by column (one array per column, ``unnest``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from shared.events import IdempotencyKey


@dataclass(slots=True)
class Content:
    """The columns a notification takes from its (latest) event; JSON columns as JSON text."""

    type: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    url: list[str | None] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    expires_at: list[datetime | None] = field(default_factory=list)

    def add(self, params: dict[str, Any], data_json: str, actions_json: str) -> None:
        """Append one notification's content from its Notification object (``params``)."""
        self.type.append(params["type"])
        self.category.append(params["category"])
        self.title.append(params["title"])
        self.message.append(params["message"])
        self.data.append(data_json)
        self.url.append(params["url"])
        self.actions.append(actions_json)
        self.expires_at.append(params["expires_at"])

    def columns(self) -> tuple[list[Any], ...]:
        return (
            self.type,
            self.category,
            self.title,
            self.message,
            self.data,
            self.url,
            self.actions,
            self.expires_at,
        )


@dataclass(slots=True)
class NewRows:
    """Notifications to insert, in insertion order; ``count`` > 1 when several events of one batch
    collapsed into a new row."""

    user_id: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    idempotency_key: list[IdempotencyKey | None] = field(default_factory=list)
    collapse_key: list[str | None] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    content: Content = field(default_factory=Content)

    def __len__(self) -> int:
        return len(self.user_id)

    def columns(self) -> tuple[list[Any], ...]:
        """The arrays, in the order of the insert statement's parameters."""
        return (
            self.user_id,
            self.id,
            [key.source if key else "" for key in self.idempotency_key],
            [key.key if key else None for key in self.idempotency_key],
            self.collapse_key,
            self.count,
            *self.content.columns(),
        )


@dataclass(slots=True)
class Collapses:
    """Stored unread notifications that ``count`` new events update in place (new seq, latest content)."""

    user_id: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    content: Content = field(default_factory=Content)

    def __len__(self) -> int:
        return len(self.user_id)

    def columns(self) -> tuple[list[Any], ...]:
        """The arrays, in the order of the collapse statement's parameters."""
        return (self.user_id, self.id, self.count, *self.content.columns())


@dataclass(slots=True)
class Writes:
    """Everything one batch of sends writes; ``keys``: ``(user, idempotency key, notification id)`` of
    events absorbed by a row that carries another event's key."""

    rows: NewRows = field(default_factory=NewRows)
    collapses: Collapses = field(default_factory=Collapses)
    keys: list[tuple[str, IdempotencyKey, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Written:
    """What the statements returned: ``(seq, created_at)`` per new row and ``(seq, count, created_at)``
    per collapse, each in input order."""

    inserted: list[tuple[int, datetime]]
    collapsed: list[tuple[int, int, datetime]]


@dataclass(frozen=True, slots=True)
class Job:
    """One email/push job: the columns :func:`worker.store.deliveries.record` takes (``notification`` is
    the Notification object as JSON text, or ``None`` for a job whose notification is stored in-app: the
    claim reads it from there)."""

    id: str
    notification_id: str
    user_id: str
    channel: str
    notification: str | None
    type: str
    created_at: datetime
    deliver_after: datetime | None
    #: ``<notification id>:<user>:<channel>`` and the notification's seq (amendments 14, 25); both
    #: ``None`` for a job without a stored in-app copy, which is kept by its id alone.
    job_key: str | None
    version: int | None
