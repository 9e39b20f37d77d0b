"""Human tables by default, `--json` for scripts."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

console = Console()


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str | None = None
) -> None:
    """columns: (header, key) pairs; missing values show as '-'."""
    t = Table(*[h for h, _ in columns], title=title)
    for row in rows:
        t.add_row(*[_cell(row.get(key)) for _, key in columns])
    console.print(t)


def fields(doc: dict[str, Any], order: Sequence[str] = ()) -> None:
    t = Table(show_header=False, box=None)
    keys = [k for k in order if k in doc] + [k for k in doc if k not in order]
    for key in keys:
        t.add_row(f"[bold]{key}[/bold]", _cell(doc[key]))
    console.print(t)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
