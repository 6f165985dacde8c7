"""Rendering the Helm chart offline (helm-python-sdk: Helm's Go library, no helm binary,
no cluster) for the tests of tests/deploy."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "sap"
NAMESPACE = "ai"


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` would render it."""
    chart = helm.Chart.load(CHART)
    return chart.render(
        copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
    )


def objects(rendered: dict[str, str]) -> list[dict]:
    found = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                found.append(document)
    return found


@functools.cache
def _rendered_ci(name: str) -> tuple:
    return tuple(objects(render(load_values(CHART / "ci" / name))))


def ci_objects(path: Path) -> list[dict]:
    return copy.deepcopy(list(_rendered_ci(path.name)))


def by_kind(items: list[dict], kind: str) -> list[dict]:
    return [item for item in items if item["kind"] == kind]


def named(items: list[dict], kind: str, suffix: str) -> dict:
    [item] = [i for i in by_kind(items, kind) if i["metadata"]["name"].endswith(suffix)]
    return item


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "Pod":
        return workload["spec"]
    return workload["spec"]["template"]["spec"]


WORKLOAD_KINDS = ("Deployment", "DaemonSet", "Job", "Pod")


def workloads(items: list[dict]) -> list[dict]:
    return [item for item in items if item["kind"] in WORKLOAD_KINDS]


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}
