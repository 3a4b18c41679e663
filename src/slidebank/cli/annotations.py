"""`slidebank annotations import|export|list`: QuPath GeoJSON in and out of the catalog.

On the node these act as its operator; `--author` records who drew the imported features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from slidebank.access.principal import OPERATOR, operator
from slidebank.cli.common import HomeOption, JsonOption, console, fail, opened_node, print_json

annotations_app = typer.Typer(help="Annotations of a slide: QuPath GeoJSON import/export, listing.",
                              no_args_is_help=True)


@annotations_app.command("import")
def import_annotations(
    slide_id: str,
    file: Annotated[Path, typer.Argument(help="GeoJSON (FeatureCollection, as QuPath exports it).")],
    author: Annotated[str, typer.Option(help="Recorded as the features' author.")] = OPERATOR,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Add the features of a GeoJSON file to a slide (features with a known id are replaced)."""
    from slidebank.annotations.geojson import AnnotationError, parse_document
    from slidebank.annotations.service import AnnotationNotFound

    try:
        document = json.loads(file.read_bytes())
        features = parse_document(document)
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror or error}")
    except (ValueError, AnnotationError) as error:  # json.JSONDecodeError is a ValueError
        fail(f"{file} is not usable GeoJSON: {error}")
    with opened_node(home, AnnotationNotFound) as node:
        ids = node.annotations.add(slide_id, features, operator(), author)
    if as_json:
        print_json({"slide_id": slide_id, "imported": len(ids), "ids": ids})
    else:
        console.print(f"imported {len(ids)} feature(s) into {slide_id}")


@annotations_app.command("export")
def export_annotations(
    slide_id: str,
    to: Annotated[Path, typer.Option("--to", help="GeoJSON file to write ('-' for stdout).")],
    home: HomeOption = None,
) -> None:
    """Write every feature of a slide as a GeoJSON FeatureCollection that QuPath imports."""
    from slidebank.annotations.service import AnnotationNotFound

    with opened_node(home, AnnotationNotFound) as node:
        features = node.annotations.export(slide_id, operator())
    text = json.dumps({"type": "FeatureCollection", "features": features})
    if str(to) == "-":
        typer.echo(text)
        return
    try:
        to.write_text(text)
    except OSError as error:
        fail(f"cannot write {to}: {error.strerror or error}")
    console.print(f"wrote {len(features)} feature(s) to {to}")


@annotations_app.command("list")
def list_annotations(
    slide_id: str,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000)] = 1000,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """The features of a slide (first `--limit`), with class, type, author and bounding box."""
    from slidebank.annotations.service import AnnotationNotFound

    with opened_node(home, AnnotationNotFound) as node:
        features, total = node.annotations.query(slide_id, limit=limit)
        classes = node.annotations.classes(slide_id)
    if as_json:
        print_json({"slide_id": slide_id, "total": total, "classes": classes, "features": features})
        return
    table = Table(title=f"{total} annotation(s) on {slide_id}")
    for column in ("id", "type", "class", "author", "bbox"):
        table.add_column(column)
    for feature in features:
        extra = feature["slidebank"]
        table.add_row(feature["id"], feature["geometry"]["type"], extra["class"] or "", extra["author"],
                      ",".join(f"{v:.0f}" for v in extra["bbox"]))
    Console().print(table)
