"""The Helm chart, rendered offline for every ci/*-values.yaml scenario: it lints, every
object passes the Kubernetes schemas strictly (and the Prometheus Operator's for its
kinds), the values schema refuses what it must, and the objects keep the promises the
docs make (labels, security, probes, hooks, node agents, network policies)."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    CI_FILES,
    REPO,
    by_kind,
    ci_objects,
    env_of,
    load_values,
    named,
    objects,
    pod_spec,
    render,
    workloads,
)

CRDS = Path(__file__).with_name("crds")
MONITORING_KINDS = {
    "ServiceMonitor": "servicemonitor.json",
    "PodMonitor": "podmonitor.json",
    "PrometheusRule": "prometheusrule.json",
}
OLDEST_KUBERNETES = "1.29.0"
LABELS = {
    f"app.kubernetes.io/{key}"
    for key in ("name", "instance", "version", "component", "part-of", "managed-by")
}
SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    # Not check_schema(): the CRDs' patterns are Go regular expressions ("(?i)" inside);
    # they are compiled only for the fields an object sets.
    schema = json.loads((CRDS / MONITORING_KINDS[kind]).read_text())
    return jsonschema.Draft202012Validator(schema)


ci_files = pytest.mark.parametrize("ci_file", CI_FILES, ids=[p.stem for p in CI_FILES])


def test_there_are_the_four_scenarios():
    assert {p.name for p in CI_FILES} == {
        "minimal-values.yaml",
        "gpu-pools-values.yaml",
        "ha-values.yaml",
        "monitoring-values.yaml",
    }


@ci_files
def test_the_chart_lints(ci_file):
    for version in (f"v{OLDEST_KUBERNETES}", f"v{kubernetes_validate.latest_version()}"):
        report = helm.lint(CHART, load_values(ci_file), strict=True, kube_version=version)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, problems


@ci_files
def test_every_object_passes_its_schema_strictly(ci_file):
    items = ci_objects(ci_file)
    assert items
    for item in items:
        kind = item["kind"]
        if kind in MONITORING_KINDS:
            assert item["apiVersion"] == "monitoring.coreos.com/v1"
            crd_validator(kind).validate(item)
            continue
        # Any other kind must be in the Kubernetes schemas: an unknown one raises.
        for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(item, version, strict=True)


def test_an_unknown_field_is_caught_by_the_validators():
    """The strict validators do refuse what they should (so the test above means it)."""
    items = ci_objects(CHART / "ci" / "monitoring-values.yaml")
    deployment = by_kind(items, "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)
    monitor = by_kind(items, "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("ServiceMonitor").validate(monitor)


# --------------------------------------------------------------------------- values schema
def _schema_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        keys.add(path)
        if child.get("type") == "object" and "properties" in child and key != "resources":
            keys |= _schema_keys(child, path + ".")
    return keys


def _value_keys(node: dict, schema: dict, prefix: str = "") -> set[str]:
    """Keys of values.yaml, descending where the schema describes named keys (free-form
    maps such as nodeSelector are one key)."""
    keys = set()
    for key, child in node.items():
        path = f"{prefix}{key}"
        keys.add(path)
        child_schema = schema.get("properties", {}).get(key, {})
        if isinstance(child, dict) and "properties" in child_schema and key != "resources":
            keys |= _value_keys(child, child_schema, path + ".")
        elif isinstance(child, dict) and key != "resources" and not child_schema:
            keys |= {f"{path}.{k}" for k in child}  # not in the schema at all
    return keys


def test_schema_and_values_name_the_same_keys():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Free-form maps (nodeSelector, labels, ...) are empty in values.yaml and open in
    # the schema; every other key is in both.
    schema_keys = _schema_keys(schema)
    value_keys = _value_keys(values, schema)
    assert value_keys - schema_keys == set()
    assert schema_keys - value_keys == set()


def test_every_values_key_is_documented():
    """A comment above every key, or above the key it belongs to (resources: {...})."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def documented(number: int) -> bool:
        return number > 0 and lines[number - 1].strip().startswith("#")

    def parent(number: int) -> int | None:
        indent = len(lines[number]) - len(lines[number].lstrip())
        for above in range(number - 1, -1, -1):
            text = lines[above]
            is_key = text.strip() and not text.lstrip().startswith("#")
            if is_key and len(text) - len(text.lstrip()) < indent:
                return above
        return None

    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        if stripped.endswith(":"):
            continue  # a section: its keys carry the comments
        up = parent(number)
        if not (documented(number) or (up is not None and documented(up))):
            undocumented.append(f"{number + 1}: {line}")
    assert undocumented == []


