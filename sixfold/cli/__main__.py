"""`python -m sixfold.cli ...` is the `sixfold` command."""

from sixfold.cli.main import cli

cli(prog_name="sixfold")
