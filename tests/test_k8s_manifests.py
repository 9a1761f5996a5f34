"""The Kubernetes manifests, checked without a control plane (none can run here).

Every overlay is rendered with the real `kubectl kustomize`, validated strictly against the
oldest and newest Kubernetes schemas kubernetes-validate knows, and checked for what a
schema cannot see: selectors, zones, Services, named ports, headless Services, the kind
workers, and that every pod's command line is one its node command accepts.
"""

from __future__ import annotations

import os
from collections import Counter

import click
import pytest
import yaml

from sixfold.nodes.compute.main import compute_node
from sixfold.nodes.coordinator.main import coordinator
from sixfold.nodes.storage.main import storage_node
from sixfold.runtime import k8s_manifests
from sixfold.runtime.settings import SETTINGS
from sixfold.volume.placement import AZ_COUNT, COPIES_PER_AZ
from tests.k8s_render import K8S_DIR, OVERLAYS, by_kind, named, pods, render

NODE_COMMANDS = {"storage": storage_node, "compute": compute_node, "coordinator": coordinator}
WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet")


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request) -> list[dict]:
    return render(request.param)


def test_there_is_an_overlay_per_region():
    assert OVERLAYS == ["region-1", "region-2"]


def test_the_committed_base_is_what_the_generator_makes():
    for name, text in k8s_manifests.render().items():
        path = K8S_DIR / "base" / name
        assert path.exists() and path.read_text() == text, \
            f"k8s/base/{name} is stale: run `python -m sixfold.runtime.k8s_manifests`"


def _versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    versions = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    return [versions[0], versions[-1]]


@pytest.mark.parametrize("version", _versions())
def test_every_object_validates_strictly(docs, version):
    import kubernetes_validate

    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} against {version}: {exc}")


# ------------------------------------------------------------------ one source of settings


def test_settings_table_drives_flags_env_and_manifests(docs):
    settings = named(docs, "ConfigMap")
    (settings_map,) = [m for name, m in settings.items() if name.startswith("sixfold-settings-")]
    node_settings = [s for s in SETTINGS if s.nodes]
    assert node_settings, "the settings table names the settings nodes read"
    assert settings_map["data"] == {s.env: str(s.default) for s in node_settings}
    for s in node_settings:
        for kind in s.nodes:
            options = {o.name: o for o in NODE_COMMANDS[kind].params}
            option = options.get(s.name)
            assert option is not None, f"{kind} has no option for the setting {s.name}"
            assert s.flag in option.opts and option.envvar == s.env, (kind, s.name, option.opts, option.envvar)
    # every pod of a kind that reads a setting gets it through envFrom
    for pod in pods(docs):
        kind = pod.labels["app.kubernetes.io/component"]
        for s in node_settings:
            if kind in s.nodes:
                assert pod.env[s.env] == str(s.default), (pod.name, s.env)


def test_every_pod_command_line_is_accepted_by_its_node_command(docs, monkeypatch):
    for pod in pods(docs):
        kind = pod.labels["app.kubernetes.io/component"]
        assert pod.command == ["python"] and pod.args[:2] == ["-m", f"sixfold.nodes.{kind}"], pod.args
        for key in [k for k in os.environ if k.startswith("SIXFOLD_")]:
            monkeypatch.delenv(key)
        for key, value in pod.env.items():
            monkeypatch.setenv(key, value)
        assert not any("$(" in a for a in pod.args), f"{pod.name}: an undefined variable in {pod.args}"
        ctx = NODE_COMMANDS[kind].make_context(kind, list(pod.args[2:]))   # raises on a flag it does not know
        if kind != "coordinator":
            assert ctx.params["node_id"] == pod.name
        if kind == "coordinator":
            replicas = ctx.params["replicas"].split(",")
            assert any(r.endswith("@" + ctx.params["raft_address"]) for r in replicas), pod.name
        else:
            assert ctx.params["region"] == pod.env["SIXFOLD_REGION"]


# ------------------------------------------------------------------ semantics


def test_selectors_match_their_templates_and_no_two_workloads_share_pods(docs):
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    for w in workloads:
        selector = w["spec"]["selector"]["matchLabels"]
        template = w["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template.items(), w["metadata"]["name"]
    for a in workloads:
        for b in workloads:
            if a is not b:
                sel = a["spec"]["selector"]["matchLabels"].items()
                assert not sel <= b["spec"]["template"]["metadata"]["labels"].items(), \
                    f"{a['metadata']['name']} selects {b['metadata']['name']}'s pods"


def _zone_of(sts: dict) -> str | None:
    affinity = sts["spec"]["template"]["spec"].get("affinity", {}).get("nodeAffinity")
    if not affinity:
        return None
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expr,) = [e for e in term["matchExpressions"] if e["key"] == k8s_manifests.ZONE_LABEL]
    (zone,) = expr["values"]
    return zone


