"""Patch datasets written out as WebDataset shards: tar files of `KEY.png` + `KEY.json`, with a
manifest that says where every patch came from.

The manifest (`manifest.json`) holds the provenance a reviewer of a model asks for: the export's id
at the node, the parameters with a digest of the patch list and labels, every slide with the
digests of its stored files, each shard with its patch count and SHA-256, and every run (its id at
the node, who, the grant covering each dataset, the shards it wrote). Shards are written in a fixed
order (shard i holds patches [i·N, (i+1)·N)), streamed to a temporary name and renamed when
complete, and the manifest is rewritten after each: an interrupted export started again with the same
patches keeps the shards it already has (checked against their digests) and writes the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slidebank.client import Client
from slidebank.patches.dataset import PatchDataset

MANIFEST = "manifest.json"
READ_BATCH = 32  # patches read together (their frames in a request or two)
FORMAT = "webdataset"


class ExportError(ValueError):
    """An export that cannot go on as asked (e.g. another export's folder)."""


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless, and quick to write (training reads each patch many times, writes it once)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(content), 0, 0o644
    archive.addfile(info, io.BytesIO(content))


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def index_digest(data: PatchDataset) -> str:
    """SHA-256 of the patch list with its labels: a resumed export must cut the very same patches
    (QC masks and annotations may have changed since, with the same parameters)."""
    listed = [(p.slide_id, p.x, p.y, p.level, p.read, p.size, label) for p, label in zip(data.patches, data.labels, strict=True)]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def _write_shard(data: PatchDataset, indices: range, path: Path) -> str:
    """Patches `indices` as a tar at `path` (complete or absent); its SHA-256."""
    temporary = path.with_name(path.name + ".partial")
    with tarfile.open(temporary, mode="w", format=tarfile.USTAR_FORMAT) as archive:  # streamed, never whole in memory
        for start in range(indices.start, indices.stop, READ_BATCH):
            batch = range(start, min(start + READ_BATCH, indices.stop))
            for index, pixels in zip(batch, data.images(list(batch)), strict=True):
                patch = data.patches[index]
                key = f"{index:09d}"
                _add(archive, f"{key}.png", png_bytes(pixels))
                labels = {"slide_id": patch.slide_id, "x": patch.x, "y": patch.y, "level": patch.level,
                          "extent": patch.extent, "size": patch.size, "class": data.labels[index],
                          "target": data.target(index)}
                _add(archive, f"{key}.json", json.dumps(labels).encode())
    digest = _digest(temporary)
    os.replace(temporary, path)
    return digest


def export_webdataset(client: Client, data: PatchDataset, to: Path, *, shard_size: int = 1000,
                      on_shard: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write `data` to `to` as shards; returns the manifest. Declares the export to the node first
    (refused without a grant for every controlled dataset; audited), at every run of a resumed one."""
    to.mkdir(parents=True, exist_ok=True)
    parameters = {"sampling": data.sampling.as_dict(), "classes": data.classes, "patches": len(data),
                  "shard_size": shard_size, "format": FORMAT, "index_sha256": index_digest(data)}
    manifest_path = to / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if previous is not None and (previous.get("parameters") != parameters or previous.get("slide_ids") != data.slides):
        raise ExportError(f"{to} holds an export of other patches (parameters, slides, or the masks and annotations "
                          "they were cut by have changed): choose another folder")
    started = client.start_export(data.slides, parameters)
    run = {"export_id": started["export_id"], "grants": started["grants"], "by": client.me()["name"],
           "started_at": datetime.now(UTC).isoformat(), "shards_written": []}
    manifest = previous or {
        "format": FORMAT,
        "export_id": started["export_id"],
        "parameters": parameters,
        "slide_ids": data.slides,
        "slides": [_provenance(client, slide) for slide in data.slides],
        "shards": [],
        "runs": [],
    }
    manifest["runs"].append(run)  # who wrote which shards under which grants, run by run
    done = {shard["name"]: shard for shard in manifest["shards"]
            if (to / shard["name"]).is_file() and _digest(to / shard["name"]) == shard["sha256"]}
    manifest["shards"] = []
    starts = range(0, len(data), shard_size)
    for number, start in enumerate(starts):
        name = f"shard-{number:06d}.tar"
        if name in done:
            manifest["shards"].append(done[name])
            continue
        indices = range(start, min(start + shard_size, len(data)))
        manifest["shards"].append({"name": name, "patches": len(indices), "sha256": _write_shard(data, indices, to / name)})
        run["shards_written"].append(name)
        _write_atomically(manifest_path, json.dumps(manifest, indent=1).encode())
        if on_shard:
            on_shard(number + 1, len(starts))
    run["finished_at"] = datetime.now(UTC).isoformat()
    _write_atomically(manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


def _provenance(client: Client, slide_id: str) -> dict[str, Any]:
    """A slide as the manifest names it: id, dataset and the digests of its stored files."""
    described = client.slide(slide_id)
    return {"slide_id": slide_id, "dataset": described.get("dataset"), "source_sha256": described.get("source_sha256"),
            "files": [{key: f.get(key) for key in ("sha256", "role", "size") if key in f}
                      for f in described.get("files", [])]}
