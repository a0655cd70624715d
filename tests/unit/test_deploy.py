"""The deployment files agree with the code: settings names, commands, ports and probes, termination and
scaling, database connections, metric and queue names, the Dockerfile.

No engine is needed: compose and Kubernetes files are parsed as YAML (``.ci/deploy-checks`` runs the real
validators). A rename in ``shared/settings.py``, ``pyproject.toml`` or the metrics modules that the
deployment files do not follow fails here instead of in production. The broker users, their credentials
and the Secrets are checked in ``test_deploy_credentials``, with the helpers here.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from gateway.api.__main__ import GRACEFUL_SHUTDOWN_SECONDS
from gateway.app import CLOSE_TIMEOUT
from herald_ops.testing.image import copy_sources, dockerfile_stages, dockerignore_admits
from herald_ops.testing.stack import ROOT
from shared.settings import ENV_PREFIX
from shared.topology import Topology
from worker.delivery.settings import DeliverySettings

if TYPE_CHECKING:
    from collections.abc import Iterator

DEPLOY = ROOT / "deploy"
# Every process's settings: the shared ones and herald-delivery's own (a superset).
SETTINGS_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in DeliverySettings.model_fields}
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def k8s_documents(with_patches: bool = False) -> list[dict[str, Any]]:
    """The resources under deploy/k8s (and, when asked, the patches kustomize applies to them)."""
    pattern = "**/*.yaml" if with_patches else "*.yaml"
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob(pattern))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and "kind" in doc
    ]


def herald_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the Herald image."""
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == "herald:latest"}


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    yield from pod.get("containers", [])
    yield from pod.get("initContainers", [])


def k8s_env_names() -> set[str]:
    """Every variable the manifests set: env entries, ConfigMap data and Secret keys."""
    names: set[str] = set()
    for doc in k8s_documents(with_patches=True):
        if doc["kind"] == "ConfigMap":
            names.update(doc.get("data", {}))
        elif doc["kind"] == "Secret":
            names.update(doc.get("stringData", {}))
            names.update(doc.get("data", {}))
        for container in containers(doc):
            names.update(entry["name"] for entry in container.get("env", []))
    return names


