"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.storage_cluster import StorageCluster


@pytest.fixture
def storage_cluster_factory(tmp_path):
    """Builds and starts clusters (`factory(azs=3, per_az=2, ...)`); kills them all at teardown."""
    clusters: list[StorageCluster] = []

    def factory(**kwargs) -> StorageCluster:
        cluster = StorageCluster(tmp_path / f"cluster{len(clusters)}", **kwargs)
        clusters.append(cluster)  # before start: a failed start is still cleaned up
        cluster.start()
        return cluster

    yield factory
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def storage_cluster(storage_cluster_factory) -> StorageCluster:
    """Six storage nodes: region 1, AZs 1..3, two per AZ, on 127.1.<az>.<n>."""
    return storage_cluster_factory()


@pytest.fixture
def compute_cluster(storage_cluster, tmp_path):
    """Six storage nodes, a writer and two readers, all real processes."""
    from tests.compute_cluster import ComputeCluster

    cluster = ComputeCluster(tmp_path / "compute", storage_cluster, readers=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def project_image() -> str:
    """The project's container image for this source tree, built once per session (reused when it exists).

    Skips only when no Docker engine can run here (the reason says why); `.ci/run` installs
    and starts one, so in CI these tests run.
    """
    from sixfold.runtime import image

    reason = image.docker_available()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    return image.build().image
