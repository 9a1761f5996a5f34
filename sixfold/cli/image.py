"""`sixfold image build`: the container image for `sixfold up --runtime docker` (no registry needed)."""

from __future__ import annotations

import click

from sixfold.cli.common import CONTEXT, CliError, json_option, out, print_json, progress_printer
from sixfold.runtime import image as images


@click.group("image", context_settings=CONTEXT)
def image() -> None:
    """The container image the docker runtime (and Kubernetes) runs."""


@image.command("build", context_settings=CONTEXT)
@click.option("--rebuild-base", is_flag=True, help="Make the Debian base again even if it exists.")
@click.option("--mirror", default=images.MIRROR, show_default=True, help="The Debian mirror debootstrap uses.")
@json_option
def build(rebuild_base: bool, mirror: str, as_json: bool) -> None:
    """Build the image without any registry: debootstrap + docker import, then the project's wheels.

    The Debian base (`sixfold-base:bookworm-HASH`) is made once and reused; the project
    layer (`sixfold:VERSION-HASH`, also tagged `sixfold:latest`) is made again only when the
    source changed. Needs root (debootstrap) and a running Docker engine. Where a registry
    is reachable, `docker build -t sixfold:latest .` makes the same image from the Dockerfile.
    """
    try:
        result = images.build(progress=progress_printer(not as_json), rebuild_base=rebuild_base, mirror=mirror)
    except images.ImageError as exc:
        raise CliError(f"the image was not built: {exc}", 1) from None
    if as_json:
        print_json(result.to_dict())
        return
    made = [what for what, built in (("base", result.base_built), ("project layer", result.image_built)) if built]
    out.print(f"[bold green]image {result.image}[/bold green] (also sixfold:latest) on base {result.base_image}; "
              f"{'built ' + ' and '.join(made) if made else 'nothing to build'} in {result.elapsed_s:.1f} s")
