"""What every worker handler needs, built once at start-up (see ``worker.app``).

Handlers call :func:`current` rather than taking FastStream ``Context`` parameters: those are resolved
through a thread-pool hop per message (LIBRARY-NOTES), which halves throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg
    from faststream.rabbit import RabbitBroker

    from shared.preferences import Catalog
    from shared.settings import Settings
    from shared.topology import Topology


@dataclass
class WorkerState:
    """The settings, topology names, broker, database pool and catalog of this worker process."""

    settings: Settings
    topology: Topology
    broker: RabbitBroker
    pool: asyncpg.Pool
    catalog: Catalog


_state: WorkerState | None = None


def install(state: WorkerState) -> None:
    """Make ``state`` what :func:`current` returns (called by the app's start-up hook)."""
    global _state
    _state = state


def current() -> WorkerState:
    """The running worker's state; raises ``RuntimeError`` before start-up finished."""
    if _state is None:
        raise RuntimeError("the worker has not started")
    return _state
