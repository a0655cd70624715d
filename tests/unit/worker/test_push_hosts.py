"""``HERALD_PUSH_HOSTS``: the hosts push endpoints may name, so that herald-delivery posts to push services,
not to what its network reaches (no I/O)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from herald_ops.testing.delivery import BrowserKeys
from shared.jsonrpc import JsonRpcError
from shared.settings import DEFAULT_PUSH_HOSTS, Settings
from worker.push_endpoint import check_host, parse_endpoint
from worker.requests.common import Caller
from worker.requests.push import SubscribeParams, subscribe
from worker.vapid import new_key_pair

#: What the review posted to from inside the network: a Kubernetes API, cloud metadata, Postgres, the
#: RabbitMQ management API, the worker's metrics.
INTERNAL = [
    "https://127.0.0.1:6443/api/v1/namespaces",
    "https://169.254.169.254/latest/api/token",
    "https://[::1]:5432/",
    "https://10.0.0.5:15672/api/definitions",
    "https://localhost:8766/metrics",
]
#: Loopback and private hosts in the other forms the resolver reads, and names that only resolve inside.
INTERNAL_IN_DISGUISE = [
    "https://2130706433/",  # 127.0.0.1 to getaddrinfo
    "https://0x7f.1/",
    "https://127.1/",
    "https://LOCALHOST./",
    "https://app.localhost/",
    "https://[::ffff:10.0.0.1]/",  # IPv4-mapped
    "https://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "https://[fe80::1%25eth0]/",
    "https://[fd00::1]/",
    "https://100.64.0.1/",  # shared address space (carrier NAT)
    "https://0.0.0.0/",
    "https://rabbitmq:15672/api/definitions",  # a compose or Kubernetes service name
]
BROWSERS = [
    "https://fcm.googleapis.com/fcm/send/dJx:APA91b",  # Chrome and other Chromium browsers
    "https://fcm.googleapis.com/wp/dJx:APA91b",
    "https://updates.push.services.mozilla.com/wpush/v2/gAAAAAB",  # Firefox
    "https://web.push.apple.com/QGuQyavXutnMH",  # Safari
    "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAD",  # Edge
    "https://FCM.googleapis.com./fcm/send/x",
]


def refusal(endpoint: str, hosts: tuple[str, ...], *, allow_local: bool = False) -> str | None:
    try:
        check_host(parse_endpoint(endpoint), hosts, allow_local=allow_local)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("endpoint", BROWSERS)
def test_the_browsers_push_services_are_allowed_by_default(endpoint: str) -> None:
    assert Settings().push_hosts == DEFAULT_PUSH_HOSTS
    assert refusal(endpoint, DEFAULT_PUSH_HOSTS) is None


@pytest.mark.parametrize("endpoint", [*INTERNAL, *INTERNAL_IN_DISGUISE, "https://push.example/x"])
def test_other_hosts_are_refused_by_the_default_list(endpoint: str) -> None:
    reason = refusal(endpoint, DEFAULT_PUSH_HOSTS)
    assert reason is not None
    assert reason.endswith("is not one of the push services in HERALD_PUSH_HOSTS")


@pytest.mark.parametrize(
    "endpoint",
    ["https://push.apple.com/x", "https://evilpush.apple.com/x", "https://fcm.googleapis.com.evil.example/x"],
)
def test_a_dotted_entry_matches_subdomains_only(endpoint: str) -> None:
    assert refusal(endpoint, DEFAULT_PUSH_HOSTS) is not None


@pytest.mark.parametrize("endpoint", [*INTERNAL, *INTERNAL_IN_DISGUISE])
def test_any_host_still_excludes_hosts_that_are_not_public_unless_allow_http(endpoint: str) -> None:
    reason = refusal(endpoint, ("*",))
    assert reason is not None
    assert "not public: HERALD_PUSH_HOSTS=* allows public hosts only" in reason
    assert "HERALD_PUSH_ALLOW_HTTP" in reason
    assert refusal(endpoint, ("*",), allow_local=True) is None  # development, tests


@pytest.mark.parametrize(
    "endpoint", ["https://push.example/x", "https://8.8.8.8/", "https://[2001:4860::8888]/"]
)
def test_any_host_allows_public_ones(endpoint: str) -> None:
    assert refusal(endpoint, ("*",)) is None


def test_a_listed_host_is_allowed_as_listed() -> None:
    hosts = Settings(push_hosts="127.0.0.1, Push.Internal.").push_hosts
    assert hosts == ("127.0.0.1", "push.internal")
    assert refusal("http://127.0.0.1:8080/push/a", hosts) is None
    assert refusal("https://2130706433/push/a", hosts) is None  # the same address
    assert refusal("https://push.internal/a", hosts) is None
    assert refusal("https://127.0.0.2/push/a", hosts) is not None


@pytest.mark.parametrize(
    "value", ["https://fcm.googleapis.com", "fcm.googleapis.com:443", "a/b", ".10.0.0.1", ","]
)
def test_push_hosts_are_host_names(value: str) -> None:
    with pytest.raises(ValidationError, match="push_hosts"):
        Settings(push_hosts=value)


def test_an_empty_push_hosts_is_the_default() -> None:
    assert Settings(push_hosts="").push_hosts == DEFAULT_PUSH_HOSTS  # compose's `${VAR:-}`


@pytest.mark.parametrize(
    ("push_hosts", "endpoint", "reason"),
    [
        ("", INTERNAL[0], "host 127.0.0.1 is not one of the push services in HERALD_PUSH_HOSTS"),
        ("*", INTERNAL[1], "host 169.254.169.254 is loopback, private or otherwise not public"),
    ],
)
async def test_push_subscribe_refuses_a_host_naming_endpoint(
    push_hosts: str, endpoint: str, reason: str
) -> None:
    settings = Settings(vapid_private_key=new_key_pair()[0], push_hosts=push_hosts)
    runtime: Any = SimpleNamespace(settings=settings, pool=None)  # refused before any query
    params = SubscribeParams.model_validate(BrowserKeys().subscription(endpoint))
    with pytest.raises(JsonRpcError) as refused:
        await subscribe(runtime, Caller("u1", False), params)
    assert (refused.value.code, refused.value.data) == (-32602, "endpoint")
    assert refused.value.message.startswith(f"invalid params: endpoint: {reason}")
