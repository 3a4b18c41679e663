"""`slidebank patches export`: training patches of slides a user may export, written as WebDataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slidebank.cli.common import HomeOption, JsonOption, console, fail, print_json

patches_app = typer.Typer(help="Training patches: export them as WebDataset shards.", no_args_is_help=True)


@patches_app.command("export")
def export(
    to: Annotated[Path, typer.Option("--to", help="Folder of the shards and manifest (resumes an export there)")],
    as_user: Annotated[Optional[str], typer.Option("--as", help="Export with this user's grants (local node)")] = None,
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", help="Slides of this dataset")] = None,
    slide: Annotated[Optional[list[str]], typer.Option("--slide", help="This slide")] = None,
    where: Annotated[Optional[str], typer.Option(help="Search condition, e.g. 'qc.blur_fraction < 0.05'")] = None,
    text: Annotated[Optional[str], typer.Option(help="Free-text search")] = None,
    output_format: Annotated[str, typer.Option("--format", help="webdataset (tar shards of PNG + JSON)")] = "webdataset",
    size: Annotated[int, typer.Option(help="Patch size in pixels")] = 224,
    level: Annotated[Optional[int], typer.Option(help="Stored level to cut from (default 0)")] = None,
    mpp: Annotated[Optional[float], typer.Option(help="µm per pixel instead of a level")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Grid step in patch pixels (default: the size)")] = None,
    random: Annotated[Optional[int], typer.Option(help="Random patches per slide instead of a grid")] = None,
    seed: Annotated[int, typer.Option(help="Seed of random sampling")] = 0,
    tissue: Annotated[float, typer.Option(help="Least tissue fraction of a patch (QC mask)")] = 0.5,
    no_tissue: Annotated[bool, typer.Option("--no-tissue", help="Ignore the QC tissue mask")] = False,
    classes: Annotated[Optional[list[str]], typer.Option("--class", help="Label patches by these annotation classes")] = None,
    min_overlap: Annotated[float, typer.Option(help="Fraction of a patch a class must cover")] = 0.5,
    keep_unlabelled: Annotated[bool, typer.Option(help="Keep patches no class covers (target -1)")] = False,
    shard_size: Annotated[int, typer.Option(min=1, help="Patches per shard")] = 1000,
    url: Annotated[Optional[str], typer.Option(help="A node's URL instead of the local node")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="SLIDEBANK_TOKEN", help="API token for --url")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Export patches of the slides found (under the user's grants: refused without a grant for each
    controlled dataset; audited) with their labels and a manifest of where each came from."""
    if output_format != FORMAT_NAME:
        fail(f"unknown format {output_format!r}: only {FORMAT_NAME}")
    if url is None and as_user is None:
        fail("say whose grants the export uses: --as USER (or --url and --token for a node elsewhere)")
    try:
        from slidebank.client import Client, SlidebankError
        from slidebank.patches import ExportError, PatchDataset, Sampling, SamplingError, export_webdataset
    except ImportError as error:
        fail(f"patch export needs PyTorch ({error}): pip install 'slidebank[train]'")
    try:
        sampling = Sampling(size=size, level=level, mpp=mpp, stride=stride, random=random, seed=seed,
                            tissue=None if no_tissue else tissue)
        client = Client(url, token) if url else Client.local(home, user=as_user)
    except (SamplingError, SlidebankError) as error:
        fail(str(error))
    with client:
        try:
            chosen = list(slide or [])
            if dataset or where or text or not slide:
                search = {k: v for k, v in (("where", where), ("text", text)) if v}
                names: list[str | None] = list(dataset) if dataset else [None]
                for name in names:
                    chosen += [s["slide_id"] for s in client.slides(dataset=name, **search)]
            chosen = list(dict.fromkeys(chosen))
            if not chosen:
                fail("no slide found that this user may read")
            data = PatchDataset(client, chosen, sampling, classes=classes, min_overlap=min_overlap,
                                keep_unlabelled=keep_unlabelled)
            manifest = export_webdataset(client, data, to, shard_size=shard_size,
                                         on_shard=lambda done, total: console.print(f"shard {done}/{total}"))
        except (SamplingError, SlidebankError, ExportError) as error:
            fail(str(error))
    summary = {"to": str(to), "export_id": manifest["export_id"], "slides": len(chosen), "patches": len(data),
               "shards": len(manifest["shards"]), "grants": manifest["runs"][-1]["grants"]}
    if as_json:
        print_json(summary)
    else:
        console.print(f"{len(data)} patches of {len(chosen)} slides in {len(manifest['shards'])} shards in {to} "
                      f"(export {manifest['export_id']})")


FORMAT_NAME = "webdataset"
