"""The HTTP API's route table: each HTTP method and path, the ``herald.rpc`` method it becomes, and how its
params are read. Sans-I/O; the one list the server (:mod:`gateway.api.app`) and the OpenAPI generator
(``herald_ops.openapi``) both read, so the document cannot drift from what is served.

Params come from at most one place per route, by :class:`Source`:

- ``QUERY``: query-string members, converted by :class:`QueryParam` (``"20"`` → 20, ``"true"`` → true)
  because the worker's params are strict; names are the seed's camelCase and Herald's snake_case alike;
- ``BODY``: the JSON request body is the params object, untouched (the worker validates it);
- ``PATH_ID``: ``{"ids": [<id from the path>]}`` — one notification of a bulk method;
- ``PATH_ACTION``: ``{"id", "action_id"}`` from the path (``notifications.act``);
- ``NONE``: ``{}``, plus the route's ``fixed`` members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final


class Source(Enum):
    """Where a route's params come from (see the module docstring)."""

    QUERY = "query"
    BODY = "body"
    PATH_ID = "path_id"
    PATH_ACTION = "path_action"
    NONE = "none"


class Kind(Enum):
    """How a query-string value is converted before it goes into params."""

    INT = "integer"
    BOOL = "boolean"
    STR = "string"
    LIST = "array"  # comma-separated and/or repeated: ?types=A,B&types=C
    TRISTATE = "tristate"  # true | false | all (→ null): §10's archived filter


