"""The settings table: one place defines each cluster setting.

Each row gives a setting's name, type, default and help; the command-line flag
(`--storage-per-az`) and the environment variable (`SIXFOLD_STORAGE_PER_AZ`) are
derived from the name, and so are the Kubernetes manifests' environment variables
(k8s_manifests.py: every setting with `nodes` goes into the ConfigMap sixfold-settings). `sixfold up`
builds its options from this table (`click_options`), `sixfold settings` prints
it, and the README's table is made from it.

The node commands (`sixfold storage-node`, `sixfold compute-node`) still declare
their own flags; they move onto this table when the manifests need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

ENV_PREFIX = "SIXFOLD_"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    type: Any  # a click type
    default: Any
    help: str
    scope: str  # "cluster": stored with the cluster and fixed once it exists; "tuning": may change per start; "cli"
    # the node kinds whose command reads this setting (same flag, same variable): the Kubernetes
    # manifests pass these to the pods as environment variables (k8s_manifests.py)
    nodes: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def type_name(self) -> str:
        t = self.type
        if isinstance(t, click.Choice):
            return "|".join(t.choices)
        if isinstance(t, click.ParamType):
            return t.name
        return getattr(t, "__name__", str(t))

    def to_dict(self) -> dict:
        return {"name": self.name, "flag": self.flag, "env": self.env, "type": self.type_name(),
                "default": None if self.default is None else str(self.default),
                "scope": self.scope, "help": self.help}


def default_data_dir() -> Path:
    """Per user: $XDG_DATA_HOME/sixfold/default, else ~/.local/share/sixfold/default."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sixfold" / "default"


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", click.Path(file_okay=False, path_type=Path), None,
            "Where the cluster keeps its state, node data and logs "
            "[default: $XDG_DATA_HOME/sixfold/default or ~/.local/share/sixfold/default].", "cli"),
    Setting("runtime", click.Choice(["local", "docker"]), "local",
            "How nodes run: local processes, or one Docker container per node (`sixfold image build` first).",
            "cli"),
    Setting("image", str, "", "docker runtime: the image to run [default: the one `sixfold image build` made for "
            "this source tree, else sixfold:latest].", "docker"),
    Setting("docker_subnet", str, "10.201.0.0/16",
            "docker runtime: region R's network is the /16 R - 1 above this one; AZ N is its .N.0/24 block.",
            "docker"),
    Setting("regions", int, 1, "Regions: region 1 is the primary (the writer); each other region has its own "
            "storage, readers, coordinators and a replicator shipping the primary's log to it.", "cluster"),
    Setting("azs", int, 3, "Availability zones: exactly 3 (six copies, two per AZ).", "cluster"),
    Setting("storage_per_az", int, 2, "Storage nodes per AZ (at least 2).", "cluster"),
    Setting("readers", int, 1, "Reader instances, 0..15, spread over AZs 2, 3, 1, ...", "cluster"),
    Setting("writers", int, 1, "Writer instances, 1..8: writer-1 is the primary, writer-2.. are peer writers "
            "(multi-writer, snapshot isolation; see sixfold/nodes/compute/MULTIWRITER.md).", "cluster"),
    Setting("storage_port", int, 7100, "Port of every storage node (each node has its own address).", "cluster"),
    Setting("compute_port", int, 7200, "Port of every compute instance (each has its own address).", "cluster"),
    Setting("volume_id", str, "vol-1", "Name of the shared volume.", "cluster", ("compute",)),
    Setting("pages_per_segment", click.IntRange(1, 1 << 20), 256,
            "Pages per segment (one protection group per segment); fixed once the volume exists.", "cluster",
            ("compute",)),
    Setting("commit_timeout_s", click.FloatRange(0.1), 10.0,
            "How long a commit waits for a write quorum before it reports an unknown outcome.", "tuning",
            ("compute",)),
    Setting("gossip_interval_ms", click.IntRange(10, 60_000), 100,
            "How often storage nodes compare notes with their peers.", "tuning", ("storage",)),
    Setting("storage_replace_after_s", click.FloatRange(0.5), 30.0,
            "How long a storage node may stay unreachable before the coordinators have each of its PGs "
            "re-replicated to another node of its AZ (needs --storage-per-az 3 or more).", "tuning",
            ("coordinator",)),
    Setting("latency_in_region", click.BOOL, False,
            "Pass calls inside a region through the RPC latency layer too, so that `chaos latency --from R "
            "--to R` and the latency nemesis can slow them (about 40 us of CPU per stream message: off by "
            "default; calls between regions always pass through it).", "tuning"),
    Setting("write_forwarding", bool, False,
            "Readers of secondary regions forward the writes of sessions that set "
            "sixfold.replica_read_consistency (eventual, session or global) to the primary writer "
            "(see README, write forwarding).", "tuning"),
    Setting("lease_s", click.FloatRange(0.2), 2.0,
            "With secondary regions: the primary writer acknowledges a commit only while it holds a lease "
            "this long from every other region's replicator, so that a region failed over from can never "
            "acknowledge a write (its commits wait while a secondary region is cut off).", "tuning",
            ("compute",)),
    Setting("shipping_retain_s", click.FloatRange(0.5), 600.0,
            "With secondary regions: how long the primary's storage keeps the records a secondary region's "
            "replicator has not shipped after it last asked; a region cut off for longer reports needs-resync "
            "and is seeded again by `sixfold region resync`.", "tuning", ("storage",)),
    Setting("start_timeout_s", click.FloatRange(1), 90.0,
            "How long `up` waits for the cluster to become healthy.", "tuning"),
    Setting("stop_timeout_s", click.FloatRange(0.5), 10.0,
            "How long a node gets to stop after SIGTERM before it is killed.", "tuning"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def click_options(*names: str) -> Callable:
    """Decorator: one click option per named setting, with its env var and default."""

    def decorate(fn: Callable) -> Callable:
        for name in reversed(names):
            s = BY_NAME[name]
            fn = click.option(
                s.flag, s.name, type=s.type, default=s.default, envvar=s.env, show_envvar=True,
                show_default=s.default is not None, help=s.help, is_flag=s.type is bool,
            )(fn)
        return fn

    return decorate


def values_of(scope: str, params: dict) -> dict:
    """The subset of parsed parameters that belong to `scope`."""
    return {s.name: params[s.name] for s in SETTINGS if s.scope == scope and s.name in params}


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| flag | environment variable | default | what it is |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(per user)" if s.default is None else "(see help)" if s.default == "" else f"`{s.default}`"
        rows.append(f"| `{s.flag}` | `{s.env}` | {default} | {s.help} |")
    return "\n".join(rows)
