"""``herald migrate``: apply ``sql/NNN_*.sql`` in order, once each.

Contract:
- creates the target database when it does not exist (connecting to the server's ``postgres`` database);
- takes a transaction-level advisory lock, so several hosts may run it at once: one applies, the others
  wait and then find nothing left to do;
- runs the pending scripts and their ``schema_migrations`` rows in one transaction, so a failing script
  leaves no trace and names itself in the error (scripts therefore cannot use ``CONCURRENTLY``);
- refuses to go on when an applied script's checksum changed (scripts are append-only);
- refuses, before touching the database, a missing or empty scripts directory and a ``.sql`` file not
  named ``NNN_name.sql`` (it would never be applied, which is surely not what its author meant);
- warns, and goes on, about a script recorded as applied that is no longer in the directory: that is
  what an older release sees after a rollback, which the append-only, backward-compatible scripts allow;
- reports a malformed database URL as a :class:`shared.settings.ConfigError`.
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
from shared.settings import ConfigError, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

_SCRIPT_NAME: Final = re.compile(r"(\d{3,})_[A-Za-z0-9_.-]+\.sql")
# Any constant works; it only has to be the same for every `herald migrate`.
_ADVISORY_LOCK_ID: Final = 0x4E7A1D_0001


class MigrationError(RuntimeError):
    """The scripts directory is unusable, a script failed, or an applied script was edited afterwards."""


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
    """The scripts of ``sql_dir`` sorted by number.

    Raises:
        MigrationError: ``sql_dir`` is missing or holds no script, a ``.sql`` file in it is not named
            ``NNN_name.sql``, two scripts share a number, or a script is not UTF-8 text.
    """
    if not sql_dir.is_dir():
        raise MigrationError(f"{sql_dir}: no such directory; it should hold the NNN_name.sql scripts")
    numbered: list[tuple[int, Path]] = []
    misnamed: list[str] = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _SCRIPT_NAME.fullmatch(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
        else:
            misnamed.append(path.name)
    if misnamed:
        # Skipping it would leave its author believing it ran.
        raise MigrationError(
            f"{sql_dir}: {', '.join(misnamed)}: not named NNN_name.sql (3 or more digits, '_', then "
            "letters, digits, '_', '.' or '-'); rename or remove it"
        )
    scripts: dict[int, Script] = {}
    for version, path in numbered:
        if version in scripts:
            raise MigrationError(f"{path.name}: number {version} is used by {scripts[version].name} too")
        try:
            sql = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        scripts[version] = Script(version, path.name, sql)
    if not scripts:
        raise MigrationError(f"{sql_dir}: no NNN_name.sql script in it")
    return [scripts[v] for v in sorted(scripts)]


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _malformed_url(exc: Exception) -> ConfigError:
    return ConfigError(f"HERALD_DATABASE_URL: not a usable PostgreSQL URL: {exc}")


async def _connect(dsn: str) -> asyncpg.Connection:
    """``asyncpg.connect``, a malformed DSN reported as the setting's :class:`ConfigError`.

    asyncpg parses the DSN only when connecting: a port that is no number fails ``int()`` (ValueError),
    a bad scheme or option is a ClientConfigurationError (a ValueError too), and a port past 65535 is
    the socket's OverflowError. None of their messages repeats the URL: no password is printed.
    """
    try:
        return await asyncpg.connect(dsn)
    except (ValueError, OverflowError) as exc:
        raise _malformed_url(exc) from exc


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it is missing; return whether it was created."""
    try:
        name = urlsplit(dsn).path.lstrip("/")
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise _malformed_url(exc) from exc
    if not name:
        raise ConfigError("HERALD_DATABASE_URL: the URL names no database")
    try:
        conn = await _connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await _connect(_with_database(dsn, "postgres"))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        return False  # another `herald migrate` created it first
    finally:
        await admin.close()
    return True


def _warn(message: str) -> None:
    print(f"herald migrate: warning: {message}", file=sys.stderr)


async def migrate(dsn: str, sql_dir: Path | None = None, *, warn: Callable[[str], None] = _warn) -> list[str]:
    """Apply every pending script; return the names applied (empty when up to date).

    ``warn`` receives one line for each script recorded as applied that ``sql_dir`` no longer holds.
    """
    sql_dir = sql_dir or default_sql_dir()
    scripts = discover(sql_dir)  # before any connection: a refused directory leaves no trace at all
    await ensure_database(dsn)
    conn = await _connect(dsn)
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
            on_disk = {script.version for script in scripts}
            for version in sorted(done.keys() - on_disk):
                warn(
                    f"{done[version]['name']} is recorded as applied but is not in {sql_dir}: "
                    "this release predates the database's schema (a rollback), or the script was deleted"
                )
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


def run(dsn: str | None = None, sql_dir: Path | None = None) -> int:
    """Entry point of ``herald migrate``; prints what it did.

    Raises:
        ConfigError: the database URL is malformed (``herald`` reports it as a configuration error).
    """
    dsn = dsn or load_settings().database_url
    try:
        applied = asyncio.run(migrate(dsn, sql_dir))
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
    # Through the `herald` command, which turns the errors of every subcommand into one line each.
    from herald_ops.cli import main

    raise SystemExit(main(["migrate", *sys.argv[1:]]))
