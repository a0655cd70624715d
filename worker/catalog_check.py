"""Whether a type missing from the worker's catalog was just added by an operator.

The catalog is cached (reloaded on SIGHUP and every few minutes), so the first events of a type an operator
just added name a type the cache does not have. Before such an event is dead-lettered as unknown, the
catalog is read again: at most every few seconds after a read that worked, with the events that ask while
a read runs waiting for that one, so a burst of the new type's events is all accepted.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from worker.store.pool import through_outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.preferences import Catalog

#: Seconds after a reload that worked during which an unknown type is refused without reading again.
RELOAD_INTERVAL_SECONDS: Final = 5.0


class CatalogCheck:
    """See the module docstring.

    Args:
        catalog: the current catalog (read each time: a reload replaces it).
        reload: reads the catalog again and replaces it; raises when it cannot be read.
    """

    def __init__(self, catalog: Callable[[], Catalog], reload: Callable[[], Awaitable[object]]) -> None:
        self._catalog = catalog
        self._reload = reload
        self._checked = float("-inf")
        self._reloading: asyncio.Future[None] | None = None

    async def has(self, name: str) -> bool:
        """Whether ``name`` is in the catalog, reading it again if need be (see the module docstring).

        Raises:
            Exception: the catalog could not be read, through an outage of about 30 s included; the
                event is to be requeued, not refused. A failed read does not count as a check.
        """
        if name in self._catalog():
            return True  # read again since the event was accepted, for another event of the type
        if self._reloading is None:
            if time.monotonic() - self._checked < RELOAD_INTERVAL_SECONDS:
                return False
            self._reloading = asyncio.ensure_future(self._reload_once())
        # Shielded: one waiter cancelled (the worker stopping) does not cancel the read for the others.
        await asyncio.shield(self._reloading)
        return name in self._catalog()

    async def _reload_once(self) -> None:
        try:
            # A short outage is waited out here, the event unacked, rather than the event requeued: it
            # would come straight back and use up its delivery limit within the outage.
            await through_outage(self._reload)
            self._checked = time.monotonic()
        finally:
            self._reloading = None
