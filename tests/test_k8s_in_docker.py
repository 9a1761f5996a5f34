"""The strongest check of the manifests possible without Kubernetes: run their pods in Docker.

The region-1 overlay is rendered with `kubectl kustomize`; every pod its StatefulSets would
make becomes a container of the project image with the same command, args and environment
(ConfigMaps, the Secret, the downward API's pod name and `$(VAR)` expansion resolved as the
kubelet does) and the same DNS names: Docker network aliases `<pod>.<service>` (and the
longer `.<namespace>.svc.cluster.local` forms) for the headless Services, and the Service
names (`writer`, `reader`, ...) on the pods each Service selects. All pods start at once
(the StatefulSets' podManagementPolicy is Parallel) and restart when they exit (restartPolicy
Always). The cluster they form must take a write and answer a read through the `writer`
Service's name, from a client container on the same network.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.k8s_render import by_kind, pods, render

pytestmark = [pytest.mark.container, pytest.mark.slow]

SUBNET = "10.213.0.0/16"
LABEL = "org.sixfold.k8s-in-docker"
FORM_TIMEOUT_S = 120.0


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or run.returncode == 0, f"docker {' '.join(args[:3])}: {run.stderr}"
    return run


def remove_all(tag: str) -> list[str]:
    """Removes this test's containers and network; returns what could not be removed."""
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}={tag}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}={tag}").stdout.split()
    if nets:
        docker("network", "rm", *nets, check=False)
    return (docker("ps", "-aq", "--filter", f"label={LABEL}={tag}").stdout.split()
            + docker("network", "ls", "-q", "--filter", f"label={LABEL}={tag}").stdout.split())


def service_aliases(docs: list[dict], pod, namespace: str) -> list[str]:
    """The names of every Service that selects this pod (a ClusterIP Service's name resolves to
    its pods here: Docker's DNS answers an alias shared by several containers with all of them)."""
    out = []
    for svc in by_kind(docs, "Service"):
        if svc["spec"]["selector"].items() <= pod.labels.items():
            name = svc["metadata"]["name"]
            out += [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    return out


@pytest.mark.timeout(420)
def test_the_rendered_pods_form_a_working_cluster_in_docker(project_image, tmp_path):
    docs = render("region-1")
    namespace = by_kind(docs, "Namespace")[0]["metadata"]["name"]
    all_pods = pods(docs)
    assert len(all_pods) == 11
    tag = f"t{time.time_ns() % 10**9}"
    network = f"sixfold-k8s-{tag}"
    try:
        docker("network", "create", "--subnet", SUBNET, "--label", f"{LABEL}={tag}", network)
        for pod in all_pods:
            assert pod.container["image"] == "sixfold:latest"   # `sixfold image build` tags it so
            aliases = pod.dns_names + service_aliases(docs, pod, namespace)
            alias_flags = [flag for a in aliases for flag in ("--network-alias", a)]
            env_flags = [flag for k, v in pod.env.items() for flag in ("-e", f"{k}={v}")]
            mounts = [flag for m in pod.container.get("volumeMounts", [])
                      for flag in ("--mount", f"type=tmpfs,destination={m['mountPath']}")]
            docker("run", "--detach", "--name", f"{network}-{pod.name}", "--hostname", pod.name,
                   "--network", network, *alias_flags, "--label", f"{LABEL}={tag}", "--restart", "always",
                   "--init", *env_flags, *mounts, project_image, *pod.command, *pod.args)
        docker("run", "--detach", "--name", f"{network}-client", "--network", network, "--label", f"{LABEL}={tag}",
               "--init", project_image, "sleep", "infinity")

        def sql(*statements: str) -> subprocess.CompletedProcess:
            flags = [flag for s in statements for flag in ("-c", s)]
            return docker("exec", f"{network}-client", "sixfold", "sql", "--endpoint", "writer:7400",
                          "--timeout-s", "10", *flags, "--json", check=False, timeout=60)

        # the pods find each other by name and elect a coordinator leader; wait until the writer
        # Service answers a query (that is the cluster being ready), then write and read once
        deadline = time.monotonic() + FORM_TIMEOUT_S
        started = time.monotonic()
        while (ready := sql("SELECT 1")).returncode != 0:
            if time.monotonic() > deadline:
                logs = {p.name: docker("logs", "--tail", "8", f"{network}-{p.name}", check=False).stderr[-800:]
                        for p in all_pods}
                pytest.fail(f"no answer through the writer Service within {FORM_TIMEOUT_S:.0f} s: "
                            f"{ready.stderr}\n" + "\n".join(f"--- {n}\n{text}" for n, text in logs.items()))
            time.sleep(1.0)
        print(f"the pods formed a cluster in {time.monotonic() - started:.1f} s")
        wrote = sql("CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO k (v) VALUES ('from-k8s-pods')",
                    "SELECT v FROM k")
        assert wrote.returncode == 0, wrote.stderr
        _create, insert, select = json.loads(wrote.stdout)
        assert insert["commit_lsn"], insert    # acknowledged by a write quorum of the storage pods
        assert select["rows"] == [["from-k8s-pods"]]
        # every pod runs (none crash-looping) and the storage pods serve from their zones' names
        states = docker("ps", "--filter", f"label={LABEL}={tag}", "--format", "{{.Names}} {{.Status}}").stdout
        assert states.count("Up ") == len(all_pods) + 1, states
    finally:
        left = remove_all(tag)
        assert not left, f"left behind: {left}"
