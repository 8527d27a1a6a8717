"""Render a kustomization (deploy/kubernetes) the way ``kubectl kustomize`` does, for the fields
stepq's manifests use: ``resources`` (files, and folders holding a kustomization of their own),
``namespace`` and ``images``. Any other field is refused, so that a manifest using one cannot pass
the tests unrendered: teach this module the field (and check it against ``kubectl kustomize``,
which tests/test_kubernetes_manifests.py does when kubectl is installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED = frozenset({"apiVersion", "kind", "resources", "namespace", "images"})
#: Kinds without a namespace, among those the manifests use (kustomize leaves them as they are).
CLUSTER_SCOPED = frozenset({"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"})
#: Where a workload keeps its pod template.
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})

Manifest = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render, naming the file and what is wrong."""


def load_documents(path: Path) -> list[Manifest]:
    """The YAML documents of a file (empty ones skipped); each must be a mapping with a kind."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: every document must be a mapping with apiVersion and kind")
    return documents


def render(directory: Path) -> list[Manifest]:
    """The manifests ``kubectl kustomize directory`` outputs (in the order of their resources)."""
    path = directory / KUSTOMIZATION
    if not path.is_file():
        raise KustomizeError(f"{directory}: no {KUSTOMIZATION}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            manifests.extend(render(target))
        elif target.is_file():
            manifests.extend(load_documents(target))
        else:
            raise KustomizeError(f"{path}: resource {entry!r} does not exist")
    seen: set[tuple[str, str]] = set()
    for manifest in manifests:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{path}: {key[0]} {key[1]!r} is defined twice")
        seen.add(key)
    if "namespace" in spec:
        for manifest in manifests:
            if manifest["kind"] not in CLUSTER_SCOPED:
                manifest["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        _set_image(manifests, image)
    return manifests


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    """The pod spec of a workload, None for other kinds."""
    if manifest["kind"] not in POD_TEMPLATE_KINDS:
        return None
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    """A workload's containers and init containers (none for other kinds)."""
    spec = pod_spec(manifest)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec["containers"]]


def _set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    """kustomize's ``images`` entry: containers whose image is ``name`` (with any tag) get the new
    name, tag or digest."""
    for manifest in manifests:
        for container in containers(manifest):
            name, tag = _split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                tag = image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def _split_image(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference; a port in the registry's host is not a tag."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, ""
    return name, tag
