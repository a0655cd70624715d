"""worker.store.pool.is_outage matches by SQLSTATE exactly the errors the worker always treated as outages."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions
import pytest

from worker.store.pool import is_outage

# The classes the worker listed before matching by SQLSTATE: the reference the classification must keep.
LISTED_BEFORE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
)

POSTGRES_ERRORS = sorted(
    {
        value
        for value in vars(asyncpg.exceptions).values()
        if isinstance(value, type) and issubclass(value, asyncpg.PostgresError)
    },
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("error_class", POSTGRES_ERRORS, ids=lambda cls: f"{cls.sqlstate}-{cls.__name__}")
def test_every_postgres_error_is_classified_as_before(error_class: type[asyncpg.PostgresError]) -> None:
    error = error_class("test")
    assert is_outage(error) == isinstance(error, LISTED_BEFORE)


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError(), TimeoutError(), asyncpg.InterfaceError("closed"), OSError("unreachable")],
)
def test_socket_and_interface_errors_are_outages(error: BaseException) -> None:
    assert is_outage(error)


@pytest.mark.parametrize("error", [KeyError("bug"), ValueError(), asyncpg.UniqueViolationError("dup")])
def test_other_errors_are_not(error: BaseException) -> None:
    assert not is_outage(error)
