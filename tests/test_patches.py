"""Training patches (`slidebank.patches`): sampling, labels from annotations, PyTorch datasets and
WebDataset export, on a real server with a granted and an ungranted reader."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon, box

from conftest import json_lines, run_cli, running_server
from databases import open_node
from slidebank.client import Client
from slidebank.slides.reader import StoredSlide
from slidebank.slides.stored import open_stored_slide

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from slidebank.patches import PatchDataset, PatchStream, Sampling, SamplingError  # noqa: E402

PEOPLE = {"alice": "researcher", "bob": "researcher", "dac": "dac_member", "steward": "data_steward"}
SHAPES = {  # level-0 polygons of the 3000 x 2400 slide, by class
    "Tumor": [[(500, 400), (1500, 400), (1500, 1200), (500, 1200)], [(1400, 1000), (2000, 1000), (1700, 1600)]],
    "Stroma": [[(1600, 1300), (2600, 1300), (2600, 2200), (1600, 2200)]],
    "Necrosis": [[(100, 100), (300, 100), (300, 300), (100, 300)]],
}


@dataclass
class Site:
    base: str
    home: Path
    slide: str
    tokens: dict[str, str]
    grant: str

    def client(self, who: str = "alice") -> Client:
        return Client(self.base, self.tokens[who], progress=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide) -> Iterator[Site]:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("patches")
    home = folder / "node"
    run_cli("init", home=home, check=True)
    for name, role in PEOPLE.items():
        run_cli("users", "add", name, "--role", role, home=home, check=True)
    run_cli("datasets", "create", "restricted", "--policy", "Apply to the DAC", "--committee", "dac",
            "--steward", "steward", home=home, check=True)
    [outcome] = json_lines(run_cli("ingest", str(aperio_slide.path), "--dataset", "restricted", "--json",
                                   home=home, check=True).stdout)  # with its QC: the tissue mask
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                 "properties": {"classification": {"name": name}}} for name, rings in SHAPES.items() for ring in rings]
    geojson = folder / "shapes.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    run_cli("annotations", "import", outcome["slide_id"], str(geojson), home=home, check=True)
    tokens = {name: run_cli("tokens", "create", name, home=home, check=True).stdout.strip().splitlines()[-1]
              for name in PEOPLE}
    request = run_cli("access", "request", "--user", "alice", "--dataset", "restricted", "--purpose", "Train",
                      home=home, check=True).stdout.strip()
    until = (date.today() + timedelta(days=30)).isoformat()
    grant = run_cli("access", "approve", request, "--expires", until, "--as", "dac", home=home, check=True).stdout.strip()
    with running_server(home) as base:
        yield Site(base, home, outcome["slide_id"], tokens, grant)


@pytest.fixture(scope="module")
def stored(site: Site) -> Iterator[StoredSlide]:
    node = open_node(site.home)
    reader = open_stored_slide(node.catalog, node.open_blob, site.slide)
    yield reader
    reader.close()
    node.close()


def brute_force_label(bounds: tuple[float, float, float, float], classes: list[str], min_overlap: float) -> str | None:
    """Every polygon of every class against the patch, no index, no merging shortcuts."""
    patch = box(*bounds)
    covered = {name: sum(Polygon(ring).intersection(patch).area for ring in SHAPES[name]) for name in classes}
    # the two Tumor polygons overlap a little: subtract their shared part once
    if "Tumor" in classes:
        first, second = (Polygon(ring) for ring in SHAPES["Tumor"])
        covered["Tumor"] -= first.intersection(second).intersection(patch).area
    best = max(classes, key=lambda name: covered[name])
    return best if covered[best] >= min_overlap * patch.area and covered[best] > 0 else None


def test_labels_agree_with_a_brute_force_shapely_check(site: Site) -> None:
    classes = ["Tumor", "Stroma"]
    with site.client() as bank:
        data = PatchDataset(bank, [site.slide], Sampling(size=128, stride=96, tissue=None), classes=classes,
                            min_overlap=0.4, keep_unlabelled=True)
    assert len(data) == 30 * 24  # (3000 - 128) // 96 + 1 columns, (2400 - 128) // 96 + 1 rows
    expected = [brute_force_label(patch.box(), classes, 0.4) for patch in data.patches]
    assert data.labels == expected
    assert {"Tumor", "Stroma", None} <= set(data.labels)
    assert all(data.target(i) == (classes.index(label) if label else -1) for i, label in enumerate(data.labels))


def test_pixels_are_the_stored_ones_and_resized_only_for_a_pixel_size(site: Site, stored: StoredSlide) -> None:
    with site.client() as bank:
        by_level = PatchDataset(bank, [site.slide], Sampling(size=200, level=1, random=6, seed=2, tissue=None))
        for index, patch in enumerate(by_level.patches):
            image, target = by_level[index]
            assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 200, 200) and target == -1
            expected = stored.read_region_array((patch.x, patch.y), 1, (200, 200))
            assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)
        mpp = stored.mpp[0] * 3  # a scale between stored levels: read finer, resized
        by_size = PatchDataset(bank, [site.slide], Sampling(size=64, mpp=mpp, random=3, seed=1, tissue=None))
        patch = by_size.patches[0]
        assert (patch.level, patch.read) == (1, 96)
        region = stored.read_region_array((patch.x, patch.y), 1, (96, 96))
        assert np.array_equal(by_size.image(0), np.asarray(Image.fromarray(region).resize((64, 64), Image.Resampling.BILINEAR)))


def test_sampling_is_deterministic_and_keeps_to_tissue(site: Site) -> None:
    with site.client() as bank:
        def draw(seed: int, tissue: float | None) -> list[tuple[int, int]]:
            data = PatchDataset(bank, [site.slide], Sampling(size=128, random=40, seed=seed, tissue=tissue))
            return [(p.x, p.y) for p in data.patches]

        assert draw(3, 0.5) == draw(3, 0.5) != draw(4, 0.5)
        grid_all = PatchDataset(bank, [site.slide], Sampling(size=128, tissue=None))
        grid_tissue = PatchDataset(bank, [site.slide], Sampling(size=128, tissue=0.9))
        assert 0 < len(grid_tissue) < len(grid_all)
        mask_png = np.asarray(bank.heatmap(site.slide, "tissue"))[..., 3] > 0
        extent = next(h for h in bank.heatmaps(site.slide) if h["name"] == "tissue")["extent"]
        for patch in grid_tissue.patches:  # every patch kept is over tissue, by the mask itself
            cx, cy = extent[0] / mask_png.shape[1], extent[1] / mask_png.shape[0]
            rows = slice(int(patch.y / cy), int(np.ceil((patch.y + 128) / cy)))
            cell = mask_png[rows, int(patch.x / cx):int(np.ceil((patch.x + 128) / cx))]
            assert cell.mean() >= 0.9
        with pytest.raises(SamplingError):
            Sampling(size=64, level=0, mpp=0.5)


def test_a_dataloader_with_two_workers_reads_every_patch_once(site: Site) -> None:
    with site.client() as bank:
        data = PatchDataset(bank, [site.slide], Sampling(size=96, random=24, seed=5, tissue=None),
                            classes=["Tumor", "Stroma", "Necrosis"], keep_unlabelled=True)
        stream = PatchStream(data, shuffle=True, epoch=1)
        seen = []
        for images, targets in DataLoader(stream, batch_size=5, num_workers=2):
            assert images.shape[1:] == (3, 96, 96)
            seen += [(int(image.sum()), int(target)) for image, target in zip(images, targets, strict=True)]
        expected = [(int(data[i][0].sum()), data.target(i)) for i in range(len(data))]
        assert sorted(seen) == sorted(expected)
        shuffled = DataLoader(data, batch_size=8, num_workers=2, shuffle=True, generator=torch.Generator().manual_seed(0))
        assert sum(len(batch[1]) for batch in shuffled) == len(data)
        assert PatchStream(data, epoch=1).order() == stream.order() != PatchStream(data, epoch=2).order()


def export(site: Site, who: str, to: Path, *extra: str) -> object:
    return run_cli("patches", "export", "--as", who, "--dataset", "restricted", "--to", str(to), "--size", "128",
                   "--stride", "256", "--class", "Tumor", "--class", "Stroma", "--shard-size", "4", "--json", *extra,
                   home=site.home)


def test_export_writes_webdataset_shards_with_provenance_and_resumes(site: Site, tmp_path: Path) -> None:
    to = tmp_path / "export"
    done = export(site, "alice", to)
    assert done.returncode == 0, done.stderr
    summary = json_lines(done.stdout)[0]
    manifest = json.loads((to / "manifest.json").read_text())
    assert summary["patches"] == sum(s["patches"] for s in manifest["shards"]) > 4
    [run] = manifest["runs"]
    assert run["grants"] == {"restricted": site.grant} and run["by"] == "alice"
    assert len(manifest["parameters"]["index_sha256"]) == 64
    [slide] = manifest["slides"]
    assert slide["slide_id"] == site.slide and slide["files"] and all(len(f["sha256"]) == 64 for f in slide["files"])
    with site.client() as bank:
        data = PatchDataset(bank, [site.slide], Sampling(size=128, stride=256), classes=["Tumor", "Stroma"])
        with tarfile.open(to / "shard-000000.tar") as shard:
            names = shard.getnames()
            assert names[:2] == ["000000000.png", "000000000.json"]
            labels = json.loads(shard.extractfile("000000000.json").read())  # type: ignore[union-attr]
            pixels = np.asarray(Image.open(io.BytesIO(shard.extractfile("000000000.png").read())))  # type: ignore[union-attr]
        assert labels["class"] == data.labels[0] and labels["slide_id"] == site.slide
        assert np.array_equal(pixels, data.image(0))
    digests = [s["sha256"] for s in manifest["shards"]]
    (to / manifest["shards"][-1]["name"]).unlink()  # an interrupted export: a shard missing, one damaged
    (to / manifest["shards"][0]["name"]).write_bytes(b"damaged")
    again = export(site, "alice", to)
    assert again.returncode == 0, again.stderr
    resumed = json.loads((to / "manifest.json").read_text())
    assert [s["sha256"] for s in resumed["shards"]] == digests and len(resumed["runs"]) == 2
    assert resumed["runs"][1]["shards_written"] == [manifest["shards"][0]["name"], manifest["shards"][-1]["name"]]
    other = export(site, "alice", to, "--seed", "9", "--random", "3")
    assert other.returncode != 0 and "other patches" in " ".join((other.stdout + other.stderr).split())


def test_export_needs_a_grant_and_is_audited(site: Site, tmp_path: Path) -> None:
    refused = export(site, "steward", tmp_path / "steward")  # may read the dataset, holds no grant
    assert refused.returncode != 0 and "needs a grant" in " ".join((refused.stdout + refused.stderr).split())
    assert not (tmp_path / "steward" / "manifest.json").exists()
    stranger = run_cli("patches", "export", "--as", "bob", "--slide", site.slide, "--to", str(tmp_path / "bob"),
                       "--no-tissue", home=site.home)
    assert stranger.returncode != 0 and "may not read it" in " ".join((stranger.stdout + stranger.stderr).split())
    export(site, "alice", tmp_path / "alice")
    entries = json_lines(run_cli("audit", "show", "--json", home=site.home, check=True).stdout)
    exports = [e for e in entries if e["action"] == "patches.export"]
    assert exports and all(e["actor"] == "alice" and e["grant"] == site.grant and e["dataset"] == "restricted"
                           for e in exports)
