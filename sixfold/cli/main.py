"""The `sixfold` command.

Subcommands are imported only when used, so that `sixfold status` does not pay
for importing SQLite, the VFS and the quorum client.
"""

from __future__ import annotations

import importlib

import click

from sixfold import __version__

# name -> "module:attribute", in the order `sixfold --help` lists them
COMMANDS = {
    "up": "sixfold.cli.cluster:up",
    "down": "sixfold.cli.cluster:down",
    "status": "sixfold.cli.cluster:status",
    "endpoints": "sixfold.cli.cluster:endpoints",
    "endpoint": "sixfold.cli.cluster:endpoint",
    "failover": "sixfold.cli.cluster:failover",
    "replica": "sixfold.cli.cluster:replica",
    "region": "sixfold.cli.region:region",
    "writer": "sixfold.cli.writer:writer",
    "sql": "sixfold.cli.sql:sql",
    "chaos": "sixfold.cli.chaos:chaos",
    "demo": "sixfold.cli.demo:demo",
    "settings": "sixfold.cli.cluster:settings",
    "image": "sixfold.cli.image:image",
    "storage-node": "sixfold.nodes.storage.main:storage_node",
    "compute-node": "sixfold.nodes.compute.main:compute_node",
    "coordinator": "sixfold.nodes.coordinator.main:coordinator",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sixfold")
def cli() -> None:
    """Sixfold: six copies over three AZs, a writer and readers on a shared volume.

    Start with `sixfold demo` (the whole story in a minute), or `sixfold up`, then
    `sixfold sql`, `sixfold status`, `sixfold chaos ...` and `sixfold down`.
    Exit codes: 0 ok, 1 runtime failure, 2 bad usage or an impossible request.
    """
