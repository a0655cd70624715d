"""Herald's WebSocket gateway: JWT clients, per-user exchanges, live relay, request forwarding.

Layout: the sans-I/O core (:mod:`gateway.errors`, :mod:`gateway.protocol`, :mod:`gateway.limits`,
:mod:`gateway.auth`'s state machine) has no sockets and is unit-tested alone; :mod:`gateway.broker` and
:mod:`gateway.rpc` talk AMQP; :mod:`gateway.hub` maps users to connections and relays frames;
:mod:`gateway.http` answers plain HTTP and checks handshakes; :mod:`gateway.session` runs one WebSocket
connection; :mod:`gateway.app` wires them together and :mod:`gateway.__main__` is ``herald-gateway``.
"""
