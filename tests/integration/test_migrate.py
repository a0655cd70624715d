"""``herald migrate``: creates the database, applies each script once, is safe to run concurrently."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest

from herald_ops.migrate import MigrationError, default_sql_dir, migrate
from herald_ops.testing.stack import PG_BASE, ROOT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

SCRIPTS = [p.name for p in sorted(default_sql_dir().glob("[0-9][0-9][0-9]_*.sql"))]


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    """A database URL whose database does not exist yet; dropped afterwards."""
    name = f"herald_migrate_{uuid.uuid4().hex[:10]}"
    yield f"{PG_BASE}/{name}"
    admin = await asyncpg.connect(f"{PG_BASE}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_creates_the_database_and_applies_once(dsn: str) -> None:
    assert await migrate(dsn) == SCRIPTS
    assert await migrate(dsn) == []  # the second run is a no-op
    conn = await asyncpg.connect(dsn)
    try:
        applied = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
        assert [r["name"] for r in applied] == SCRIPTS
        assert await conn.fetchval("SELECT count(*) FROM notification_types") == 14
        assert await conn.fetchval("SELECT count(*) FROM notification_categories") == 5
        assert await conn.fetchval("SELECT count(*) FROM notification_types WHERE critical") == 1
    finally:
        await conn.close()


async def test_two_at_once_do_not_collide(dsn: str) -> None:
    first, second = await asyncio.gather(migrate(dsn), migrate(dsn))
    assert sorted(first + second) == SCRIPTS  # one applied everything, the other found nothing to do
    assert [] in (first, second)


async def test_an_edited_script_is_refused(dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    await migrate(dsn, sql_dir)
    catalog = sql_dir / SCRIPTS[-1]
    catalog.write_text(catalog.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(dsn, sql_dir)


async def test_scoped_keys_arrive_on_a_database_that_has_the_later_script(dsn: str, tmp_path: Path) -> None:
    """Installations had 006 before 005 existed: 005 is applied late, and rows stored before it keep
    their key in the namespace of events without a source."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    scoped = sql_dir / "005_idempotency_sources.sql"
    text = scoped.read_text()
    scoped.unlink()
    assert "005_idempotency_sources.sql" not in await migrate(dsn, sql_dir)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO users (user_id) VALUES ('u1')")
        insert = """INSERT INTO notifications (user_id, seq, id, type, category, title, message,
                                               idempotency_key)
                    VALUES ('u1', $1, $2, 'NEW_COMMENT', 'social', 't', 'm', 'e1')"""
        await conn.execute(insert, 1, "n1")
        scoped.write_text(text)
        assert await migrate(dsn, sql_dir) == ["005_idempotency_sources.sql"]
        assert await conn.fetchval("SELECT source FROM notifications WHERE id = 'n1'") == ""
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, 2, "n2")  # the same key without a source: still one notification
        await conn.execute(
            """INSERT INTO notifications (user_id, seq, id, type, category, title, message,
                                          idempotency_key, source)
               VALUES ('u1', 3, 'n3', 'NEW_COMMENT', 'social', 't', 'm', 'e1', 'billing')"""
        )
    finally:
        await conn.close()


async def test_command_line_says_what_it_did(dsn: str) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "herald_ops.migrate"],
            cwd=ROOT,
            env={"HERALD_DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert f"{len(SCRIPTS)} script(s) applied" in first.stdout
    second = await asyncio.to_thread(run)
    assert second.returncode == 0
    assert "is up to date" in second.stdout
