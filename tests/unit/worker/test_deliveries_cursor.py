"""``deliveries.list``'s cursor without a database: what it makes reads back, and a forged one is -32602
naming ``before`` whenever the query could not take it (never an internal error)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest

from shared.jsonrpc import ErrorCode, JsonRpcError
from worker.requests.deliveries import _cursor, _parse_cursor


def forged(*parts: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def test_a_cursor_reads_back_as_the_rows_position() -> None:
    created_at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    job_id = "0190f3c2a1b24c5d8e6f7a8b9c0d1e2f:user-1@example:push:7"
    assert _parse_cursor(_cursor({"created_at": created_at, "id": job_id})) == (created_at, job_id)


def test_an_offset_is_read_as_the_same_instant() -> None:
    at, _ = _parse_cursor(forged("2026-03-01T13:30:00+01:00", "j"))
    assert at == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "cursor",
    [
        forged("0001-01-01T00:00:00+01:00", "j"),  # year 0 in UTC
        forged("9999-12-31T23:59:59-01:00", "j"),  # year 10000 in UTC
        forged("2026-01-01T00:00:00", "j"),  # no offset
        forged("2026-01-01T00:00:00+00:00", "a\u0000b"),
        forged("2026-01-01T00:00:00+00:00", ""),
        forged("2026-01-01T00:00:00+00:00", 7),
        forged(20260101, "j"),
        forged("2026-01-01T00:00:00+00:00", "j", "extra"),
        base64.urlsafe_b64encode(b'{"a": 1, "b": 2}').decode(),
        "not-a-cursor",
        "é",
    ],
)
def test_a_forged_cursor_is_invalid_params_naming_before(cursor: str) -> None:
    with pytest.raises(JsonRpcError) as caught:
        _parse_cursor(cursor)
    assert (caught.value.code, caught.value.data) == (ErrorCode.INVALID_PARAMS, "before")
