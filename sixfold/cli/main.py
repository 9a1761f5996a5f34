"""The `sixfold` command."""

from __future__ import annotations

import click

from sixfold import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sixfold")
def cli() -> None:
    """Sixfold: six copies over three AZs, a writer and readers on a shared volume."""


def _register() -> None:
    from sixfold.nodes.compute.main import compute_node
    from sixfold.nodes.storage.main import storage_node

    cli.add_command(storage_node)
    cli.add_command(compute_node)


_register()
