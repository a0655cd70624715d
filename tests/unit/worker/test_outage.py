"""worker.store.pool.is_outage matches by SQLSTATE exactly the errors the worker always treated as outages,
and every connection exception (class 08) besides; a connection the server refused is an outage too."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions
import pytest

from worker.store.pool import DatabaseUnreachable, is_outage

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
    # Class 08 whole: a protocol violation or connection failure (a pooler in between) is no bad data.
    connection_exception = (error_class.sqlstate or "").startswith("08")
    assert is_outage(error) == (isinstance(error, LISTED_BEFORE) or connection_exception)


@pytest.mark.parametrize(
    "refusal",
    [
        asyncpg.InvalidPasswordError("rotated"),
        asyncpg.InvalidCatalogNameError("restoring"),
        asyncpg.ObjectNotInPrerequisiteStateError("database does not allow connections"),
    ],
)
def test_a_refused_connection_is_an_outage_whatever_the_server_said(refusal: asyncpg.PostgresError) -> None:
    assert not is_outage(refusal)  # raised by a statement, these would be about the statement
    unreachable = DatabaseUnreachable(str(refusal))
    unreachable.__cause__ = refusal  # as the pool's connect raises it: `raise ... from refusal`
    assert is_outage(unreachable)


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError(), TimeoutError(), asyncpg.InterfaceError("closed"), OSError("unreachable")],
)
def test_socket_and_interface_errors_are_outages(error: BaseException) -> None:
    assert is_outage(error)


@pytest.mark.parametrize("error", [KeyError("bug"), ValueError(), asyncpg.UniqueViolationError("dup")])
def test_other_errors_are_not(error: BaseException) -> None:
    assert not is_outage(error)
