"""What every `slidebank` command shares: the node option, JSON output, errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from slidebank.node import Node

console = Console(stderr=True)
HomeOption = Annotated[
    Optional[Path], typer.Option("--home", envvar="SLIDEBANK_HOME", help="Node folder (default ./slidebank-data).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def open_node(home: Path | None) -> Node:
    from slidebank.node import Node  # deferred: `--help` stays fast

    return Node.open(home)


@contextmanager
def opened_node(home: Path | None, *not_found: type[Exception]) -> Iterator[Any]:
    """The node for one command, closed after; the `not_found` errors end it with exit status 1."""
    node = open_node(home)
    try:
        yield node
    except not_found as error:
        fail(str(error), 1)
    finally:
        node.close()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


def print_list(items: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    """A list as one JSON document (scripts) or one formatted line per item (people)."""
    if as_json:
        print_json(items)
        return
    for item in items:
        console.print(line(item))


def safe(text: str) -> str:
    """Text from the database or a user, fit for a terminal: control characters (newlines, escape
    sequences that could forge lines or colours) shown as escapes, never executed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(safe(message))}", highlight=False)
    raise typer.Exit(code)


