"""How every Herald process runs: its garbage collector set for a server, then its event loop.

CPython's cyclic garbage collector is tuned for short scripts. Its first generation is collected after
700 net allocations of container objects, and a full collection, which visits every tracked object in
the process, follows every hundred of those, as soon as the objects that survived since the last one
are a quarter of the rest. A server that accepts thousands of connections at once keeps almost all it
allocates alive for the time being, so it runs full collections one after another over a heap that
keeps growing. Measured in a 5,000-client connect storm (docs/performance.md), the gateway spent
22 % of its CPU collecting (2,106 young and 17 full collections in two rounds).

:func:`tune_garbage_collector` keeps the collector on (a closed connection's objects refer to each
other, and only the collector frees them), but:

- it moves everything start-up made (imported modules, classes, settings, schemas) into the permanent
  generation with :func:`gc.freeze`, so no collection visits it again;
- it raises the first threshold to :data:`YOUNG_THRESHOLD`, so the short-lived objects of a request or
  a handshake are mostly gone before any collection sees them, and a full collection can come only
  every million allocations instead of every 70,000.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Final

import uvloop

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

#: Net allocations of container objects between two collections of the youngest generation. At
#: 10,000 instead of 700, the storm above ran 136 young collections and 1 full one, and the gateway's
#: CPU per storm fell by a fifth to a quarter; garbage waiting for the next collection stays below a few MB.
YOUNG_THRESHOLD: Final = 10_000


def tune_garbage_collector() -> None:
    """Collect once, freeze what start-up made, and raise the young generation's threshold.

    Call it once start-up is done (imports made, settings loaded), just before serving; the older
    generations' thresholds stay CPython's.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Tune the garbage collector, then run ``main`` to completion on uvloop."""
    tune_garbage_collector()
    uvloop.run(main)
