"""`sixfold sql`: one-shot statements (-c, repeatable) or a REPL, through the DB-API client."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import click
from rich.table import Table

import sixfold
from sixfold.cli.common import (CONTEXT, CliError, cluster_dir, data_dir_option, err, json_option, out,
                                print_json, reports_errors)
from sixfold.dbapi import Error as DbError
from sixfold.runtime import runtimes

ROWS_SHOWN_MAX = 10_000  # the table shows this many rows; --json has them all
REPL_BUFFER_MAX = 1 << 20

REPL_HELP = """\
  end a statement with ; to run it    \\d  list tables    \\q  quit    \\?  this help"""


def run_statement(conn, sql: str) -> dict:
    before = conn.last_commit_lsn
    t0 = time.perf_counter()
    cur = conn.cursor()
    cur.execute(sql)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    columns = [d[0] for d in cur.description] if cur.description else []
    rows = cur.fetchall() if columns else []
    return {"sql": sql, "columns": columns, "rows": [list(r) for r in rows], "rowcount": cur.rowcount,
            "commit_lsn": conn.last_commit_lsn if conn.last_commit_lsn != before else None,
            "elapsed_ms": round(elapsed_ms, 2)}


def _cell(value) -> str:
    if value is None:
        return "[dim]NULL[/dim]"
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    return str(value).replace("[", "\\[")


def show_result(result: dict) -> None:
    if result["columns"]:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in result["columns"]:
            table.add_column(col.replace("[", "\\["))
        for row in result["rows"][:ROWS_SHOWN_MAX]:
            table.add_row(*(_cell(v) for v in row))
        out.print(table)
        n = len(result["rows"])
        more = f", {ROWS_SHOWN_MAX} shown (use --json for all)" if n > ROWS_SHOWN_MAX else ""
        out.print(f"[dim]({n} row{'s' if n != 1 else ''}{more}, {result['elapsed_ms']:.1f} ms)[/dim]")
    else:
        affected = result["rowcount"]
        text = "OK" + (f", {affected} row{'s' if affected != 1 else ''} affected" if affected and affected > 0 else "")
        if result["commit_lsn"]:
            text += f" (commit LSN {result['commit_lsn']})"
        out.print(f"{text} [dim]{result['elapsed_ms']:.1f} ms[/dim]")


def show_error(sql: str, exc: DbError) -> dict:
    code = getattr(exc, "code", "") or type(exc).__name__
    err.print(f"[red]ERROR[/red] ({code}): {exc}")
    return {"sql": sql, "error": {"code": code, "message": str(exc)}}


@click.command("sql", context_settings=CONTEXT)
@data_dir_option
@click.option("--endpoint", "-e", default="writer", show_default=True,
              help="writer, reader, an instance name (see `sixfold endpoints`) or HOST:PORT.")
@click.option("-c", "--command", "commands", multiple=True, metavar="SQL",
              help="Run this statement and exit (repeat -c for several, run in order).")
@click.option("--timeout-s", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="How long one statement may take.")
@json_option
@reports_errors
def sql(data_dir: Path | None, endpoint: str, commands: tuple[str, ...], timeout_s: float, as_json: bool) -> None:
    """Run SQL on the cluster: `-c SQL` (repeatable), or a REPL reading statements ending in `;`.

    Statements run in autocommit mode (BEGIN ... COMMIT makes a transaction). The
    REPL reads from a terminal or a pipe; `\\q` quits. Exit code 1 when a statement
    fails (with -c, the rest are not run).
    """
    cdir = cluster_dir(data_dir)
    address, described = runtimes.of(cdir).resolve_endpoint(cdir, endpoint)
    try:
        conn = sixfold.connect(address, autocommit=True, timeout_s=timeout_s)
    except DbError as exc:
        raise CliError(f"{exc} ({described}); check it with `sixfold status`") from None
    try:
        if commands:
            code = _one_shot(conn, commands, as_json)
        else:
            code = _repl(conn, described, as_json)
    finally:
        conn.close()
    if code:
        raise SystemExit(code)


def _one_shot(conn, commands: tuple[str, ...], as_json: bool) -> int:
    results = []
    code = 0
    for statement in commands:
        try:
            result = run_statement(conn, statement)
        except DbError as exc:
            results.append(show_error(statement, exc))
            code = 1
            break
        results.append(result)
        if not as_json:
            show_result(result)
    if as_json:
        print_json(results)
    return code


def _repl(conn, described: str, as_json: bool) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
        err.print(f"connected to {described} as {conn.role} ({conn.node_id}); \\? for help, \\q to quit")
    buffer: list[str] = []
    results = []
    failures = 0

    def execute(statement: str) -> None:
        nonlocal failures
        try:
            result = run_statement(conn, statement)
        except DbError as exc:
            results.append(show_error(statement, exc))
            failures += 1
            return
        results.append(result)
        if not as_json:
            show_result(result)

    while True:
        prompt = f"{conn.node_id}{'=>' if not buffer else '->'} "
        if interactive:
            try:
                text = input(prompt)
            except EOFError:
                err.print("")
                break
            except KeyboardInterrupt:  # drop the statement being typed, as psql does
                buffer.clear()
                err.print("")
                continue
        else:
            line = sys.stdin.readline()
            if line == "":
                break
            text = line.rstrip("\n")
        if not buffer and text.strip().startswith("\\"):
            meta = text.strip()
            if meta in ("\\q", "\\quit"):
                break
            if meta in ("\\d", "\\dt"):
                execute("SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
            else:
                err.print(REPL_HELP)
            continue
        buffer.append(text)
        joined = "\n".join(buffer).strip()
        if len(joined) > REPL_BUFFER_MAX:
            err.print(f"[red]statement longer than {REPL_BUFFER_MAX} bytes; discarded[/red]")
            buffer.clear()
            continue
        if joined and sqlite3.complete_statement(joined):
            buffer.clear()
            execute(joined)
        elif not joined:
            buffer.clear()
    rest = "\n".join(buffer).strip()
    if rest:  # a last statement without its `;` (piped input)
        execute(rest)
    if as_json:
        print_json(results)
    return 1 if failures and not interactive else 0
