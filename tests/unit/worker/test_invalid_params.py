"""-32602 from a request model's ValidationError names the client's field, also through a union.

pydantic adds the union member it tried to ``loc`` (``expirationTime.int``, ``expirationTime.float``): the
client must see ``expirationTime``, with a reason that covers every member.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from shared.jsonrpc import ErrorCode, JsonRpcError
from worker.requests.common import Params, invalid_params
from worker.requests.notifications import ListParams
from worker.requests.push import SubscribeParams

SUBSCRIPTION: dict[str, Any] = {"endpoint": "https://push.example/1", "keys": {"p256dh": "a", "auth": "b"}}


class _Entry(Params):
    amount: Annotated[int | str, Field(description="a union inside Annotated")]


class _NestedUnionsParams(Params):
    """Unions below a list and a nested model, which no request model has yet."""

    entries: list[_Entry] | None = None
    choice: _Entry | int | None = None


def refused(model: type[BaseModel], params: Any) -> JsonRpcError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(params)
    error = invalid_params(caught.value, model)
    assert error.code == ErrorCode.INVALID_PARAMS
    return error


@pytest.mark.parametrize("value", ["soon", True, [1], {"at": 1}])
def test_a_union_field_is_named_by_its_alias_with_what_its_members_accept(value: Any) -> None:
    error = refused(SubscribeParams, SUBSCRIPTION | {"expirationTime": value})
    assert error.data == "expirationTime"
    assert error.message == "invalid params: expirationTime: Input should be a valid integer or number"


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        (
            SubscribeParams,
            {"endpoint": "https://push.example/1", "keys": {"p256dh": 5, "auth": "b"}},
            "keys.p256dh",
        ),
        (SubscribeParams, SUBSCRIPTION | {"keys": {"p256dh": "a", "auth": "b", "extra": 1}}, "keys.extra"),
        (SubscribeParams, SUBSCRIPTION | {"device": "a\x01b"}, "device"),
        (SubscribeParams, {"keys": SUBSCRIPTION["keys"]}, "endpoint"),
        (ListParams, {"types": ["GRADE_RELEASED", 7]}, "types.1"),
        (ListParams, {"unknown": 1}, "unknown"),
        (ListParams, [1, 2], "params"),
        (_NestedUnionsParams, {"entries": [{"amount": 1}, {"amount": 1.5}]}, "entries.1.amount"),
        (_NestedUnionsParams, {"choice": {"amount": None}}, "choice"),
    ],
)
def test_the_path_follows_fields_by_alias_list_indexes_and_unknown_members(
    model: type[BaseModel], params: Any, field: str
) -> None:
    assert refused(model, params).data == field


def test_a_union_below_a_list_reads_as_one_reason() -> None:
    error = refused(_NestedUnionsParams, {"entries": [{"amount": None}]})
    assert error.message == "invalid params: entries.0.amount: Input should be a valid integer or string"


def test_an_error_about_another_model_keeps_its_loc() -> None:
    with pytest.raises(ValidationError) as caught:
        _Entry.model_validate({"amount": None})  # raised inside a method, not by its params
    error = invalid_params(caught.value, SubscribeParams)
    assert error.data == "amount.int"


def test_an_endpoint_is_capped_in_bytes_not_characters() -> None:
    # 2,000 characters of CJK are 6,000 bytes: past what the endpoints' unique index can hold in a row.
    error = refused(SubscribeParams, SUBSCRIPTION | {"endpoint": "https://push.example/" + "推" * 2000})
    assert error.data == "endpoint"
    assert "2048 bytes" in error.message
