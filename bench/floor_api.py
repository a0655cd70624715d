"""The HTTP floor for bench/http_api.py: a bare Starlette + asyncpg + PyJWT endpoint, no Herald in between.

It answers ``GET /api/notifications/realtime?page=&limit=`` the way the simplest possible service would:
verify the bearer token with PyJWT, run the very statement the worker runs for a page
(``worker.store.inbox.list_query``) on its own asyncpg pool, and write the seed's page shape with orjson.
No broker hop, no validation beyond the token, no rate limit: what ``herald-api`` is measured against.
Served by the same uvicorn configuration (uvloop, httptools, one process).

    FLOOR_DATABASE_URL=... FLOOR_JWT_SECRET=... FLOOR_PORT=... python -m bench.floor_api
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import TYPE_CHECKING

import asyncpg
import jwt
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from worker.requests.notifications import ListParams
from worker.store.inbox import list_page

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

SECRET = os.environ.get("FLOOR_JWT_SECRET", "")
pool: asyncpg.Pool | None = None


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["FLOOR_DATABASE_URL"], min_size=2, max_size=10)
    try:
        yield
    finally:
        await pool.close()


async def page(request: Request) -> Response:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.PyJWTError:
        return Response(b'{"error": "unauthorized"}', 401, media_type="application/json")
    params = ListParams(
        limit=int(request.query_params.get("limit", 20)), page=int(request.query_params.get("page", 1))
    )
    assert pool is not None
    result = await list_page(pool, params, claims["sub"])
    items = result.items[: params.limit]
    body = {
        "data": items,
        "total": result.total,
        "page": params.page,
        "limit": params.limit,
        "totalPages": math.ceil(result.total / params.limit),
        "next_cursor": items[-1]["seq"] if len(result.items) > params.limit else None,
        "unread_count": result.unread_count,
    }
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"ready\n")


app = Starlette(
    routes=[Route("/api/notifications/realtime", page), Route("/readyz", ready)], lifespan=lifespan
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["FLOOR_PORT"]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
