"""``herald migrate``: apply ``sql/NNN_*.sql`` in order, once each.

Contract:
- creates the target database when it does not exist (connecting to the server's ``postgres`` database);
- takes a transaction-level advisory lock, so several hosts may run it at once: one applies, the others
  wait and then find nothing left to do;
- runs the pending scripts and their ``schema_migrations`` rows in one transaction, so a failing script
  leaves no trace and names itself in the error (scripts therefore cannot use ``CONCURRENTLY``);
- refuses to go on when an applied script's checksum changed (scripts are append-only).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.resources import resource_dir
from shared.settings import load_settings

if TYPE_CHECKING:
    from pathlib import Path

_SCRIPT_NAME: Final = re.compile(r"^(\d{3,})_[A-Za-z0-9_.-]+\.sql$")
# Any constant works; it only has to be the same for every `herald migrate`.
_ADVISORY_LOCK_ID: Final = 0x4E7A1D_0001


class MigrationError(RuntimeError):
    """A script failed, or an applied script was edited afterwards."""


@dataclass(frozen=True, slots=True)
class Script:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def default_sql_dir() -> Path:
    """The ``sql/`` scripts shipped with Herald (see :func:`shared.resources.resource_dir`)."""
    return resource_dir("sql")


def discover(sql_dir: Path) -> list[Script]:
    """The scripts of ``sql_dir`` sorted by number; a duplicate number is an error."""
    scripts: dict[int, Script] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _SCRIPT_NAME.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in scripts:
            raise MigrationError(f"{path.name}: number {version} is used by {scripts[version].name} too")
        scripts[version] = Script(version, path.name, path.read_text(encoding="utf-8"))
    return [scripts[v] for v in sorted(scripts)]


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it is missing; return whether it was created."""
    name = urlsplit(dsn).path.lstrip("/")
    if not name:
        raise MigrationError("HERALD_DATABASE_URL: the URL names no database")
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await asyncpg.connect(_with_database(dsn, "postgres"))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        return False  # another `herald migrate` created it first
    finally:
        await admin.close()
    return True


async def migrate(dsn: str, sql_dir: Path | None = None) -> list[str]:
    """Apply every pending script; return the names applied (empty when up to date)."""
    scripts = discover(sql_dir or default_sql_dir())
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_ID)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                row["version"]: row
                for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            }
            for script in scripts:
                previous = done.get(script.version)
                if previous is not None:
                    if previous["checksum"] != script.checksum:
                        raise MigrationError(
                            f"{script.name}: changed after it was applied; add a new script instead"
                        )
                    continue
                try:
                    async with conn.transaction():  # a savepoint: the error names the script
                        await conn.execute(script.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                            script.version,
                            script.name,
                            script.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{script.name}: {exc.__class__.__name__}: {exc}") from exc
                applied_now.append(script.name)
    finally:
        await conn.close()
    return applied_now


def run(dsn: str | None = None) -> int:
    """Entry point of ``herald migrate`` / ``python -m herald_ops.migrate``; prints what it did."""
    dsn = dsn or load_settings().database_url
    try:
        applied = asyncio.run(migrate(dsn))
    except (MigrationError, OSError, asyncpg.PostgresError) as exc:
        print(f"herald migrate: failed: {exc}", file=sys.stderr)
        return 1
    database = urlsplit(dsn).path.lstrip("/")
    if applied:
        for name in applied:
            print(f"applied {name}")
        print(f"herald migrate: {len(applied)} script(s) applied to {database}")
    else:
        print(f"herald migrate: {database} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
