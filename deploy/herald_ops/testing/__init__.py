"""The harness shared by the tests and the benchmarks (``tests/``, ``bench/``): isolated stacks and clients.

Modules:
    stack      a vhost + migrated database per run, real Herald processes, tokens, ids, waiting with deadlines
    gateway    raw WebSocket clients of the gateway and a scripted worker (``Responder``)
    requests   seeding notifications in bulk, an AMQP RPC caller, a request-driving WebSocket client
    worker     events for the worker and a watcher of what it publishes
    client     a scripted gateway for the client SDKs
"""
