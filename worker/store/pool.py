"""The asyncpg pool, and which database errors mean "unavailable now" rather than "bad data"."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg
import orjson

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from asyncpg.pool import PoolConnectionProxy

    from shared.settings import Settings

    # What the store functions take: a plain connection or one acquired from the pool.
    Connection = asyncpg.Connection | PoolConnectionProxy

T = TypeVar("T")

# SQLSTATEs of an outage: whatever the event, the database cannot take it now, so the batch is kept
# unacked and retried after a pause. A whole class by its first two characters, or one exact code.
_OUTAGE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception: the connection failed, or a pooler in between broke it
        "53",  # insufficient resources: disk full, out of memory, too many connections
    }
)
_OUTAGE_CODES: Final = frozenset(
    {
        "25006",  # read-only transaction: a primary demoted in a failover
        "40001",  # serialization failure
        "40P01",  # deadlock detected
        "57014",  # query canceled (statement timeout)
        "57P01",  # admin shutdown
        "57P02",  # crash shutdown
        "57P03",  # cannot connect now (starting up, shutting down, recovering)
    }
)


class DatabaseUnreachable(Exception):
    """A new connection of the pool was refused: ``__cause__`` is what the server said.

    Whatever it was (credentials refused during a rotation, a database that does not accept connections
    or does not exist during a restore), it came before any statement, so it says nothing about the data
    of the event or request that needed the connection: an outage (:func:`is_outage`), not a reason to
    dead-letter.
    """


class _Connection(asyncpg.Connection):
    """A connection whose graceful close gives up on a silent server: terminated, not an error.

    ``close`` waits (``command_timeout``) for the server to acknowledge; a connection that went silent
    never does, and the pool's close at shutdown would raise and exit non-zero.
    """

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's signature)
        try:
            await super().close(timeout=timeout)
        except TimeoutError:
            self.terminate()


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg's ``connect``, the server's refusals raised as :class:`DatabaseUnreachable`."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except asyncpg.PostgresError as exc:
        raise DatabaseUnreachable(f"cannot connect: {exc.__class__.__name__}: {exc}") from exc


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says nothing about the data: the database or the way to it is unavailable.

    Socket errors (``OSError``, ``TimeoutError`` included), asyncpg's own interface errors, a new
    connection refused (:class:`DatabaseUnreachable`), and server errors by SQLSTATE
    (``asyncpg.PostgresError.sqlstate``).
    """
    if isinstance(error, OSError | asyncpg.InterfaceError | DatabaseUnreachable):
        return True
    if isinstance(error, asyncpg.PostgresError):
        sqlstate: str = error.sqlstate or ""
        return sqlstate in _OUTAGE_CODES or sqlstate[:2] in _OUTAGE_CLASSES
    return False


#: Pauses between tries while the database is out: doubling from 0.1 s, at most 5 s.
OUTAGE_BACKOFF_START: Final = 0.1
OUTAGE_BACKOFF_MAX: Final = 5.0


async def through_outage(operation: Callable[[], Awaitable[T]], retries: int = 12) -> T:
    """``await operation()``, tried again after a pause while it fails with an outage (:func:`is_outage`).

    At most ``retries`` more times (12: about 30 s of pauses); then the outage's error is raised. Any other
    error is raised at once.
    """
    delay = OUTAGE_BACKOFF_START
    for _ in range(retries):
        try:
            return await operation()
        except Exception as exc:
            if not is_outage(exc):
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, OUTAGE_BACKOFF_MAX)
    return await operation()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (``RESET ALL``, ``UNLISTEN *``, unlock all, ``CLOSE ALL``).

    That query is one more round trip on every release, about 7 % of the worker's time per request. The
    worker leaves no session state behind: no ``SET``, ``LISTEN`` or cursor outside a transaction, and the
    one session-level advisory lock (retention) is unlocked or its connection terminated. asyncpg still
    rolls back a transaction left open before this runs.
    """


#: Run first in a transaction whose statements must be planned with their values (see create_pool).
PLAN_WITH_VALUES: Final = "SET LOCAL plan_cache_mode = force_custom_plan"

#: Run first in a transaction that reads and then writes a user's data (``$1`` = the user id): every writer
#: of a user's notifications and preferences takes this lock first. A statement of its own, so that the
#: transaction's next statements take their snapshot after the wait (under READ COMMITTED a statement that
#: waited for a lock still reads the other rows as they were when it started).
LOCK_USER: Final = "SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE"


async def create_pool(settings: Settings, *, custom_plans: bool = False) -> asyncpg.Pool:
    """A pool whose connections encode and decode ``json``/``jsonb`` with orjson.

    Args:
        settings: the database URL and the pool's bounds.
        custom_plans: plan every execution with its own values (``plan_cache_mode =
            force_custom_plan``) instead of letting Postgres switch a prepared statement to a generic
            plan. A generic plan is kept until the statistics of its tables change, so one made while a
            table was small keeps scanning it as it grows. The worker's statements are written to be
            index probes under any plan (``tests/integration/test_generic_plans.py``) and save the
            planning; ``herald-delivery`` pays it on a few statements per batch of sends.
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        settings.database_url,
        # A connection that goes silent (no reset: a failover, a dropped route) would otherwise hold its
        # statement, and the batch loop behind it, for good. On the timeout asyncpg raises TimeoutError (an
        # outage: the work is retried) and, once its cancel request is not answered either, terminates
        # the connection, so the retry gets a fresh one.
        command_timeout=settings.db_command_timeout,
        connect=_connect,
        connection_class=_Connection,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"plan_cache_mode": "force_custom_plan"} if custom_plans else None,
    )
    return pool


#: Seconds the readiness probe's ``SELECT 1`` may take, and its connection's release after it.
PING_TIMEOUT: Final = 1.0


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip to the database (the readiness probe), given up after about ``2 * PING_TIMEOUT``.

    The timeout also bounds the release: a connection whose ``SELECT 1`` timed out waits for its cancel
    request's answer, which a silent connection never sends; past the timeout it is terminated.
    """
    async with pool.acquire(timeout=PING_TIMEOUT) as conn:
        await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)
