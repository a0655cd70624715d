"""The client request methods of docs/protocol.md §5, one module per area.

:mod:`worker.requests.registry` maps method names to :class:`worker.requests.common.Method` entries, which
each area module lists in its ``METHODS``; :mod:`worker.rpc` is the transport. Adding an area is a new
module with a ``METHODS`` table plus one line in the registry.
"""
