"""The peer most labs run: Flask + openslide.deepzoom.DeepZoomGenerator under gunicorn.

Modelled on openslide-python's examples/deepzoom/deepzoom_server.py (one slide, JPEG tiles
re-encoded on every request), with the tile geometry set to Slidebank's (tile size of the stored
pyramid, no overlap) so both serve the same tile paths. Run by bench/tiles.py:

    SLIDE=x.svs TILE_SIZE=512 gunicorn -w 2 --chdir bench openslide_dz_server:app
"""

from __future__ import annotations

import io
import os

import openslide
from flask import Flask, Response, abort
from openslide.deepzoom import DeepZoomGenerator

app = Flask(__name__)
slide = openslide.OpenSlide(os.environ["SLIDE"])
deepzoom = DeepZoomGenerator(slide, tile_size=int(os.environ.get("TILE_SIZE", "254")), overlap=0, limit_bounds=False)
QUALITY = 75  # the example server's default


@app.route("/slides/<name>.dzi")
def descriptor(name: str) -> Response:
    return Response(deepzoom.get_dzi("jpeg"), mimetype="application/xml")


@app.route("/slides/<name>_files/<int:level>/<int:col>_<int:row>.<fmt>")
def tile(name: str, level: int, col: int, row: int, fmt: str) -> Response:
    if fmt not in ("jpeg", "png"):
        abort(404)
    try:
        image = deepzoom.get_tile(level, (col, row))
    except ValueError:
        abort(404)
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=QUALITY)
    return Response(buffer.getvalue(), mimetype=f"image/{fmt}")