@dataclass(frozen=True, slots=True)
class QueryParam:
    """A query-string member: its params name, the spellings a client may use, how it is converted."""

    name: str
    kind: Kind
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint. ``shape`` names the result's reshaping (``"page"``: the seed's page object)."""

    verb: str
    path: str
    method: str
    summary: str
    source: Source = Source.NONE
    query: tuple[QueryParam, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    admin: bool = False
    cacheable: bool = False  # ETag / If-None-Match → 304
    shape: str | None = None
    tags: tuple[str, ...] = field(default=("notifications",))


PREFIX: Final = "/api/notifications"
INBOX: Final = f"{PREFIX}/realtime"

_LIMIT = QueryParam("limit", Kind.INT, description="page size (1–100, default 20)")
LIST_QUERY: Final = (
    QueryParam("page", Kind.INT, description="page number from 1 (offset pages); instead of `before`"),
    _LIMIT,
    QueryParam("unread_only", Kind.BOOL, ("unreadOnly",), "only unread notifications"),
    QueryParam("before", Kind.INT, description="keyset cursor: the `next_cursor` of the previous page"),
    QueryParam("types", Kind.LIST, description="notification types, comma-separated or repeated"),
    QueryParam("categories", Kind.LIST, description="categories, comma-separated or repeated"),
    QueryParam("archived", Kind.TRISTATE, description="`false` (default: the inbox), `true`, or `all`"),
)

ROUTES: Final = (
    Route(
        "GET",
        INBOX,
        "notifications.list",
        "A page of the inbox, newest first",
        Source.QUERY,
        LIST_QUERY,
        cacheable=True,
        shape="page",
    ),
    Route(
        "GET",
        f"{INBOX}/unread-count",
        "notifications.unread_count",
        "The unread count",
        cacheable=True,
    ),
    Route(
        "GET",
        f"{INBOX}/sync",
        "notifications.sync",
        "Everything after a seq, oldest first (catching up after being offline)",
        Source.QUERY,
        (
            QueryParam("since", Kind.INT, description="the highest seq the client has"),
            QueryParam("limit", Kind.INT, description="at most this many (≤ 500)"),
        ),
    ),
    Route("PATCH", f"{INBOX}/{{id}}/read", "notifications.mark_read", "Mark one read", Source.PATH_ID),
    Route("PATCH", f"{INBOX}/{{id}}/unread", "notifications.mark_unread", "Mark one unread", Source.PATH_ID),
    Route("PATCH", f"{INBOX}/{{id}}/seen", "notifications.mark_seen", "Mark one seen", Source.PATH_ID),
    Route("PATCH", f"{INBOX}/{{id}}/archive", "notifications.archive", "Archive one", Source.PATH_ID),
    Route("PATCH", f"{INBOX}/{{id}}/unarchive", "notifications.unarchive", "Unarchive one", Source.PATH_ID),
    Route("DELETE", f"{INBOX}/{{id}}", "notifications.delete", "Delete one", Source.PATH_ID),
    Route(
        "POST",
        f"{INBOX}/{{id}}/actions/{{action_id}}",
        "notifications.act",
        "Choose one of a notification's actions",
        Source.PATH_ACTION,
    ),
    Route("POST", f"{INBOX}/mark-all-read", "notifications.mark_all_read", "Mark every notification read"),
    Route(
        "POST",
        f"{INBOX}/mark-all-seen",
        "notifications.mark_seen",
        "Mark every notification seen",
        fixed=(("all", True),),
    ),
    Route("POST", f"{INBOX}/read", "notifications.mark_read", "Mark many read: {ids}", Source.BODY),
    Route("POST", f"{INBOX}/unread", "notifications.mark_unread", "Mark many unread: {ids}", Source.BODY),
    Route("POST", f"{INBOX}/seen", "notifications.mark_seen", "Mark many seen: {ids}", Source.BODY),
    Route("POST", f"{INBOX}/archive", "notifications.archive", "Archive many: {ids}", Source.BODY),
    Route("POST", f"{INBOX}/unarchive", "notifications.unarchive", "Unarchive many: {ids}", Source.BODY),
    Route("POST", f"{INBOX}/delete", "notifications.delete", "Delete many: {ids}", Source.BODY),
    Route(
        "POST",
        f"{INBOX}/broadcast",
        "notifications.broadcast",
        "Broadcast an announcement (admin)",
        Source.BODY,
        admin=True,
    ),
    Route(
        "GET", f"{PREFIX}/preferences", "preferences.get", "The effective preferences", tags=("preferences",)
    ),
    Route(
        "PUT",
        f"{PREFIX}/preferences",
        "preferences.update",
        "Update preferences (partial document, or the seed's camelCase flags)",
        Source.BODY,
        tags=("preferences",),
    ),
    Route(
        "POST",
        f"{PREFIX}/preferences/reset",
        "preferences.reset",
        "Back to the defaults",
        tags=("preferences",),
    ),
    Route("GET", f"{PREFIX}/profile", "profile.get", "The caller's contact profile", tags=("profile",)),
    Route("GET", f"{PREFIX}/push/vapid-key", "push.vapid_key", "The VAPID public key", tags=("push",)),
    Route(
        "GET", f"{PREFIX}/push/subscriptions", "push.list", "The caller's push subscriptions", tags=("push",)
    ),
    Route(
        "POST",
        f"{PREFIX}/push/subscriptions",
        "push.subscribe",
        "Subscribe a browser (PushSubscription.toJSON())",
        Source.BODY,
        tags=("push",),
    ),
    Route(
        "POST",
        f"{PREFIX}/push/unsubscribe",
        "push.unsubscribe",
        "Remove a subscription: {endpoint}",
        Source.BODY,
        tags=("push",),
    ),
    Route(
        "GET",
        f"{PREFIX}/deliveries",
        "deliveries.list",
        "Email and push delivery records (admin)",
        Source.QUERY,
        (
            QueryParam("user_id", Kind.STR, ("userId",)),
            QueryParam("status", Kind.STR),
            QueryParam("limit", Kind.INT, description="page size (1–200, default 50)"),
            QueryParam(
                "before", Kind.STR, description="keyset cursor: the previous page's `next_cursor` (opaque)"
            ),
        ),
        admin=True,
        tags=("deliveries",),
    ),
)
