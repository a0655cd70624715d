"""Herald's WebSocket gateway: JWT clients, per-user exchanges, live relay, request forwarding.

Layout (details in ``docs/gateway.md``): the sans-I/O core — :mod:`gateway.errors`,
:mod:`gateway.protocol`, :mod:`gateway.limits` and :class:`gateway.auth.AuthState` — has no sockets and is
unit-tested alone; :mod:`gateway.auth` verifies tokens; :mod:`gateway.broker` and :mod:`gateway.rpc` talk
AMQP; :mod:`gateway.hub` maps users to connections and relays frames; :mod:`gateway.timers` holds the
process-wide expiry queue and keepalive; :mod:`gateway.http` answers plain HTTP and checks handshakes;
:mod:`gateway.session` runs one WebSocket connection; :mod:`gateway.app` wires them together and
:mod:`gateway.__main__` is ``herald-gateway``.
"""
