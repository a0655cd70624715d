"""``herald-api`` end to end: a real HTTP client (httpx) against real api, worker and gateway processes.

Notifications are seeded in Postgres (``herald_ops.testing.requests.seed``); changes made over HTTP are
watched on a real WebSocket connection of the same user, which must see the same events a change made
over the socket produces. This module covers the inbox routes (list, counts, sync, bulk changes, ETags),
broadcast, preferences, the deliveries listing, query members a route does not take, a 405's ``Allow``
and the README's curl examples; the module's ``env``, ``http``, ``auth`` and ``error_of`` are shared with
``test_api_routes_and_errors`` and ``test_api_limits``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import orjson
import pytest

from herald_ops.testing.requests import WsClient, seed, unread_truth
from herald_ops.testing.stack import ROOT, fresh_id, mint, stack_context
from worker.vapid import new_key_pair

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from herald_ops.testing.stack import HeraldProcess, Stack

pytestmark = pytest.mark.timeout(120)
INBOX = "/api/notifications/realtime"
DELIVERIES = "/api/notifications/deliveries"
ORIGIN = "https://app.example"


@dataclass
class Env:
    stack: Stack
    gateway: HeraldProcess
    api: HeraldProcess


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """A stack of its own: one worker (Web Push configured, so every method serves), one gateway, one api
    (allowing one cross-origin page)."""
    with stack_context() as stack:
        stack.start_worker(vapid_private_key=new_key_pair()[0])
        gateway = stack.start_gateway()
        yield Env(stack, gateway, stack.start_api(allowed_origins=ORIGIN))


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=env.api.url, timeout=15) as client:
        yield client


@pytest.fixture
async def db(env: Env) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(env.stack.database_url)
    try:
        yield conn
    finally:
        await conn.close()


def auth(user: str, *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(user, admin=admin)}"}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "data"}
    return error


async def test_list_pages_in_the_seed_shape_beside_the_cursor(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = fresh_id()
    seqs = await seed(db, user, 45)
    first = (await http.get(INBOX, params={"page": 1, "limit": 20}, headers=auth(user))).json()
    assert {
        k: first[k] for k in ("total", "page", "limit", "totalPages", "unread_count", "unseen_count")
    } == {
        "total": 45,
        "page": 1,
        "limit": 20,
        "totalPages": math.ceil(45 / 20),
        "unread_count": 45,
        "unseen_count": 45,
    }
    assert [item["seq"] for item in first["data"]] == seqs[::-1][:20]
    third = (await http.get(INBOX, params={"page": 3, "limit": 20}, headers=auth(user))).json()
    assert [item["seq"] for item in third["data"]] == seqs[::-1][40:]
    assert third["next_cursor"] is None
    by_cursor = await http.get(INBOX, params={"before": first["next_cursor"]}, headers=auth(user))
    assert [item["seq"] for item in by_cursor.json()["data"]] == seqs[::-1][20:40]
    assert by_cursor.json()["page"] is None
    # The seed's defaults: page 1, 20 per page.
    default = (await http.get(INBOX, headers=auth(user))).json()
    assert (default["page"], default["limit"], len(default["data"])) == (1, 20, 20)


async def test_unread_only_and_the_count_follow_a_mark_read(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = fresh_id()
    seqs = await seed(db, user, 5)
    target = f"{user}-{seqs[0]}"
    response = await http.patch(f"{INBOX}/{target}/read", headers=auth(user))
    assert response.json().items() >= {"updated": 1, "unread_count": 4}.items()
    count = await http.get(f"{INBOX}/unread-count", headers=auth(user))
    assert count.json().items() >= {"count": 4}.items()
    assert (await unread_truth(db, user)) == (4, 4)
    unread = (await http.get(INBOX, params={"unreadOnly": "true"}, headers=auth(user))).json()
    assert target not in {item["id"] for item in unread["data"]}
    assert unread["total"] == 4


async def test_sync_and_bulk_changes(http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    user = fresh_id()
    seqs = await seed(db, user, 4)
    synced = (await http.get(f"{INBOX}/sync", params={"since": seqs[1]}, headers=auth(user))).json()
    assert ([item["seq"] for item in synced["items"]], synced["has_more"]) == (seqs[2:], False)
    ids = [f"{user}-{seq}" for seq in seqs]
    read = await http.post(f"{INBOX}/read", json={"ids": ids[:3]}, headers=auth(user))
    assert read.json().items() >= {"updated": 3, "unread_count": 1}.items()
    unread = await http.post(f"{INBOX}/unread", json={"ids": ids[:1]}, headers=auth(user))
    assert unread.json().items() >= {"updated": 1, "unread_count": 2}.items()
    deleted = await http.post(f"{INBOX}/delete", json={"ids": ids[2:]}, headers=auth(user))
    assert deleted.json().items() >= {"deleted": 2, "unread_count": 1}.items()
    assert (await unread_truth(db, user)) == (1, 1)


async def test_list_and_count_answer_304_to_a_matching_etag(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = fresh_id()
    await seed(db, user, 3)
    for path in (INBOX, f"{INBOX}/unread-count"):
        first = await http.get(path, headers=auth(user))
        etag = first.headers["ETag"]
        again = await http.get(path, headers={**auth(user), "If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
    await http.post(f"{INBOX}/mark-all-read", headers=auth(user))
    changed = await http.get(f"{INBOX}/unread-count", headers={**auth(user), "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json().items() >= {"count": 0}.items()


async def test_changes_over_http_reach_the_users_open_socket(
    env: Env, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = fresh_id()
    seqs = await seed(db, user, 4)
    socket = await WsClient.connect(env.gateway.ws_url, user)
    try:
        await socket.next_event("connected")
        ids = [f"{user}-{seq}" for seq in seqs]
        await http.patch(f"{INBOX}/{ids[0]}/read", headers=auth(user))
        assert (await socket.next_event("notification:read")).items() >= {
            "ids": [ids[0]],
            "unread_count": 3,
        }.items()
        await http.patch(f"{INBOX}/{ids[0]}/unread", headers=auth(user))
        assert (await socket.next_event("notification:unread")).items() >= {
            "ids": [ids[0]],
            "unread_count": 4,
        }.items()
        await http.delete(f"{INBOX}/{ids[1]}", headers=auth(user))
        assert (await socket.next_event("notification:deleted")).items() >= {
            "ids": [ids[1]],
            "unread_count": 3,
        }.items()
        await http.post(f"{INBOX}/read", json={"ids": ids[2:]}, headers=auth(user))
        assert (await socket.next_event("notification:read")).items() >= {
            "ids": ids[2:],
            "unread_count": 1,
        }.items()
        await http.post(f"{INBOX}/mark-all-read", headers=auth(user))
        assert (await socket.next_event("notification:read")).items() >= {
            "all": True,
            "unread_count": 0,
        }.items()
        await http.put("/api/notifications/preferences", json={"courseUpdates": False}, headers=auth(user))
        updated = await socket.next_event("preferences:updated")
        assert updated["types"]["COURSE_UPDATE"] == {"in_app": False, "email": False, "push": False}
    finally:
        await socket.close()


async def test_broadcast_is_admin_only_and_reaches_sockets(env: Env, http: httpx.AsyncClient) -> None:
    body = {"title": "Maintenance tonight", "message": "From 22:00", "data": {}}
    user = fresh_id()
    error = error_of(await http.post(f"{INBOX}/broadcast", json=body, headers=auth(user)), 403)
    assert error["code"] == 4003
    socket = await WsClient.connect(env.gateway.ws_url, user)
    try:
        await socket.next_event("connected")
        accepted = await http.post(f"{INBOX}/broadcast", json=body, headers=auth("ops", admin=True))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["accepted"] is True
        frame = await socket.next_event("notification:new")
        assert (frame["title"], frame["type"]) == ("Maintenance tonight", "SYSTEM_ANNOUNCEMENT")
    finally:
        await socket.close()


async def test_another_users_ids_are_a_no_op_never_a_leak(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    owner, other = fresh_id("owner"), fresh_id("other")
    seqs = await seed(db, owner, 2)
    theirs = f"{owner}-{seqs[0]}"
    missing = f"{owner}-does-not-exist"
    for path in (f"{INBOX}/{theirs}/read", f"{INBOX}/{missing}/read"):
        response = await http.patch(path, headers=auth(other))
        assert response.status_code == 200
        assert response.json().items() >= {"updated": 0, "unread_count": 0}.items()
    deleted = await http.delete(f"{INBOX}/{theirs}", headers=auth(other))
    assert deleted.json().items() >= {"deleted": 0, "unread_count": 0}.items()
    page = (await http.get(INBOX, headers=auth(other))).json()
    assert (page["data"], page["total"]) == ([], 0)
    assert (await unread_truth(db, owner)) == (2, 2)
    assert (await http.get(f"{INBOX}/unread-count", headers=auth(owner))).json().items() >= {
        "count": 2,
        "last_seq": max(seqs),
    }.items()


def delivery_cursor(created_at: str, job_id: object) -> str:
    """A ``deliveries.list`` cursor as a client could forge one (the worker's encoding)."""
    return base64.urlsafe_b64encode(orjson.dumps([created_at, job_id])).decode().rstrip("=")


async def test_deliveries_page_by_cursor_and_a_forged_cursor_is_400(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = fresh_id()
    ids = [f"{uuid.uuid4().hex}:{user}:email" for _ in range(3)]
    await db.execute(
        """INSERT INTO delivery_jobs (id, notification_id, user_id, channel, notification, due_at, created_at)
           SELECT id, split_part(id, ':', 1), $2, 'email', '{}'::jsonb, now(),
                  now() - make_interval(secs => n)
             FROM unnest($1::text[]) WITH ORDINALITY AS j(id, n)""",
        ids,
        user,
    )
    admin = auth("ops", admin=True)
    first = await http.get(DELIVERIES, params={"user_id": user, "limit": 2}, headers=admin)
    assert [item["id"] for item in first.json()["items"]] == ids[:2], first.text
    cursor = first.json()["next_cursor"]
    assert isinstance(cursor, str)
    second = await http.get(DELIVERIES, params={"user_id": user, "limit": 2, "before": cursor}, headers=admin)
    assert second.status_code == 200, second.text
    assert ([item["id"] for item in second.json()["items"]], second.json()["next_cursor"]) == (ids[2:], None)
    at = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))[0]
    forged = [
        delivery_cursor("0001-01-01T00:00:00+01:00", ids[0]),  # before year 1 in UTC
        delivery_cursor("9999-12-31T23:59:59-01:00", ids[0]),  # after year 9999 in UTC
        delivery_cursor("2026-01-01T00:00:00", ids[0]),  # no offset: never a cursor
        delivery_cursor(at, "a\u0000b"),  # NUL: text Postgres cannot hold
        delivery_cursor(at, ""),
        delivery_cursor(at, 7),
        "not-a-cursor",
    ]
    for before in forged:
        response = await http.get(DELIVERIES, params={"user_id": user, "before": before}, headers=admin)
        error = error_of(response, 400)
        assert (error["code"], error["data"]) == (-32602, "before"), (before, error)


