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


@bundle_app.command("import")
def import_(
    folder: Annotated[Path, typer.Argument(help="The bundle's DATASET_<name>/ folder")],
    dataset: Annotated[str | None, typer.Option(help="Import under this dataset name instead")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Check a submission bundle against the MetaFleX XSDs, its references and checksums, then store it:
    images through the ingest pipeline, the sample graph, observations and annotations. A refused bundle
    leaves nothing behind; each problem is shown with its file, line and element."""
    from slidebank.access.principal import operator
    from slidebank.bundles.importer import BundleInvalid, import_bundle
    from slidebank.bundles.schemas import SchemasMissing

    if not folder.is_dir():
        fail(f"{folder}: no such folder")
    node = open_node(home)
    try:
        report = import_bundle(node, folder, operator(), dataset)
    except (BundleInvalid, SchemasMissing) as error:
        fail(str(error), 1)
    finally:
        node.close()
    if as_json:
        print_json({"dataset": report.dataset, "images": report.images, "observations": report.observations,
                    "annotations": report.annotations})
    else:
        console.print(f"dataset {report.dataset}: {report.images} image(s), {report.observations} observation(s), "
                      f"{report.annotations} annotation file(s) imported")
