"""`slidebank store sweep`: the blob store's full garbage collection, for operators."""

from __future__ import annotations

import typer

from slidebank.cli.common import HomeOption, JsonOption, console, open_node, print_json

store_app = typer.Typer(help="The node's blob store (local folder or S3 bucket).", no_args_is_help=True)


@store_app.command("sweep")
def sweep(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Delete every blob that nothing in the catalog references: what crashes left before the
    pending-blob log existed, or files put there by hand. Lists the whole store; waits for any
    running ingest (it takes the ingest lock)."""
    node = open_node(home)
    try:
        removed = node.sweep_store()
    finally:
        node.close()
    if as_json:
        print_json({"removed": removed})
    else:
        console.print(f"Removed {len(removed)} unreferenced blob(s).")
