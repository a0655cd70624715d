"""What the worker's handlers share, built once at start-up by :mod:`worker.app` and passed explicitly.

Handlers receive the :class:`Runtime` rather than taking FastStream ``Context`` parameters: those are
resolved through a thread-pool hop per message, which halves throughput.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import structlog

from shared.coalesce import Coalescer
from worker import metrics
from worker.store import inbox
from worker.store.catalog import load_catalog
from worker.store.pool import is_outage

if TYPE_CHECKING:
    import asyncpg
    from faststream.rabbit import RabbitBroker

    from shared.preferences import Catalog
    from shared.settings import Settings
    from shared.topology import Topology
    from worker.publish import Publisher

log = structlog.get_logger("herald.worker")

# Users per session.open statement when connects arrive faster than the statements return.
SESSIONS_PER_STATEMENT: Final = 500


@dataclass
class Runtime:
    """The settings, topology names, broker, database pool, publisher and catalog of this worker process.

    ``catalog`` is replaced by :meth:`reload_catalog`; readers take ``runtime.catalog`` each time.
    ``sessions`` answers ``session.open`` lookups, concurrent ones in one statement.
    """

    settings: Settings
    topology: Topology
    broker: RabbitBroker
    pool: asyncpg.Pool
    publisher: Publisher
    catalog: Catalog
    sessions: Coalescer[str, inbox.Session] = field(init=False)

    def __post_init__(self) -> None:
        pool = self.pool
        self.sessions = Coalescer(
            lambda user_ids: inbox.open_sessions(pool, user_ids), SESSIONS_PER_STATEMENT
        )

    async def refresh_catalog(self) -> None:
        """Read the catalog again; raises when it cannot be read (what the pipeline needs: an event of a
        type not known yet is requeued then, rather than dead-lettered as unknown)."""
        self.catalog = await load_catalog(self.pool)
        metrics.CATALOG_TYPES.set(len(self.catalog))

    async def reload_catalog(self) -> None:
        """:meth:`refresh_catalog`, for SIGHUP and the periodic refresh: during an outage the current
        catalog is kept (and the failure logged)."""
        try:
            await self.refresh_catalog()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("catalog reload failed", error=repr(exc))
