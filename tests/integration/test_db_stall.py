"""A database connection that goes silent (no reset, no close: a failover, a dropped route) does not stall
the worker: the statement on it times out (``HERALD_DB_COMMAND_TIMEOUT``), the batch is retried as an
outage (``herald_worker_database_up`` 0 meanwhile) and stored on a fresh connection.

Between a real worker process and Postgres sits a proxy that can freeze the connections open at that
moment (what arrives on them is swallowed, nothing is closed) while it still forwards new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg

from herald_ops.testing.client import publish
from herald_ops.testing.stack import free_port, fresh_id, http_get, stack_context, wait_until_sync

if TYPE_CHECKING:
    from herald_ops.testing.stack import HeraldProcess


class FreezingProxy:
    """Forwards ``127.0.0.1:port`` to ``target``, on an event loop in a thread of its own."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self._target = port, target
        self._frozen: list[dict[str, bool]] = []  # one flag per connection forwarded so far
        self.accepted_after_freeze = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> FreezingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    def freeze(self) -> int:
        """Freeze every connection open now; return how many."""

        async def freeze() -> int:
            for state in self._frozen:
                state["frozen"] = True
            return len(self._frozen)

        return asyncio.run_coroutine_threadsafe(freeze(), self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state = {"frozen": False}
        if any(other["frozen"] for other in self._frozen):
            self.accepted_after_freeze += 1
        self._frozen.append(state)
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if state["frozen"]:
                    await asyncio.Event().wait()  # swallowed, and the connection never closed
                sink.write(data)
                await sink.drain()
            sink.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))


def metric(worker: HeraldProcess, line: str) -> float:
    found = re.search(rf"^{re.escape(line)} (\S+)$", http_get(f"{worker.url}/metrics")[1].decode(), re.M)
    return float(found.group(1)) if found else 0.0


async def stored(dsn: str, title: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM notifications WHERE title = $1", title)
        return count
    finally:
        await conn.close()


def publish_events(amqp_url: str, users: list[str], title: str) -> None:
    bodies = [
        {"event_id": fresh_id("e"), "user_id": user, "type": "NEW_COMMENT", "title": title} for user in users
    ]
    asyncio.run(publish(amqp_url, *bodies))


def test_a_batch_on_a_frozen_connection_is_stored_on_a_fresh_one() -> None:
    with stack_context("herald_db_stall") as stack:
        pg = urlsplit(stack.database_url)
        with FreezingProxy(free_port(), (pg.hostname or "127.0.0.1", pg.port or 5432)) as proxy:
            via = pg._replace(netloc=f"{pg.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()
            worker = stack.start_worker(database_url=via, db_command_timeout=2, batch_size=5)
            users = [fresh_id() for _ in range(20)]
            publish_events(stack.amqp_url, users, "before")
            wait_until_sync(lambda: asyncio.run(stored(stack.database_url, "before")) == 20, 30, "stored")

            assert proxy.freeze() >= 1
            publish_events(stack.amqp_url, users, "frozen")

            wait_until_sync(
                lambda: asyncio.run(stored(stack.database_url, "frozen")) == 20, 60, "stored after a freeze"
            )
            assert proxy.accepted_after_freeze >= 1  # the retry went over a fresh connection
            assert metric(worker, 'herald_worker_db_retries_total{cause="outage"}') >= 1
            assert "database unavailable; holding events unacked" in worker.log_path.read_text()  # up 0
            wait_until_sync(lambda: metric(worker, "herald_worker_database_up") == 1, 30, "database up")
            assert worker.stop(timeout=30) == 0
