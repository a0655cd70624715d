"""``herald-api``: the HTTP edge beside the WebSocket one (docs/protocol.md §11).

It shares the gateway's token verification (:mod:`gateway.auth`), rate limiting (:mod:`gateway.limits`)
and request path to the worker (:mod:`gateway.rpc`), and owns only the HTTP translation:
:mod:`gateway.api.routes` (the route table, also read by the OpenAPI generator),
:mod:`gateway.api.translate` (sans-I/O params, replies, errors, ETags), :mod:`gateway.api.app` (the
Starlette application) and :mod:`gateway.api.__main__` (``herald-api``, on uvicorn).
"""
