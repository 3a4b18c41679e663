"""`slidebank synth` and `demo-data`: synthetic slides with real vendor layouts and fake PHI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, cast

import typer

from slidebank.cli.common import fail


def register_sample_commands(app: typer.Typer) -> None:
    app.command()(synth)
    app.command("demo-data")(demo_data)


def synth(
    out: Annotated[Path, typer.Argument(help="File to write (.svs or .tiff).")],
    width: Annotated[int, typer.Option(min=1)] = 8192,
    height: Annotated[int, typer.Option(min=1)] = 8192,
    vendor: Annotated[str, typer.Option(help="aperio or generic")] = "aperio",
    label_text: Annotated[Optional[str], typer.Option(help="Fake PHI printed on the label.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    stain: Annotated[str, typer.Option(help="HE or IHC")] = "HE",
) -> None:
    """Generate a synthetic H&E-like slide with a real pyramid and a label carrying fake PHI."""
    from slidebank.synth import write_synthetic_slide
    from slidebank.synth.layout import Vendor
    from slidebank.synth.tissue import Stain

    if vendor not in ("aperio", "generic"):
        fail("--vendor must be aperio or generic")
    if stain not in ("HE", "IHC"):
        fail("--stain must be HE or IHC")
    slide = write_synthetic_slide(out, width, height, vendor=cast(Vendor, vendor), label_text=label_text, seed=seed,
                                  stain=cast(Stain, stain))
    typer.echo(str(slide.path))


def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder for the sample slides and their sidecar.")],
    size: Annotated[int, typer.Option(help="Level-0 side of each slide in pixels.")] = 6000,
) -> None:
    """Generate the demo's sample slides (human and animal, several stains) and metadata.csv."""
    from slidebank.synth.demo import write_demo_collection

    sidecar = write_demo_collection(out, size)
    typer.echo(str(sidecar))
