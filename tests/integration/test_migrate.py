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
from tests.integration.test_cli_errors import only_line

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


def run_module(dsn: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGV`` with ``HERALD_DATABASE_URL=dsn`` and no other ``HERALD_*`` setting."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env={"HERALD_DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def herald_migrate(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``herald migrate ARGS`` against ``dsn``, in a thread: the session's event loop keeps running."""
    return await asyncio.to_thread(run_module, dsn, "herald_ops.cli", "migrate", *args)


async def database_exists(dsn: str) -> bool:
    admin = await asyncpg.connect(f"{PG_BASE}/postgres")
    try:
        name = dsn.rsplit("/", 1)[1]
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def test_command_line_says_what_it_did(dsn: str) -> None:
    first = await asyncio.to_thread(run_module, dsn, "herald_ops.migrate")
    assert first.returncode == 0, first.stderr
    assert f"{len(SCRIPTS)} script(s) applied" in first.stdout
    second = await asyncio.to_thread(run_module, dsn, "herald_ops.migrate")
    assert second.returncode == 0
    assert "is up to date" in second.stdout


async def test_a_misnamed_script_is_refused_before_anything_is_applied(dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    (sql_dir / "12_hotfix.sql").write_text("CREATE TABLE hotfix (id integer);\n")  # two digits, not three
    result = await herald_migrate(dsn, "--sql-dir", str(sql_dir))
    line = only_line(result, 1)
    assert line.startswith("herald migrate: failed:")
    assert "12_hotfix.sql" in line
    assert "NNN_name.sql" in line
    assert not await database_exists(dsn)


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
async def test_a_missing_or_empty_sql_directory_is_refused(dsn: str, tmp_path: Path, made: bool) -> None:
    sql_dir = tmp_path / "sql"
    if made:
        sql_dir.mkdir()
    result = await herald_migrate(dsn, "--sql-dir", str(sql_dir))
    assert only_line(result, 1).startswith(f"herald migrate: failed: {sql_dir}:")
    assert not await database_exists(dsn)


async def test_an_applied_script_missing_from_the_directory_is_a_warning(dsn: str, tmp_path: Path) -> None:
    """What a release sees after a rollback to it: the newer script's changes stay, the run succeeds."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    assert (await herald_migrate(dsn, "--sql-dir", str(sql_dir))).returncode == 0
    (sql_dir / SCRIPTS[-1]).unlink()
    result = await herald_migrate(dsn, "--sql-dir", str(sql_dir))
    line = only_line(result, 0)
    assert line.startswith(f"herald migrate: warning: {SCRIPTS[-1]} is recorded as applied")
    assert "is up to date" in result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "postgres://x:notaport/db",  # asyncpg's int() of the port: ValueError
        "postgresql://postgres@127.0.0.1:99999/db",  # the socket's OverflowError
        "postgresql://postgres@127.0.0.1:5432/db?sslmode=sometimes",  # ClientConfigurationError
        "not a url",
    ],
)
async def test_a_malformed_database_url_is_a_configuration_error(url: str) -> None:
    result = await asyncio.to_thread(run_module, url, "herald_ops.cli", "migrate")
    assert only_line(result, 2).startswith("herald: configuration error: HERALD_DATABASE_URL:")


RECOUNT = "014_recount_counters.sql"
COUNTERS = "SELECT user_id, unread_count, unseen_count, inbox_count FROM users ORDER BY user_id"
# A writer of a release before sql/008: it bumps unread and unseen but not inbox_count.
OLD_INSERT = """
WITH bumped AS (UPDATE users SET last_seq = last_seq + 1, unread_count = unread_count + 1,
                                 unseen_count = unseen_count + 1
                 WHERE user_id = $1 RETURNING last_seq)
INSERT INTO notifications (user_id, seq, id, type, category, title, message)
SELECT $1, last_seq, 'n' || last_seq, 'NEW_COMMENT', 'social', 't', 'm' FROM bumped"""


@pytest.fixture
async def before_recount(dsn: str, tmp_path: Path) -> AsyncIterator[asyncpg.Connection]:
    """A connection to ``dsn``'s database, migrated up to the script before the counters' recount."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    for script in sql_dir.glob("*.sql"):
        if script.name >= RECOUNT:
            script.unlink()
    await migrate(dsn, sql_dir)
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_drifted_counters_are_recounted_and_exact_ones_left_alone(
    dsn: str, before_recount: asyncpg.Connection
) -> None:
    """Writers of an older release left counters off (sql/014); expired rows still count."""
    db = before_recount
    await db.execute(
        "INSERT INTO users (user_id, unread_count, unseen_count, inbox_count)"
        " VALUES ('exact', 1, 0, 1), ('high', 5, 5, 5), ('low', 0, 0, 0), ('nothing', 2, 1, 3)"
    )
    await db.execute(
        """INSERT INTO notifications (user_id, seq, id, type, category, title, message, read_at, seen_at,
                                      archived_at, expires_at)
           VALUES ('exact', 1, 'a', 'NEW_COMMENT', 'social', 't', 'm', NULL, now(), NULL, NULL),
                  ('exact', 2, 'b', 'NEW_COMMENT', 'social', 't', 'm', now(), now(), now(), NULL),
                  ('high', 1, 'a', 'NEW_COMMENT', 'social', 't', 'm', now(), now(), now(), NULL),
                  ('low', 1, 'a', 'NEW_COMMENT', 'social', 't', 'm', NULL, NULL, NULL, now())"""
    )
    untouched = await db.fetchval("SELECT xmin::text FROM users WHERE user_id = 'exact'")
    assert RECOUNT in await migrate(dsn)
    assert [tuple(row) for row in await db.fetch(COUNTERS)] == [
        ("exact", 1, 0, 1),
        ("high", 0, 0, 0),
        ("low", 1, 1, 1),
        ("nothing", 0, 0, 0),
    ]
    assert await db.fetchval("SELECT xmin::text FROM users WHERE user_id = 'exact'") == untouched


async def test_the_recount_run_again_after_an_older_writer_recounts_again(
    dsn: str, before_recount: asyncpg.Connection
) -> None:
    db = before_recount
    await db.execute("INSERT INTO users (user_id) VALUES ('alice')")
    await db.execute(OLD_INSERT, "alice")
    assert RECOUNT in await migrate(dsn)
    assert tuple(await db.fetchrow(COUNTERS)) == ("alice", 1, 1, 1)

    await db.execute(OLD_INSERT, "alice")  # an older worker still running after the migration
    assert tuple(await db.fetchrow(COUNTERS)) == ("alice", 2, 2, 1)
    await db.execute((default_sql_dir() / RECOUNT).read_text())  # psql -f sql/014_recount_counters.sql
    assert tuple(await db.fetchrow(COUNTERS)) == ("alice", 2, 2, 2)
