"""The deployment files' broker users and credentials agree with the code: each Kubernetes Deployment and
compose service connects as its own broker user with the permissions ``herald broker setup`` grants
(deploy/rabbitmq/users.sh runs exactly those lines), passwords come from required variables and Secrets
the operator creates (the repository ships none), the worker trusts the gateway user and KEDA reads the
queue as the monitor. Parsed as YAML with the helpers of ``test_deploy``; no engine is needed.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from herald_ops.testing.stack import ROOT
from tests.unit.test_deploy import (
    DEPLOY,
    compose,
    containers,
    env_entries,
    herald_services,
    k8s_documents,
    scaled_object,
)


def test_k8s_ships_no_secret() -> None:
    """The operator creates ``herald-jwt`` and ``herald-delivery`` (docs/operations.md): a value in the
    repository is a key every copy of it knows, and ``kubectl apply -k`` would write a shipped example
    value back over the real one every time. The Deployments still require them."""
    assert [
        doc["metadata"]["name"] for doc in k8s_documents(with_patches=True) if doc["kind"] == "Secret"
    ] == []
    required = {
        ref["secretRef"]["name"]
        for doc in k8s_documents(with_patches=True)
        for container in containers(doc)
        for ref in container.get("envFrom", [])
        if "secretRef" in ref and not ref["secretRef"].get("optional")
    }
    assert {"herald-delivery"} <= required
    assert "herald-delivery" in (ROOT / "docs" / "operations.md").read_text()


def test_k8s_broker_permissions_are_the_ones_herald_broker_setup_grants() -> None:
    from herald_ops.broker import ROLES, permissions

    expected = permissions("herald")
    shipped = {
        doc["metadata"]["name"]: doc["spec"]["permissions"]
        for doc in k8s_documents()
        if doc["kind"] == "Permission"
    }
    assert set(shipped) == {f"herald-{role}" for role in ROLES}
    for role in ROLES:
        grant = expected[role]
        assert shipped[f"herald-{role}"] == {
            "configure": grant.configure,
            "write": grant.write,
            "read": grant.read,
        }
    assert expected["producer"].write == r"^herald\.events$"  # producers write only to herald.events


# Which broker user each Herald Deployment connects as: its own, except herald-api, which calls the
# workers as the gateways do (and the workers serve herald.rpc only from that user).
K8S_BROKER_ROLE = {
    "herald-worker": "worker",
    "herald-gateway": "gateway",
    "herald-delivery": "delivery",
    "herald-api": "gateway",
}


def secret_key(entry: dict[str, Any]) -> tuple[str, str]:
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_every_deployment_connects_as_its_own_broker_user() -> None:
    """No Deployment falls back to a shared broker user (the cluster's default user is an administrator)."""
    users = {doc["metadata"]["name"] for doc in k8s_documents() if doc["kind"] == "User"}
    deployments = {
        doc["metadata"]["name"]: doc
        for doc in k8s_documents(with_patches=True)
        if doc["kind"] == "Deployment"
    }
    assert set(K8S_BROKER_ROLE) <= set(deployments)
    for name, role in K8S_BROKER_ROLE.items():
        (container,) = containers(deployments[name])
        env = env_entries(container)
        credentials = f"herald-{role}-user-credentials"
        assert f"herald-{role}" in users, f"{name}: no broker User herald-{role}"
        assert secret_key(env["AMQP_USERNAME"]) == (credentials, "username"), name
        assert secret_key(env["AMQP_PASSWORD"]) == (credentials, "password"), name
        url = env["HERALD_AMQP_URL"]["value"]
        assert url.startswith("amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@"), name
        # Kubernetes expands $(VAR) only from variables defined earlier in the list.
        names = list(env)
        assert names.index("AMQP_USERNAME") < names.index("HERALD_AMQP_URL"), name
        assert names.index("AMQP_PASSWORD") < names.index("HERALD_AMQP_URL"), name
    manifests = "".join(path.read_text() for path in (DEPLOY / "k8s").glob("**/*.yaml"))
    assert "default-user" not in manifests, "a manifest still uses the cluster's default (administrator) user"


def test_the_worker_trusts_the_gateway_user_and_keda_reads_as_the_monitor() -> None:
    (worker,) = [
        doc
        for doc in k8s_documents()
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "herald-worker"
    ]
    (container,) = containers(worker)
    trusted = env_entries(container)["HERALD_RPC_TRUSTED_USERS"]
    assert secret_key(trusted) == ("herald-gateway-user-credentials", "username")
    # The worker scales on its queue's length, read as the monitor (herald-delivery scales on due jobs
    # in Postgres, with the database's credentials).
    (auth,) = [
        doc
        for doc in k8s_documents()
        if doc["kind"] == "TriggerAuthentication" and doc["metadata"]["name"] == "herald-rabbitmq"
    ]
    assert {(ref["parameter"], ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]} == {
        ("username", "herald-monitor-user-credentials", "username"),
        ("password", "herald-monitor-user-credentials", "password"),
    }
    for trigger in scaled_object("herald-worker")["spec"]["triggers"]:
        assert trigger["type"] == "rabbitmq"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


# Compose: which broker user each service connects as (migrate does not use the broker).
COMPOSE_BROKER_ROLE = {"worker": "worker", "gateway": "gateway", "api": "gateway", "delivery": "delivery"}
# What the one-shot broker-users service creates: every role but the monitor (no autoscaler in compose).
COMPOSE_ROLES = ("gateway", "worker", "delivery", "producer")
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")  # ${NAME:?message}: no default, required


def test_compose_services_connect_as_their_own_broker_users() -> None:
    for name, service in herald_services().items():
        env = service["environment"]
        if name == "migrate":
            assert "HERALD_AMQP_URL" not in env
            continue
        role = COMPOSE_BROKER_ROLE[name.rsplit("-", 1)[0]]
        url = re.fullmatch(
            r"amqp://(?P<user>[^:]+):(?P<password>\$\{[^}]+\})@rabbitmq:5672/", env["HERALD_AMQP_URL"]
        )
        assert url is not None, f"{name}: {env['HERALD_AMQP_URL']}"
        assert url["user"] == f"herald-{role}", name
        password = REQUIRED.fullmatch(url["password"])
        assert password is not None, f"{name}: the broker password must have no default"
        assert password["name"] == f"BROKER_{role.upper()}_PASSWORD", name
        if role == "worker":
            assert env["HERALD_RPC_TRUSTED_USERS"] == "herald-gateway"
    admin = compose()["services"]["rabbitmq"]["environment"]
    assert REQUIRED.fullmatch(admin["RABBITMQ_DEFAULT_PASS"]), (
        "the broker administrator has a default password"
    )


def test_compose_broker_users_have_the_permissions_herald_broker_setup_grants() -> None:
    """deploy/rabbitmq/users.sh runs exactly the permission lines of herald_ops.broker, for every role
    compose uses, each user's password from a required variable that the service passes on."""
    from herald_ops.broker import ROLES, commands

    setup = compose()["services"]["broker-users"]
    script = (DEPLOY / "rabbitmq" / "users.sh").read_text()
    lines = [
        shlex.split(line) for line in script.splitlines() if line.startswith(("rabbitmqctl -q set_", "user "))
    ]
    users = {role: f"herald-{role}" for role in ROLES}
    created = {users[role] for role in COMPOSE_ROLES}
    granted = [
        ["rabbitmqctl", "-q", *line] for line in commands("/", "herald", users, {}) if line[4] in created
    ]
    assert [line for line in lines if line[0] == "rabbitmqctl"] == granted
    passwords = {line[1]: line[2] for line in lines if line[0] == "user"}
    assert passwords == {f"herald-{role}": f"$BROKER_{role.upper()}_PASSWORD" for role in COMPOSE_ROLES}
    for variable in (password.removeprefix("$") for password in passwords.values()):
        passed = REQUIRED.fullmatch(setup["environment"][variable])
        assert passed is not None, variable
        assert passed["name"] == variable
    assert "./rabbitmq/users.sh:/herald/users.sh:ro" in setup["volumes"]
    waits = {
        svc["depends_on"]["broker-users"]["condition"]
        for name, svc in herald_services().items()
        if name != "migrate"
    }
    assert waits == {"service_completed_successfully"}
