"""What every `sixfold` cluster command shares: --data-dir, --json, errors and exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or an impossible request.
Every error message says what to do next.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console

from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.local import RuntimeFailure
from sixfold.runtime.settings import BY_NAME, default_data_dir

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# pipes and files get wide lines rather than tables squeezed into 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


class CliError(click.ClickException):
    """A failure with a meaningful exit code (1 runtime, 2 usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def data_dir_option(fn: Callable) -> Callable:
    s = BY_NAME["data_dir"]
    return click.option(s.flag, s.name, type=s.type, default=None, envvar=s.env, show_envvar=True,
                        help=s.help)(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (documented in the README).")(fn)


def cluster_dir(data_dir: Path | None) -> ClusterDir:
    return ClusterDir.at(data_dir or default_data_dir())


def reports_errors(fn: Callable) -> Callable:
    """Turns the runtime's exceptions into messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeFailure as exc:
            raise CliError(str(exc), exc.exit_code) from None

    return wrapper


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def progress_printer(enabled: bool = True) -> Callable[[str], None]:
    """Progress lines on stderr (the spinner is for terminals; plain lines otherwise)."""

    def show(message: str) -> None:
        if enabled:
            err.print(f"[dim]… {message}[/dim]" if err.is_terminal else f"... {message}")

    return show