def test_each_zone_has_its_storage_members(docs):
    per_zone = Counter()
    for sts in by_kind(docs, "StatefulSet"):
        if sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "storage":
            per_zone[_zone_of(sts)] += sts["spec"]["replicas"]
    assert len(per_zone) == AZ_COUNT and None not in per_zone
    assert all(n >= COPIES_PER_AZ for n in per_zone.values()), per_zone
    # and the volume's member list is exactly those pods, each in its own zone's AZ
    storage_pods = {p.name: p for p in pods(docs) if p.labels["app.kubernetes.io/component"] == "storage"}
    listed = [entry.split("=")[0].split("@") for entry in next(iter(storage_pods.values())).env[
        "SIXFOLD_STORAGE_NODES"].split(",")]
    assert sorted(name for name, _ in listed) == sorted(storage_pods)
    for name, az in listed:
        assert storage_pods[name].labels["sixfold.io/az"] == az


def _pod_templates(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"] for d in docs if d["kind"] in WORKLOADS]


def test_every_service_selects_pods_and_its_named_ports_exist(docs):
    for svc in by_kind(docs, "Service"):
        selector = svc["spec"]["selector"].items()
        selected = [t for t in _pod_templates(docs) if selector <= t["metadata"]["labels"].items()]
        assert selected, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            for t in selected:
                names = {p["name"]: p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
                assert (target in names) if isinstance(target, str) else (target in names.values()), \
                    f"Service {svc['metadata']['name']} port {port['name']} -> {target}: no such container port"


def test_probes_ask_the_grpc_port_of_the_container(docs):
    for t in _pod_templates(docs):
        for c in t["spec"]["containers"]:
            grpc_port = {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"]
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{c['name']} has no {probe}"
                assert c[probe]["grpc"]["port"] == grpc_port, (c["name"], probe, c[probe])
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


def test_statefulsets_name_headless_services(docs):
    services = named(docs, "Service")
    for sts in by_kind(docs, "StatefulSet"):
        svc = services.get(sts["spec"]["serviceName"])
        assert svc is not None, f"{sts['metadata']['name']}: no Service {sts['spec']['serviceName']}"
        assert svc["spec"].get("clusterIP") == "None", f"{svc['metadata']['name']} is not headless"
        labels = sts["spec"]["template"]["metadata"]["labels"].items()
        assert svc["spec"]["selector"].items() <= labels, f"{svc['metadata']['name']} does not select its pods"


def test_the_coordinators_are_three_with_a_disruption_budget(docs):
    coordinators = named(docs, "StatefulSet")["coordinator"]
    assert coordinators["spec"]["replicas"] == 3
    budgets = by_kind(docs, "PodDisruptionBudget")
    covered = {t["metadata"]["labels"]["app.kubernetes.io/component"] for t in _pod_templates(docs)
               for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= t["metadata"]["labels"].items()}
    assert covered == {"storage", "coordinator", "compute"}


def test_the_replicas_fit_the_kind_workers(docs):
    kind = yaml.safe_load((K8S_DIR / "kind" / "cluster.yaml").read_text())
    workers = [n for n in kind["nodes"] if n["role"] == "worker"]
    zones = Counter(w["labels"][k8s_manifests.ZONE_LABEL] for w in workers)
    assert len(zones) == AZ_COUNT
    for sts in by_kind(docs, "StatefulSet"):
        zone = _zone_of(sts)
        assert zone is None or zones[zone] >= 1, f"{sts['metadata']['name']} wants zone {zone}: no kind worker there"
        anti = sts["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
        for term in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []):
            domains = len(zones) if term["topologyKey"] == k8s_manifests.ZONE_LABEL else len(workers)
            assert sts["spec"]["replicas"] <= domains, f"{sts['metadata']['name']}: more replicas than {term}"


def test_endpoint_services_exist_for_writer_reader_and_custom(docs):
    services = named(docs, "Service")
    assert {"writer", "reader", "custom-endpoints"} <= set(services)
    for name in ("writer", "reader", "custom-endpoints"):
        assert services[name]["spec"].get("clusterIP") != "None"
    assert len(services["custom-endpoints"]["spec"]["ports"]) == 2 * 16


def test_a_click_option_per_setting_has_the_same_env_everywhere():
    """`sixfold up`'s options come from the same rows (flag and variable derived from the name)."""
    from sixfold.cli.cluster import up

    options = {o.name: o for o in up.params if isinstance(o, click.Option)}
    for s in SETTINGS:
        if s.name in options:
            assert options[s.name].envvar == s.env and s.flag in options[s.name].opts