def env_entries(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_compose_sets_only_known_settings() -> None:
    services = herald_services()
    assert {
        "migrate",
        "worker-1",
        "worker-2",
        "gateway-1",
        "gateway-2",
        "api-1",
        "api-2",
        "delivery-1",
    } <= set(services)
    for name, service in services.items():
        herald_vars = {key for key in service["environment"] if key.startswith(ENV_PREFIX)}
        assert herald_vars, f"{name} sets no HERALD_ variable"
        unknown = herald_vars - SETTINGS_ENV
        assert not unknown, f"compose service {name} sets variables Settings does not have: {unknown}"


def test_k8s_sets_only_known_settings() -> None:
    names = {name for name in k8s_env_names() if name.startswith(ENV_PREFIX)}
    assert {"HERALD_AMQP_URL", "HERALD_DATABASE_URL", "HERALD_JWT_SECRET"} <= names
    unknown = names - SETTINGS_ENV
    assert not unknown, f"deploy/k8s sets variables Settings does not have: {unknown}"


def test_every_set_value_is_accepted_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The literal values of the ConfigMap parse: a typo such as ``HERALD_PREFETCH: lots`` fails here."""
    config = next(doc for doc in k8s_documents() if doc["kind"] == "ConfigMap")
    for key, value in config["data"].items():
        monkeypatch.setenv(key, str(value))
    settings = DeliverySettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.gateway_host == "0.0.0.0"
    assert settings.worker_http_host == "0.0.0.0"
    assert settings.api_host == "0.0.0.0"


def test_commands_are_console_scripts() -> None:
    commands = {name: svc["command"][0] for name, svc in herald_services().items()}
    assert commands["migrate"] == "herald"
    assert herald_services()["migrate"]["command"][1] == "migrate"
    assert set(commands.values()) <= SCRIPTS
    k8s_commands = {
        container["args"][0]
        for doc in k8s_documents()
        for container in containers(doc)
        if container.get("image") == "herald"
    }
    assert k8s_commands == {"herald", "herald-worker", "herald-gateway", "herald-api", "herald-delivery"}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    default = re.search(r'^CMD \["([^"]+)"', dockerfile, re.MULTILINE)
    assert default is not None
    assert default.group(1) in SCRIPTS


def test_ports_and_probes_match_the_settings() -> None:
    config = next(doc for doc in k8s_documents() if doc["kind"] == "ConfigMap")["data"]
    for doc in k8s_documents():
        if doc["kind"] != "Deployment":
            continue
        (container,) = containers(doc)
        port = container["ports"][0]["containerPort"]
        role = container["args"][0]
        port_setting = {
            "herald-gateway": "HERALD_GATEWAY_PORT",
            "herald-api": "HERALD_API_PORT",
            "herald-delivery": "HERALD_DELIVERY_HTTP_PORT",
        }
        expected = config[port_setting.get(role, "HERALD_WORKER_HTTP_PORT")]
        assert port == int(expected), doc["metadata"]["name"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def deployment_pod(name: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The Deployment ``name``, its pod spec, and the seconds its container's preStop sleeps."""
    deployment = next(
        doc for doc in k8s_documents() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    return deployment, pod, float(re.findall(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop)[0])


def test_gateway_termination_outlasts_its_drain() -> None:
    """Kubernetes must not SIGKILL a gateway before it closed its clients with 1001."""
    gateway, pod, pre_stop_seconds = deployment_pod("herald-gateway")
    # On SIGTERM the gateway closes every client with 1001, each close waiting at most CLOSE_TIMEOUT.
    assert pod["terminationGracePeriodSeconds"] > pre_stop_seconds + CLOSE_TIMEOUT + 10
    assert_autoscaled_and_budgeted(gateway)


def assert_autoscaled_and_budgeted(deployment: dict[str, Any]) -> None:
    """The deployment's autoscaler owns its replica count, and a disruption budget covers its pods."""
    name = deployment["metadata"]["name"]
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in k8s_documents() if "metadata" in doc}
    hpa = by_kind["HorizontalPodAutoscaler", name]
    assert hpa["spec"]["scaleTargetRef"]["name"] == name
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    pdb = by_kind["PodDisruptionBudget", name]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_api_termination_outlasts_its_graceful_shutdown() -> None:
    """Kubernetes must not SIGKILL an api before uvicorn finished the requests in flight."""
    api, pod, pre_stop_seconds = deployment_pod("herald-api")
    assert pod["terminationGracePeriodSeconds"] > pre_stop_seconds + GRACEFUL_SHUTDOWN_SECONDS
    assert_autoscaled_and_budgeted(api)


def scaled_object(target: str) -> dict[str, Any]:
    return next(
        doc
        for doc in k8s_documents()
        if doc["kind"] == "ScaledObject" and doc["spec"]["scaleTargetRef"]["name"] == target
    )


def test_keda_scales_delivery_on_the_due_jobs_of_each_channel() -> None:
    # The worker records its jobs in Postgres: a queue length would say nothing about the backlog.
    triggers = scaled_object("herald-delivery")["spec"]["triggers"]
    assert all(t["type"] == "postgresql" for t in triggers)
    queries = [" ".join(t["metadata"]["query"].split()) for t in triggers]
    for channel in ("email", "push"):
        (query,) = [q for q in queries if f"channel = '{channel}'" in q]
        assert query.startswith("SELECT count(*) FROM delivery_jobs WHERE")
        assert "status = 'scheduled' AND due_at <= now()" in query


def test_keda_scales_the_worker_on_the_events_queue() -> None:
    scaled = scaled_object("herald-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == Topology().events_queue
    assert trigger["metadata"]["mode"] == "QueueLength"
    engines = {doc["kind"]: doc.get("spec", {}) for doc in k8s_documents()}
    assert engines["RabbitmqCluster"]["replicas"] == 3
    assert engines["Cluster"]["instances"] == 3


def _exported_series() -> set[str]:
    """Every series name the worker and the gateway can expose (counters with ``_total`` etc.)."""
    from prometheus_client import REGISTRY

    import worker.delivery.metrics  # registers herald-delivery's metrics too
    import worker.metrics  # noqa: F401  (registers the worker's metrics in the default registry)
    from gateway.metrics import Metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for registry in (REGISTRY, Metrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return {name for name in names if name.startswith("herald_")}


@pytest.mark.parametrize("path", ["prometheus/alerts.yaml", "grafana/herald.json"])
def test_alerts_and_dashboard_use_exported_metrics(path: str) -> None:
    exported = _exported_series()
    used = set(re.findall(r"\bherald_[a-z_]+[a-z]", (DEPLOY / path).read_text()))
    assert used, f"{path} uses no Herald metric"
    missing = used - exported
    assert not missing, f"{path} uses series that neither process exports: {sorted(missing)}"


@pytest.mark.parametrize("path", ["prometheus/alerts.yaml", "grafana/herald.json"])
def test_alerts_and_dashboard_name_real_queues(path: str) -> None:
    queues = set(re.findall(r'queue=\\?"([^"\\]+)\\?"', (DEPLOY / path).read_text()))
    assert queues == {Topology().events_queue, Topology().dead_letter_queue}


def installed_package_dirs() -> set[str]:
    """The directory of every top-level package that pyproject's ``packages.find`` installs (a directory
    with an ``__init__.py`` under one of its ``where`` roots whose name an ``include`` pattern matches)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return {
        str(PurePosixPath(where) / init.parent.name)
        for where in find["where"]
        for init in (ROOT / where).glob("*/__init__.py")
        if any(fnmatch.fnmatchcase(init.parent.name, pattern) for pattern in find["include"])
    }


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    """Every ``COPY`` source of the build stages exists and the .dockerignore lets it in, and the builder
    stage copies every package the distribution installs (a missing one fails every process at import)."""
    stages = dockerfile_stages()
    builder = copy_sources(stages["builder"])
    packages = installed_package_dirs()
    assert {"shared", "worker", "gateway", "deploy/herald_ops", "clients/python/herald_client"} <= packages
    missing = {
        package
        for package in packages
        if not any(package == source or package.startswith(f"{source}/") for source in builder)
    }
    assert not missing, f"the builder copies no source of these installed packages: {sorted(missing)}"
    for package in packages:
        assert dockerignore_admits(f"{package}/__init__.py"), f"{package}: excluded by .dockerignore"
    # The test harness stays out of the image; nothing the processes run imports it.
    assert not dockerignore_admits("deploy/herald_ops/testing/stack.py")
    sources = [source for instructions in stages.values() for source in copy_sources(instructions)]
    assert {"pyproject.toml", "README.md", "sql", "clients/js"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing"
        assert dockerignore_admits(source), f"COPY {source}: excluded by .dockerignore"


def test_k8s_database_connections_fit_at_the_largest_scale() -> None:
    """Every replica at its maximum, each with its pool full (herald-delivery also keeps one ``LISTEN``
    connection), leaves Postgres room for migrations, KEDA's queries and a human."""
    config = next(doc for doc in k8s_documents() if doc["kind"] == "ConfigMap")["data"]
    (cluster,) = [doc for doc in k8s_documents() if doc["kind"] == "Cluster"]
    max_connections = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])

    def pool_max(deployment: str) -> int:
        (doc,) = [
            d for d in k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment
        ]
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        override = env_entries(container).get("HERALD_DB_POOL_MAX", {}).get("value")
        return int(override or config["HERALD_DB_POOL_MAX"])

    worker = scaled_object("herald-worker")["spec"]["maxReplicaCount"] * pool_max("herald-worker")
    delivery = scaled_object("herald-delivery")["spec"]["maxReplicaCount"] * (pool_max("herald-delivery") + 1)
    assert worker + delivery + 30 <= max_connections, (worker, delivery, max_connections)


def test_image_listens_beyond_loopback_for_every_process() -> None:
    """Every ``*_host`` setting (the gateway, the API, the health ports) defaults to 127.0.0.1; in the image
    each is 0.0.0.0, or that process's port is unreachable from outside its container."""
    (env,) = [line for line in dockerfile_stages()["runtime"] if line.startswith("ENV ")]
    image_env = dict(pair.partition("=")[::2] for pair in env.removeprefix("ENV ").split())
    hosts = {name for name in SETTINGS_ENV if name.endswith("_HOST")}
    assert hosts, "no *_HOST setting found"
    assert {name: image_env.get(name) for name in hosts} == dict.fromkeys(hosts, "0.0.0.0")


def test_compose_publishes_ports_on_this_machine_only() -> None:
    """A published port reachable from other machines would make the opt-in ``/dev/token`` of a trial an
    open door: its loopback ``Host`` check stops browsers, not a client that sends ``Host: localhost``."""
    published = [port for service in compose()["services"].values() for port in service.get("ports", [])]
    assert published
    assert all(str(port).startswith("127.0.0.1:") for port in published), published


def test_prometheus_scrapes_every_herald_service_of_compose_on_its_health_port() -> None:
    """Each compose service running the Herald image is a target of deploy/prometheus/prometheus.yml, at
    the port its healthcheck reads (the one that serves /metrics too)."""
    scraped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {target for job in scraped for config in job["static_configs"] for target in config["targets"]}
    long_running = {
        name: svc for name, svc in herald_services().items() if "healthcheck" in svc
    }  # not migrate
    assert {"worker-1", "gateway-1", "api-1", "delivery-1"} <= set(long_running)
    for name, service in long_running.items():
        (port,) = re.findall(r"127\.0\.0\.1:(\d+)/readyz", " ".join(service["healthcheck"]["test"]))
        assert f"{name}:{port}" in targets, f"{name} is not scraped on :{port}"
