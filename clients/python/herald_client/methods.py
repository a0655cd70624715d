"""Typed helpers for the request methods of PROTOCOL §5, mixed into :class:`~herald_client.HeraldClient`.

Each helper is one :meth:`request` with its params spelled out; the ones whose result carries the user's
counts also update the client's :attr:`unread_count` and :attr:`unseen_count`, and
:meth:`fetch_unread_count` anchors a missing watermark at the result's ``last_seq``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class InboxMethods(ABC):
    """The §5 methods over :meth:`request`, which the connection (``HeraldClient``) implements."""

    @abstractmethod
    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request budget is the documented API
    ) -> Any:
        """Send one request and return its result."""

    @abstractmethod
    def _take_counts(self, unread: Any, unseen: Any, last_seq: Any) -> None:
        """Record the user's counts from a result, read with ``last_seq`` (amendment 51)."""

    @abstractmethod
    def _anchor(self, last_seq: Any) -> None:
        """Take a count result's ``last_seq`` (an ``int``; anything else is ignored): it anchors a missing
        watermark."""

    async def list_notifications(
        self,
        *,
        limit: int | None = None,
        before: int | None = None,
        page: int | None = None,
        unread_only: bool | None = None,
        types: list[str] | None = None,
        categories: list[str] | None = None,
        archived: bool | None = False,
    ) -> dict[str, Any]:
        """``notifications.list``: ``{"items" (newest first), "next_cursor", "total", "unread_count",
        "unseen_count"}``; ``archived``: ``False`` the inbox (default), ``True`` the archive, ``None``
        both. Page with ``before`` (the last page's ``next_cursor``), or by number with ``page`` (from 1,
        at most 1,000; not both)."""
        params = {"limit": limit, "before": before, "page": page, "unread_only": unread_only, "types": types}
        params["categories"] = categories
        sent = {k: v for k, v in params.items() if v is not None} | {"archived": archived}
        return await self._counting("notifications.list", sent)

    async def sync(self, since: int, limit: int | None = None) -> dict[str, Any]:
        """``notifications.sync`` (one page, no side effects): ``{"items" (seq ascending), "has_more"}``."""
        params: dict[str, Any] = {"since": since} | ({"limit": limit} if limit is not None else {})
        result: dict[str, Any] = await self.request("notifications.sync", params)
        return result

    async def fetch_unread_count(self) -> int:
        """``notifications.unread_count``; also updates :attr:`unread_count` and :attr:`unseen_count`.

        Its ``last_seq`` anchors a missing watermark (amendment 42): the worker read it after this
        connection was attached to the user's exchange, so every later notification arrives live."""
        result = await self.request("notifications.unread_count")
        count: int = result["count"]
        self._take_counts(count, result.get("unseen_count"), result.get("last_seq"))
        self._anchor(result.get("last_seq"))
        return count

    async def mark_read(self, ids: list[str]) -> dict[str, Any]:
        """``notifications.mark_read``: ``{"updated", "unread_count"}``."""
        return await self._counting("notifications.mark_read", {"ids": ids})

    async def mark_unread(self, ids: list[str]) -> dict[str, Any]:
        """``notifications.mark_unread``: ``{"updated", "unread_count"}``."""
        return await self._counting("notifications.mark_unread", {"ids": ids})

    async def mark_all_read(self) -> dict[str, Any]:
        """``notifications.mark_all_read``: ``{"updated", "unread_count": 0}``."""
        return await self._counting("notifications.mark_all_read", {})

    async def delete(self, ids: list[str]) -> dict[str, Any]:
        """``notifications.delete``: ``{"deleted", "unread_count"}``."""
        return await self._counting("notifications.delete", {"ids": ids})

    async def mark_seen(self, ids: list[str] | None = None) -> dict[str, Any]:
        """``notifications.mark_seen`` of ``ids``, or of everything when ``ids`` is ``None`` (the bell was
        opened): ``{"updated", "unread_count", "unseen_count"}``."""
        return await self._counting("notifications.mark_seen", {"all": True} if ids is None else {"ids": ids})

    async def archive(self, ids: list[str]) -> dict[str, Any]:
        """``notifications.archive``: ``{"updated", "unread_count", "unseen_count"}``."""
        return await self._counting("notifications.archive", {"ids": ids})

    async def unarchive(self, ids: list[str]) -> dict[str, Any]:
        """``notifications.unarchive``: ``{"updated", "unread_count", "unseen_count"}``."""
        return await self._counting("notifications.unarchive", {"ids": ids})

    async def act(self, notification_id: str, action_id: str) -> dict[str, Any]:
        """``notifications.act``: record the user's choice (the first is final; it also marks the item
        read): ``{"acted", "action_id", "acted_at", "unread_count", "unseen_count"}``."""
        return await self._counting("notifications.act", {"id": notification_id, "action_id": action_id})

    async def get_preferences(self) -> dict[str, Any]:
        """``preferences.get``: the effective Preferences document."""
        result: dict[str, Any] = await self.request("preferences.get")
        return result

    async def update_preferences(self, patch: dict[str, Any]) -> dict[str, Any]:
        """``preferences.update`` with a partial document (deep merge); returns the new document."""
        result: dict[str, Any] = await self.request("preferences.update", patch)
        return result

    async def reset_preferences(self) -> dict[str, Any]:
        """``preferences.reset``: back to the catalog defaults; returns the new document."""
        result: dict[str, Any] = await self.request("preferences.reset")
        return result

    async def broadcast(
        self, title: str, message: str, *, type: str | None = None, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``notifications.broadcast`` (admin tokens only, else error 4003): ``{"accepted", "event_id"}``."""
        params: dict[str, Any] = {"title": title, "message": message}
        params |= {k: v for k, v in (("type", type), ("data", data)) if v is not None}
        result: dict[str, Any] = await self.request("notifications.broadcast", params)
        return result

    async def get_profile(self) -> dict[str, Any]:
        """``profile.get``: ``{"user_id", "email", "name", "locale", "timezone", "updated_at"}``."""
        result: dict[str, Any] = await self.request("profile.get")
        return result

    async def vapid_key(self) -> str:
        """``push.vapid_key``: the base64url application server key to subscribe a browser with."""
        result: dict[str, Any] = await self.request("push.vapid_key")
        return str(result["public_key"])

    async def push_subscribe(self, subscription: dict[str, Any], device: str | None = None) -> str:
        """``push.subscribe`` with a ``PushSubscription.toJSON()`` object; returns the subscription id."""
        params = {**subscription, **({"device": device} if device is not None else {})}
        result: dict[str, Any] = await self.request("push.subscribe", params)
        return str(result["id"])

    async def push_unsubscribe(self, endpoint: str) -> int:
        """``push.unsubscribe``: how many subscriptions were removed (0 or 1)."""
        result: dict[str, Any] = await self.request("push.unsubscribe", {"endpoint": endpoint})
        return int(result["removed"])

    async def push_subscriptions(self) -> list[dict[str, Any]]:
        """``push.list``: ``[{"id", "endpoint", "device", "created_at"}]``, newest first."""
        result: dict[str, Any] = await self.request("push.list")
        return list(result["items"])

    async def list_deliveries(self, **filters: Any) -> dict[str, Any]:
        """``deliveries.list`` (admin): filters ``user_id``, ``status``, ``limit``, ``before``."""
        result: dict[str, Any] = await self.request("deliveries.list", filters)
        return result

    async def ping(self) -> str:
        """``ping`` → ``"pong"``."""
        result: str = await self.request("ping")
        return result

    async def _counting(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(method, params)
        self._take_counts(result.get("unread_count"), result.get("unseen_count"), result.get("last_seq"))
        return result
