"""Herald's wire vocabulary: the JSON-RPC error shape, its codes, the close codes, and the event limits.

Dependency-free, so every side can speak it: the client and producer here, and the server's contract
package (``shared/jsonrpc.py`` and ``shared/events.py`` import these definitions rather than repeat them).
The method names the client calls are listed in :data:`CLIENT_METHODS`; a unit test holds them against the
methods the worker and the gateway actually serve (``tests/unit/test_contract.py``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final


class ErrorCode(IntEnum):
    """Every JSON-RPC error code a client can receive."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    FORBIDDEN = 4003
    UNAUTHORIZED = 4401  # a first-frame ``auth`` that failed (the close 4401 follows); HTTP API: 401
    RATE_LIMITED = 4029
    UNAVAILABLE = 5003


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses."""

    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013
    TOO_MANY_CONNECTIONS = 4008
    UNAUTHORIZED = 4401


class JsonRpcError(Exception):
    """A JSON-RPC error ``{code, message, data?}``: the one error shape of every request path.

    The worker raises it to refuse a request, the gateway raises it for frames it refuses itself, and the
    client raises it (as ``HeraldRequestError``) when the server answered with an error.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data

    def to_object(self) -> dict[str, Any]:
        """The JSON-RPC error object; ``data`` is omitted when ``None``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


# Producer event limits (PROTOCOL §4).
MAX_BODY_BYTES: Final = 64 * 1024
MAX_DATA_BYTES: Final = 8 * 1024
MAX_TITLE_CHARS: Final = 200
MAX_MESSAGE_CHARS: Final = 2000
MAX_RECIPIENTS: Final = 1000
# In UTF-8 bytes: the AMQP ``message_id`` (a short string, at most 255 bytes) is the key when the body
# names none, and a broadcast's key becomes its ``message_id``, so either way it fits (amendment 48).
MAX_EVENT_ID_BYTES: Final = 255
# A producer's name (`source`): its event ids are unique within it, not across producers. At most 64 ASCII
# characters, so it is also a valid BLAKE2b key (the worker derives notification ids with it).
SOURCE_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
USER_ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]{1,128}$"
TYPE_PATTERN: Final = r"^[A-Z][A-Z0-9_]{0,63}$"
CHANNELS: Final = ("in_app", "email", "push")
# Inbox states (PROTOCOL §10): actions, click targets, collapse keys.
MAX_ACTIONS: Final = 3
MAX_ACTION_LABEL_CHARS: Final = 40
ACTION_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
MAX_URL_CHARS: Final = 2000
MAX_COLLAPSE_KEY_CHARS: Final = 128

# Where producers publish (PROTOCOL §3): the events exchange of a topology prefix, and its routing keys.
SEND_ROUTING_KEY: Final = "notification.send"
BROADCAST_ROUTING_KEY: Final = "notification.broadcast"
#: Contact-data events (PROTOCOL §9); the worker's events queue is bound to this key too.
PROFILE_ROUTING_KEY: Final = "user.profile"


def events_exchange(prefix: str = "herald") -> str:
    """The durable topic exchange producers publish to, for ``HERALD_AMQP_PREFIX`` = ``prefix``."""
    return f"{prefix}.events"


#: Request methods the Python client calls; each must be served by the gateway or the worker.
CLIENT_METHODS: Final = frozenset(
    {
        "auth",
        "auth.refresh",
        "ping",
        "notifications.list",
        "notifications.sync",
        "notifications.unread_count",
        "notifications.mark_read",
        "notifications.mark_unread",
        "notifications.mark_all_read",
        "notifications.delete",
        "notifications.mark_seen",
        "notifications.archive",
        "notifications.unarchive",
        "notifications.act",
        "notifications.broadcast",
        "preferences.get",
        "preferences.update",
        "preferences.reset",
        "profile.get",
        "push.vapid_key",
        "push.subscribe",
        "push.unsubscribe",
        "push.list",
        "deliveries.list",
    }
)