async def test_preferences_accept_the_seeds_flags_and_herald_document(http: httpx.AsyncClient) -> None:
    headers = auth(fresh_id())
    path = "/api/notifications/preferences"
    flags = await http.put(
        path, json={"newCourseContent": False, "emailNotifications": False}, headers=headers
    )
    document = flags.json()
    assert document["types"]["COURSE_NEW_CONTENT"] == {"in_app": False, "email": False, "push": False}
    assert document["channels"]["email"] is False
    herald = await http.put(path, json={"types": {"NEW_REPLY": {"push": False}}}, headers=headers)
    assert herald.json()["types"]["NEW_REPLY"]["push"] is False
    assert (await http.get(path, headers=headers)).json() == herald.json()
    reset = await http.post(f"{path}/reset", headers=headers)
    assert reset.json()["types"]["COURSE_NEW_CONTENT"]["in_app"] is True


async def test_a_query_member_a_route_does_not_take_is_400_naming_it(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """On every route, not only those whose params come from the query (§11); nothing is changed."""
    user = fresh_id()
    ids = [f"{user}-{seq}" for seq in await seed(db, user, 2)]
    refused = [
        await http.get(f"{INBOX}/unread-count", params={"bogus": "1"}, headers=auth(user)),
        await http.post(f"{INBOX}/read", params={"ids": ids[0]}, json={"ids": ids[1:]}, headers=auth(user)),
        await http.patch(f"{INBOX}/{ids[0]}/read", params={"bogus": "1"}, headers=auth(user)),
        await http.post(f"{INBOX}/mark-all-read", params={"all": "true"}, headers=auth(user)),
        await http.post(
            "/api/notifications/push/unsubscribe",
            params={"endpoint": "x"},
            json={"endpoint": "https://push.example/gone"},
            headers=auth(user),
        ),
    ]
    for response, member in zip(refused, ["bogus", "ids", "bogus", "all", "endpoint"], strict=True):
        error = error_of(response, 400)
        assert (error["code"], error["data"]) == (-32602, member), error
        assert error["message"] == f"invalid params: {member}: unknown query parameter"
    assert (await unread_truth(db, user)) == (2, 2)
    # The members the query routes document are still taken.
    listed = {"page": 1, "limit": 5, "unreadOnly": "false", "types": "NEW_REPLY", "categories": "social"}
    for path, params, headers in [
        (INBOX, {**listed, "archived": "all"}, auth(user)),
        (f"{INBOX}/sync", {"since": 0, "limit": 5}, auth(user)),
        (DELIVERIES, {"userId": user, "status": "sent", "limit": 5}, auth("ops", admin=True)),
    ]:
        response = await http.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text


async def test_a_405_names_every_method_its_path_allows(http: httpx.AsyncClient) -> None:
    """RFC 9110 §15.5.6: ``Allow`` lists the verbs of every route at the path, in Herald's error shape."""
    for verb, path, allowed in [
        ("DELETE", "/api/notifications/preferences", {"GET", "HEAD", "PUT"}),
        ("GET", "/api/notifications/push/unsubscribe", {"POST"}),
        ("PUT", f"{INBOX}/n-1/read", {"PATCH"}),
    ]:
        response = await http.request(verb, path, headers=auth(fresh_id()))
        assert error_of(response, 405)["code"] == -32601
        assert set(response.headers.get("Allow", "").split(", ")) == allowed, (verb, path, response.headers)


README_API = "http://127.0.0.1:8767/api/notifications"


def readme_curl_block() -> str:
    """The README's ``bash`` block of the "HTTP API" section, as printed."""
    section = (ROOT / "README.md").read_text().split("\n## HTTP API\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after another (curl adds no newline after a body)."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


async def test_the_readme_curl_examples_work_as_written(env: Env, db: asyncpg.Connection) -> None:
    """Every command of the README block runs (``curl -f``: an HTTP error fails), only the address changed."""
    user = fresh_id("readme")
    await seed(db, user, 3)
    script = readme_curl_block()
    assert README_API in script
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script.replace(README_API, f"{env.api.url}/api/notifications"),
        env={**os.environ, "HERALD_TOKEN": mint(user, admin=True)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    page, count, read, all_read, preferences, broadcast = json_documents(out.decode())
    assert (page["total"], page["totalPages"], count["count"]) == (3, 1, 3)
    assert read.items() >= {"updated": 1, "unread_count": 2}.items()
    assert all_read.items() >= {"updated": 2, "unread_count": 0}.items()
    assert preferences["types"]["COURSE_NEW_CONTENT"]["in_app"] is False
    assert preferences["types"]["NEW_REPLY"]["email"] is False
    assert broadcast["accepted"] is True
