"""The sender interface: what a channel's runner needs from the code that actually delivers.

A sender owns its connections (one pooled SMTP connection, one pooled HTTP client, ...) and turns one
claimed job into an :class:`~worker.delivery.jobs.Outcome`: sent, skipped (nothing to deliver to),
transient (retry later) or permanent (fail now). Before its requests to the remote service it takes a
slot of the channel's rate cap for each (``pace``): the caps are requests per second, and a push job makes
one request per device. It never raises for a failed delivery, and never touches the job's state row: the
runner records the outcome. A mobile sender (FCM, APNs) is one more module implementing this, registered
in ``worker.delivery.app``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from worker.delivery.jobs import Outcome
    from worker.store.deliveries import Claimed

#: ``await pace(n)`` returns once ``n`` slots of the channel's rate cap are taken: a sender awaits it for
#: the requests it is about to make, once it knows how many (the devices a push job goes to).
Pace: TypeAlias = Callable[[int], Awaitable[None]]


class Sender(Protocol):
    """Delivers the jobs of one channel."""

    #: The job channel this sender serves (the ``herald.deliveries`` routing key).
    channel: str

    async def send(self, job: Claimed, pace: Pace) -> Outcome:
        """Attempt to deliver ``job`` once, ``pace`` before its requests; classify what happened."""
        ...

    async def close(self) -> None:
        """Release connections (the process is stopping)."""
        ...
