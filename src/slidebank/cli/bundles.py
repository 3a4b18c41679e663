"""`slidebank bundle export|import`: datasets as BIGPICTURE submission bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidebank.cli.common import HomeOption, JsonOption, console, fail, open_node, print_json

bundle_app = typer.Typer(help="BIGPICTURE submission bundles (MetaFleX XML, DICOM, GeoJSON).", no_args_is_help=True)


@bundle_app.command("export")
def export(
    dataset: Annotated[str, typer.Argument(help="The dataset to export")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write DATASET_<name>/ into")],
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Write a dataset as a submission bundle: every MetaFleX object, the canonical DICOM files (decrypted),
    annotations as GeoJSON, with checksums; each XML file validated against the MetaFleX XSDs."""
    from slidebank.access.principal import operator
    from slidebank.bundles.export import BundleError, export_bundle
    from slidebank.bundles.schemas import SchemasMissing

    node = open_node(home)
    try:
        report = export_bundle(node, dataset, to, operator())
    except (BundleError, SchemasMissing) as error:
        fail(str(error), 1)
    finally:
        node.close()
    if as_json:
        print_json({"folder": str(report.folder), "images": report.images, "files": report.files,
                    "bytes": report.bytes})
    else:
        console.print(f"{report.folder}: {report.images} image(s), {report.files} file(s), {report.bytes} bytes; "
                      "valid against the MetaFleX XSDs")