SECRETS = {"secrets": {"existingSecret": "s"}}


def refused(values: dict) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({**SECRETS, "gateway": {"replica": 3}}, "replica"),
        ({**SECRETS, "web": {"replicas": "two"}}, "replicas"),
        ({**SECRETS, "beat": {"replicas": 2}}, "replicas"),
        ({**SECRETS, "image": {"tag": "latest"}}, "tag"),
        (
            {
                **SECRETS,
                "agent": {
                    "pools": [
                        {
                            "name": "gpu",
                            "credentialsSecret": "c",
                            "shmSize": "1Gi",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Gi"},
                                "limits": {"cpu": "1", "memory": "2Gi"},
                            },
                        }
                    ]
                },
            },
            "gpusPerNode",
        ),
        ({}, "existingSecret"),
        ({"secrets": {"create": True}}, "secretKey"),
        ({**SECRETS, "ingress": {"enabled": True}}, "consoleHost"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "two-beats",
        "latest-tag",
        "pool-without-gpus",
        "no-secrets",
        "empty-created-secrets",
        "ingress-without-hosts",
    ],
)
def test_the_values_schema_refuses(values, names):
    assert names in refused(values)


def test_the_defaults_with_a_secret_render():
    assert objects(render(SECRETS))


# --------------------------------------------------------------------------- object rules
@ci_files
def test_labels_and_selectors(ci_file):
    for item in ci_objects(ci_file):
        labels = item["metadata"]["labels"]
        assert set(labels) >= LABELS, (item["kind"], item["metadata"]["name"])
        assert labels["app.kubernetes.io/instance"] == "sap"
        if item["kind"] in ("Deployment", "DaemonSet"):
            selector = item["spec"]["selector"]["matchLabels"]
            assert set(selector) == SELECTOR_KEYS
            template = item["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= template.items()
        if item["kind"] == "Service":
            assert set(item["spec"]["selector"]) == SELECTOR_KEYS


@ci_files
def test_requests_and_security_everywhere(ci_file):
    for workload in workloads(ci_objects(ci_file)):
        spec = pod_spec(workload)
        where = workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in spec["containers"] + spec.get("initContainers", []):
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert ":latest" not in container["image"] and ":" in container["image"]


def _component(item: dict) -> str:
    return item["metadata"]["labels"]["app.kubernetes.io/component"]


@ci_files
def test_probes(ci_file):
    for workload in by_kind(ci_objects(ci_file), "Deployment") + by_kind(
        ci_objects(ci_file), "DaemonSet"
    ):
        component = _component(workload)
        [container] = pod_spec(workload)["containers"]
        if component in ("beat", "ledger"):
            assert "livenessProbe" not in container and "readinessProbe" not in container
            continue
        assert "livenessProbe" in container, component
        if component in ("web", "gateway"):
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        if component in ("worker", "artifact-worker"):
            probe = container["livenessProbe"]
            assert probe["periodSeconds"] == 60
            assert 'inspect ping -d "worker@$HOSTNAME"' in probe["exec"]["command"][-1]
            assert container["command"][-1] == "worker@%h"


def test_probe_paths_exist_in_the_code():
    from controlplane.probes import PROBE_PATHS

    from workers.agent import http as agent_http

    items = ci_objects(CHART / "ci" / "gpu-pools-values.yaml")
    gateway_source = (REPO / "gateway" / "app.py").read_text()
    agent_source = Path(agent_http.__file__).read_text()
    for workload in by_kind(items, "Deployment") + by_kind(items, "DaemonSet"):
        for container in pod_spec(workload)["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                path = container.get(probe, {}).get("httpGet", {}).get("path")
                if path is None:
                    continue
                component = _component(workload)
                if component == "web":
                    assert path in PROBE_PATHS
                elif component == "gateway":
                    assert f'path == "{path}"' in gateway_source
                else:
                    assert f'self.path == "{path}"' in agent_source


@ci_files
def test_migration_hook_reads_only_what_exists_before_it(ci_file):
    items = ci_objects(ci_file)
    job = named(items, "Job", "-migrate")
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hook["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert job["spec"]["backoffLimit"] == 3 and job["spec"]["activeDeadlineSeconds"] > 0
    spec = pod_spec(job)
    text = json.dumps(spec)
    assert "configMap" not in text, "hooks run before the release's ConfigMap exists"
    secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    script = spec["containers"][0]["command"][-1]
    assert "migrate --noinput" in script and "ensure_admin --require-password" in script
    pools = [p["name"] for p in load_values(ci_file).get("agent", {}).get("pools", [])]
    if pools:
        assert f"ensure_pool {' '.join(pools)}" in script
    chart_secrets = {s["metadata"]["name"]: s for s in by_kind(items, "Secret")}
    job_weight = int(hook.get("helm.sh/hook-weight", "0"))
    for name in secrets:
        if name in chart_secrets:  # made by the chart: an earlier hook
            annotations = chart_secrets[name]["metadata"]["annotations"]
            assert "pre-install" in annotations["helm.sh/hook"]
            assert int(annotations["helm.sh/hook-weight"]) < job_weight
        else:
            assert name == load_values(ci_file)["secrets"]["existingSecret"]
    # Web pods never migrate.
    for workload in by_kind(items, "Deployment"):
        assert "migrate" not in json.dumps(pod_spec(workload)["containers"])


@ci_files
def test_secrets_are_files_and_never_random(ci_file):
    items = ci_objects(ci_file)
    for workload in by_kind(items, "Deployment"):
        [container] = pod_spec(workload)["containers"]
        env = env_of(container)
        refs = [e for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
        if _component(workload) == "gateway":
            assert [e["name"] for e in refs] == ["GATEWAY_REDIS_URL"]
            assert env["API_KEY_PEPPER_FILE"]["value"] == "/etc/sap/secrets/API_KEY_PEPPER"
        else:
            assert refs == []
            assert env["SECRET_KEY_FILE"]["value"] == "/etc/sap/secrets/SECRET_KEY"
            assert env["DATABASE_URL_FILE"]["value"] == "/etc/sap/secrets/DATABASE_URL"
    assert "randAlphaNum" not in (CHART / "templates" / "secret.yaml").read_text()


def test_beat_is_single_and_recreated():
    for ci_file in CI_FILES:
        items = ci_objects(ci_file)
        beat = named(items, "Deployment", "-beat")
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        targets = [
            h["spec"]["scaleTargetRef"]["name"] for h in by_kind(items, "HorizontalPodAutoscaler")
        ]
        assert not any(t.endswith("-beat") for t in targets)
        for pdb in by_kind(items, "PodDisruptionBudget"):
            assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] != "beat"


@ci_files
def test_a_pdb_only_over_two_or_more_pods(ci_file):
    items = ci_objects(ci_file)
    gateway = named(items, "Deployment", "-gateway")
    [hpa] = by_kind(items, "HorizontalPodAutoscaler") or [None]
    replicas = hpa["spec"]["minReplicas"] if hpa else gateway["spec"]["replicas"]
    pdbs = by_kind(items, "PodDisruptionBudget")
    assert (len(pdbs) == 1) == (replicas >= 2), ci_file.name


@ci_files
def test_the_gateway_pod(ci_file):
    items = ci_objects(ci_file)
    gateway = named(items, "Deployment", "-gateway")
    spec = pod_spec(gateway)
    [container] = spec["containers"]
    env = env_of(container)
    assert env["GATEWAY_HOST"]["value"] == "0.0.0.0"
    cpu = str(container["resources"]["limits"]["cpu"])
    cpus = int(cpu[:-1]) // 1000 if cpu.endswith("m") else int(float(cpu))
    assert env["GATEWAY_WORKERS"]["value"] == str(max(1, cpus))
    volumes = {v["name"]: v for v in spec["volumes"]}
    [mount] = [
        m
        for m in container["volumeMounts"]
        if m["mountPath"] == env["PROMETHEUS_MULTIPROC_DIR"]["value"]
    ]
    assert "emptyDir" in volumes[mount["name"]]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] == 40


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@ci_files
def test_node_agents(ci_file):
    values = load_values(ci_file)
    items = ci_objects(ci_file)
    daemonsets = by_kind(items, "DaemonSet")
    pools = values["agent"]["pools"]
    assert len(daemonsets) == len(pools)
    config = named(items, "ConfigMap", "-config")["data"]
    for pool, daemonset in zip(pools, daemonsets, strict=True):
        assert daemonset["metadata"]["name"].endswith(f"-agent-{pool['name']}")
        spec = pod_spec(daemonset)
        [container] = spec["containers"]
        env = env_of(container)
        assert env["AGENT_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["AGENT_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["AGENT_BIND_HOST"]["value"] == "0.0.0.0"
        assert env["AGENT_STOP_REPLICAS_ON_EXIT"]["value"] == "true"
        assert env["AGENT_POOL"]["value"] == pool["name"]
        assert env["AGENT_PORT_RANGE"]["value"] == (
            f"{config['FLEET_PORT_MIN']}-{config['FLEET_PORT_MAX']}"
        )
        assert env["AGENT_MODEL_CACHE_DIR"]["value"] == config["FLEET_MODEL_CACHE"]
        assert env["AGENT_NODE_SECRET_FILE"]["value"].endswith("/$(AGENT_NODE_NAME).secret")
        assert not spec.get("hostNetwork")
        assert spec["securityContext"]["runAsNonRoot"] is True
        limits = container["resources"]["limits"]
        gpus = pool["gpusPerNode"]
        if gpus:
            assert limits["nvidia.com/gpu"] == gpus
            assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                spec["tolerations"]
            )
            assert "NVIDIA_VISIBLE_DEVICES" not in env
        else:
            assert "nvidia.com/gpu" not in limits
            assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
        if pool.get("runtimeClassName"):
            assert spec["runtimeClassName"] == pool["runtimeClassName"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert _memory_bytes(shm["sizeLimit"]) <= _memory_bytes(limits["memory"])
        assert "emptyDir" in volumes[mounts["/var/lib/sap-agent"]]
        assert env["AGENT_STATE_DIR"]["value"] == "/var/lib/sap-agent"
        assert "emptyDir" in volumes[mounts[env["HOME"]["value"]]]
        assert "emptyDir" in volumes[mounts["/tmp"]]
        drain = int(env["AGENT_DRAIN_TIMEOUT_SECONDS"]["value"])
        stop = int(env["AGENT_STOP_TIMEOUT_SECONDS"]["value"])
        assert spec["terminationGracePeriodSeconds"] >= drain + stop + 30
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
        [port] = container["ports"]
        assert str(port["containerPort"]) == env["AGENT_HTTP_PORT"]["value"]
        low, high = (int(x) for x in env["AGENT_PORT_RANGE"]["value"].split("-"))
        assert not low <= port["containerPort"] <= high


@ci_files
def test_model_cache_is_one_volume_at_one_path(ci_file):
    values = load_values(ci_file)
    items = ci_objects(ci_file)
    path = named(items, "ConfigMap", "-config")["data"]["FLEET_MODEL_CACHE"]
    claims = set()
    users = [named(items, "Deployment", "-artifact-worker"), *by_kind(items, "DaemonSet")]
    for workload in users:
        spec = pod_spec(workload)
        [container] = spec["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == path]
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        claims.add(json.dumps(volume, sort_keys=True))
    assert len(claims) == 1
    pvcs = by_kind(items, "PersistentVolumeClaim")
    existing = values.get("modelCache", {}).get("existingClaim")
    assert len(pvcs) == (0 if existing else 1)
    for pvc in pvcs:
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def _policies(items):
    return {
        p["metadata"]["name"].removeprefix("sap-sovereign-ai-platform-"): p
        for p in by_kind(items, "NetworkPolicy")
    }


def test_network_policy_matrix():
    items = ci_objects(CHART / "ci" / "ha-values.yaml")
    values = load_values(CHART / "ci" / "ha-values.yaml")
    config = named(items, "ConfigMap", "-config")["data"]
    policies = _policies(items)

    agents = policies["agents"]
    replica_rule, metrics_rule = agents["spec"]["ingress"]
    [peer] = replica_rule["from"]
    assert peer == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "sovereign-ai-platform",
                "app.kubernetes.io/instance": "sap",
                "app.kubernetes.io/component": "gateway",
            }
        }
    }
    [ports] = replica_rule["ports"]
    assert (ports["port"], ports["endPort"]) == (
        int(config["FLEET_PORT_MIN"]),
        int(config["FLEET_PORT_MAX"]),
    )
    assert [p["port"] for p in metrics_rule["ports"]] == [9300]
    assert "namespaceSelector" in metrics_rule["from"][0]

    for name in ("worker", "artifact-worker", "beat", "ledger", "migrate"):
        assert policies[name]["spec"]["ingress"] == [], name
    for name, port in (("web", 8000), ("gateway", 8080)):
        [rule] = policies[name]["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [port]
        assert values["networkPolicy"]["allowedClients"][0] in rule["from"]

    database = policies["database"]
    [rule] = database["spec"]["ingress"]
    [expression] = [
        e
        for e in rule["from"][0]["podSelector"]["matchExpressions"]
        if e["key"] == "app.kubernetes.io/component"
    ]
    assert set(expression["values"]) == {"web", "worker", "artifact-worker", "ledger", "migrate"}

    def egress_ports(name):
        return [
            {p["port"] for p in rule.get("ports", [])} | ({"any"} if "ports" not in rule else set())
            for rule in policies[name]["spec"]["egress"]
        ]

    redis_peer = values["networkPolicy"]["egress"]["redis"][0]
    hub_peer = values["networkPolicy"]["egress"]["modelHub"][0]
    for name, policy in policies.items():
        if name == "database":
            continue
        egress = policy["spec"]["egress"]
        assert {"port": 53, "protocol": "UDP"} in egress[0]["ports"]
        assert {"port": 53, "protocol": "TCP"} in egress[0]["ports"]
        peers = [peer for rule in egress[1:] for peer in rule.get("to", [])]
        assert (redis_peer in peers) == (name != "migrate"), name
        assert (hub_peer in peers) == (name == "artifact-worker"), name
        reaches_db = any(5432 in ports for ports in egress_ports(name))
        assert reaches_db == (name in {"web", "worker", "artifact-worker", "ledger", "migrate"})


@ci_files
def test_port_ranges_are_equal_everywhere(ci_file):
    items = ci_objects(ci_file)
    config = named(items, "ConfigMap", "-config")["data"]
    expected = f"{config['FLEET_PORT_MIN']}-{config['FLEET_PORT_MAX']}"
    for daemonset in by_kind(items, "DaemonSet"):
        [container] = pod_spec(daemonset)["containers"]
        assert env_of(container)["AGENT_PORT_RANGE"]["value"] == expected
    for policy in by_kind(items, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for port in rule.get("ports", []):
                if "endPort" in port:
                    assert f"{port['port']}-{port['endPort']}" == expected


def test_ingress_never_routes_metrics_and_config_follows_it():
    items = ci_objects(CHART / "ci" / "ha-values.yaml")
    [ingress] = by_kind(items, "Ingress")
    console, gateway = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in console["http"]["paths"]}
    assert paths == {
        ("/console", "Prefix"),
        ("/api", "Prefix"),
        ("/admin", "Prefix"),
        ("/static", "Prefix"),
        ("/", "Exact"),
    }
    assert [(p["path"], p["pathType"]) for p in gateway["http"]["paths"]] == [("/v1", "Prefix")]
    assert ingress["spec"]["tls"][0]["secretName"] == "ai-example-tls"
    config = named(items, "ConfigMap", "-config")["data"]
    assert "ai.example.com" in config["ALLOWED_HOSTS"].split(",")
    assert "sap-sovereign-ai-platform-web" in config["ALLOWED_HOSTS"].split(",")
    assert config["CSRF_TRUSTED_ORIGINS"] == "https://ai.example.com"
    assert config["SESSION_COOKIE_SECURE"] == "true"
    assert config["CONSOLE_GATEWAY_URL"] == "https://api.ai.example.com/v1"
    assert not by_kind(ci_objects(CHART / "ci" / "minimal-values.yaml"), "Ingress")


def test_monitoring_objects_are_switched_by_values():
    quiet = ci_objects(CHART / "ci" / "minimal-values.yaml")
    loud = ci_objects(CHART / "ci" / "monitoring-values.yaml")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not by_kind(quiet, kind)
        [item] = by_kind(loud, kind)
        assert item["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboards = [
        c
        for c in by_kind(loud, "ConfigMap")
        if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1
    [podmonitor] = by_kind(loud, "PodMonitor")
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_helm_test_pod_checks_readiness_and_the_key():
    items = ci_objects(CHART / "ci" / "minimal-values.yaml")
    [pod] = by_kind(items, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert '-web:8000/readyz", 200' in script
    assert '-gateway:8080/readyz", 200' in script
    assert '-gateway:8080/v1/models", 401' in script
