"""Which runtime runs the cluster in a data dir: the module with its operations.

`sixfold up --runtime docker` records "runtime": "docker" in cluster.json; every
other command finds the cluster through its data dir and asks this module which
runtime's `status`, `endpoints`, `resolve_endpoint`, `chaos` and `down` to use.
Both modules have the same operations with the same signatures and results.
"""

from __future__ import annotations

import shutil
from types import ModuleType

from sixfold.runtime import local
from sixfold.runtime.layout import ClusterDir, StateError


def of(cdir: ClusterDir) -> ModuleType:
    try:
        state = cdir.read_state()
    except StateError:
        return local   # it explains a damaged cluster.json
    if state is not None and state.get("runtime") == "docker":
        from sixfold.runtime import docker

        return docker
    if state is None and shutil.which("docker"):
        from sixfold.runtime import docker

        if docker.orphans(cdir):   # containers of a data dir that was deleted under them: `down` removes them
            return docker
    return local
