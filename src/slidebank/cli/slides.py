"""`slidebank slides list|show`, `search` and `export`: what the catalog holds, found and written out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from slidebank.cli.common import HomeOption, JsonOption, fail, open_node, opened_node, print_json

slides_app = typer.Typer(help="List and inspect stored slides.", no_args_is_help=True)


def register_slide_commands(app: typer.Typer) -> None:
    app.add_typer(slides_app, name="slides")
    app.command()(search)
    app.command()(export)


@slides_app.command("list")
def slides_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List every slide in the catalog."""
    node = open_node(home)
    slides = node.catalog.list_slides()
    node.close()
    if as_json:
        print_json(slides)
        return
    table = Table()
    for column in ("slide id", "dataset", "size", "vendor", "stain", "organ", "species", "diagnosis"):
        table.add_column(column)
    for s in slides:
        table.add_row(
            s["slide_id"],
            str(s.get("dataset") or ""),
            f"{s['width']}×{s['height']}",
            str(s.get("vendor") or ""),
            str(s.get("stain") or ""),
            str(s.get("organ") or ""),
            str(s.get("species") or ""),
            str(s.get("diagnosis") or ""),
        )
    Console().print(table)


@slides_app.command("show")
def slides_show(slide_id: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Everything the catalog knows about one slide."""
    node = open_node(home)
    detail = node.catalog.get_slide(slide_id)
    node.close()
    if detail is None:
        fail(f"no slide {slide_id!r}", 1)
    if as_json:
        print_json(detail)
        return
    if not detail.get("pixel_size_known"):
        Console().print("[yellow]pixel size: unknown[/yellow] — the scan did not say and none was supplied: no scale "
                        "and no measure in µm or mm² (ingest with --mpp or a sidecar mpp column to give it)")
    table = Table(show_header=False)
    for key, value in detail.items():
        rendered = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        table.add_row(key, rendered)
    Console().print(table)


def search(
    dataset: Annotated[Optional[list[str]], typer.Option(help="Dataset name (repeatable).")] = None,
    species: Annotated[Optional[list[str]], typer.Option()] = None,
    organ: Annotated[Optional[list[str]], typer.Option()] = None,
    stain: Annotated[Optional[list[str]], typer.Option()] = None,
    vendor: Annotated[Optional[list[str]], typer.Option()] = None,
    diagnosis: Annotated[Optional[list[str]], typer.Option()] = None,
    text: Annotated[Optional[str], typer.Option(help="Free text (slide id, alias, diagnosis).")] = None,
    where: Annotated[Optional[str], typer.Option(
        help="Conditions on measured facts, e.g. \"qc.blur_fraction < 0.05 and qc.passed = 1\".")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    after: Annotated[Optional[str], typer.Option(help="The `next` cursor a previous page printed.")] = None,
    facet_limit: Annotated[int, typer.Option(min=1, help="Values listed per facet, most frequent first.")] = 20,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Faceted search at image level: filters are OR within a facet and AND across facets."""
    from slidebank.catalog import CatalogError, FactCondition, SearchQuery

    try:
        conditions = FactCondition.parse_all(where) if where else ()
    except CatalogError as error:
        fail(str(error))
    query = SearchQuery(
        after=after,
        facet_limit=facet_limit,
        where=conditions,
        dataset=dataset or None,
        species=species or None,
        organ=organ or None,
        stain=stain or None,
        vendor=vendor or None,
        diagnosis=diagnosis or None,
        text=text,
        limit=limit,
        offset=offset,
    )
    node = open_node(home)
    try:
        result = node.catalog.search(query)
    except CatalogError as error:
        fail(str(error))
    finally:
        node.close()
    if as_json:
        print_json(
            {
                "total": result.total,
                "items": result.items,
                "facets": {name: [{"value": v, "count": c} for v, c in values] for name, values in result.facets.items()},
                "facet_values": result.facet_values,
                "next": result.next,
            }
        )
        return
    out = Console()
    table = Table(title=f"{result.total} slide(s)")
    for column in ("slide id", "dataset", "species", "organ", "stain", "diagnosis"):
        table.add_column(column)
    for s in result.items:
        table.add_row(*(str(s.get(k) or "") for k in ("slide_id", "dataset", "species", "organ", "stain", "diagnosis")))
    out.print(table)
    for name, values in result.facets.items():
        more = result.facet_values.get(name, 0) - len(values)
        out.print(f"[bold]{name}[/bold]: " + ", ".join(f"{v} ({c})" for v, c in values)
                  + (f" … and {more} more (--facet-limit)" if more > 0 else ""))
    if result.next:
        out.print(f"next page: --after {result.next}")


def export(
    slide_id: str,
    to: Annotated[Path, typer.Option("--to", help="Folder to write the DICOM files into.")],
    home: HomeOption = None,
) -> None:
    """Write the stored canonical slide as DICOM files (administrators)."""
    from slidebank.access.errors import SlideNotFound
    from slidebank.access.principal import operator
    from slidebank.slides.stored import export_slide

    with opened_node(home, SlideNotFound) as node:
        written = export_slide(node.catalog, node.audit, node.open_blob, operator(), slide_id, to)
    for path in written:
        typer.echo(str(path))
