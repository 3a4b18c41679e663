"""Annotations: QuPath GeoJSON round trip, refusals, viewport index vs brute force, API rights."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from shapely.geometry import box, shape

from conftest import json_lines, open_dataset, run_cli, running_server
from databases import open_node

# What QuPath 0.5 writes ("Export objects as GeoJSON", pretty-printed, FeatureCollection): ids are
# UUIDs, classification carries name and RGB colour, objectType says annotation/detection.
QUPATH_EXPORT = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "id": "7f3a2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
         "geometry": {"type": "Polygon", "coordinates": [
             [[100, 100], [1900, 100], [1900, 1500], [100, 1500], [100, 100]],
             [[400, 400], [800, 400], [800, 700], [400, 700], [400, 400]]]},
         "properties": {"objectType": "annotation", "name": "tumour region with a hole",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]}, "isLocked": False}},
        {"type": "Feature", "id": "8e3a2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[2000, 200], [2200, 200], [2200, 400], [2000, 400], [2000, 200]]],
             [[[2300, 200], [2500, 200], [2500, 400], [2300, 400], [2300, 200]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [150, 200, 150]}}},
        {"type": "Feature", "id": "9d3a2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
         "geometry": {"type": "Polygon", "coordinates": [[[50.5, 60.25], [250.5, 60.25], [250.5, 160.25],
                                                           [50.5, 160.25], [50.5, 60.25]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Area µm^2": 1250.5}}},
        {"type": "Feature", "id": "ad3a2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
         "geometry": {"type": "MultiPoint", "coordinates": [[1000, 1000], [1010.5, 1020]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Mitosis", "colorRGB": -65536}}},
        {"type": "Feature", "id": "bd3a2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
         "geometry": {"type": "LineString", "coordinates": [[0, 0], [2999, 2399]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "id": "cd3a2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
         "geometry": {"type": "Point", "coordinates": [1500, 1200]},
         "properties": {"objectType": "detection", "classification": {"name": "Lymphocyte", "color": [0, 0, 255]}}},
    ],
}


@dataclass
class Site:
    base: str
    home: Path
    restricted: str
    public: str
    tokens: dict[str, str]

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[Site]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("annotations") / "node"
    run_cli("init", home=home, check=True)
    for name, role in (("alice", "researcher"), ("bob", "researcher"), ("steward", "data_steward"),
                       ("dac", "dac_member")):
        run_cli("users", "add", name, "--role", role, home=home, check=True)
    run_cli("datasets", "create", "restricted", "--policy", "Apply to the DAC", "--duo", "DUO:0000007",
            "--committee", "dac", "--steward", "steward", home=home, check=True)
    open_dataset(home, "public")
    [restricted] = json_lines(run_cli("ingest", str(aperio_slide.path), "--dataset", "restricted", "--json",
                                      "--no-qc", home=home, check=True).stdout)
    [public] = json_lines(run_cli("ingest", str(generic_slide.path), "--dataset", "public", "--json", "--no-qc",
                                  home=home, check=True).stdout)
    request = run_cli("access", "request", "--user", "alice", "--dataset", "restricted", "--purpose", "Annotate",
                      home=home, check=True).stdout.strip()
    until = (date.today() + timedelta(days=30)).isoformat()
    run_cli("access", "approve", request, "--expires", until, "--as", "dac", home=home, check=True)
    tokens = {name: run_cli("tokens", "create", name, home=home, check=True).stdout.strip().splitlines()[-1]
              for name in ("alice", "bob", "steward", "admin")}
    with running_server(home, "--no-jobs", env={"SLIDEBANK_PRINCIPAL_CACHE_SECONDS": "0.2"}) as base:
        yield Site(base, home, restricted["slide_id"], public["slide_id"], tokens)


def test_qupath_geojson_round_trips_through_the_cli(site: Site, tmp_path: Path) -> None:
    source = tmp_path / "qupath.geojson"
    source.write_text(json.dumps(QUPATH_EXPORT, indent=2))
    imported = json.loads(run_cli("annotations", "import", site.restricted, str(source), "--json",
                                  home=site.home, check=True).stdout)
    assert imported["imported"] == 6 and imported["ids"] == [f["id"] for f in QUPATH_EXPORT["features"]]
    exported = tmp_path / "out.geojson"
    run_cli("annotations", "export", site.restricted, "--to", str(exported), home=site.home, check=True)
    assert json.loads(exported.read_text()) == QUPATH_EXPORT  # geometry, ids, properties: all as QuPath wrote

    run_cli("annotations", "import", site.restricted, str(source), home=site.home, check=True)  # again: no copies
    listed = json.loads(run_cli("annotations", "list", site.restricted, "--json", home=site.home, check=True).stdout)
    assert listed["total"] == 6
    classes = {c["name"]: (c["color"], c["count"]) for c in listed["classes"]}
    assert classes == {None: (None, 1), "Lymphocyte": ("#0000ff", 1), "Mitosis": ("#ff0000", 1),
                       "Stroma": ("#96c896", 1), "Tumor": ("#c80000", 2)}
    holed = next(f for f in listed["features"] if f["id"] == QUPATH_EXPORT["features"][0]["id"])
    assert holed["slidebank"]["bbox"] == [100, 100, 1900, 1500] and holed["slidebank"]["author"] == "operator"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not usable GeoJSON"),
    (json.dumps({"type": "Topology"}), "unsupported GeoJSON type 'Topology'"),
    (json.dumps({"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": []}}),
     "unsupported geometry 'GeometryCollection'"),
    (json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}),
     "malformed Polygon"),
    (json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1e300, 0]}}),
     "finite level-0 pixel positions"),
    (json.dumps([QUPATH_EXPORT["features"][2], {"type": "Feature", "geometry": None}]), "feature 1:"),
])
def test_bad_geojson_is_refused_and_nothing_is_stored(site: Site, tmp_path: Path, content: str, message: str) -> None:
    before = json.loads(run_cli("annotations", "list", site.public, "--json", home=site.home, check=True).stdout)
    bad = tmp_path / "bad.geojson"
    bad.write_text(content)
    result = run_cli("annotations", "import", site.public, str(bad), home=site.home)
    assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr
    after = json.loads(run_cli("annotations", "list", site.public, "--json", home=site.home, check=True).stdout)
    assert after["total"] == before["total"]
    unknown = run_cli("annotations", "import", "no-such-slide", str(tmp_path / "missing.geojson"), home=site.home)
    assert unknown.returncode == 2 and "cannot read" in unknown.stderr


def random_features(count: int, seed: int) -> list[dict]:
    """Small polygons (nuclei), medium rectangles, a few huge outlines and points, over 3000 x 2400."""
    rng = random.Random(seed)
    features = []
    for index in range(count):
        kind = index % 10
        x, y = rng.uniform(0, 3000), rng.uniform(0, 2400)
        if kind == 0:
            geometry = {"type": "Point", "coordinates": [x, y]}
        else:
            size = rng.choice([4, 12, 40, 150, 600]) if kind < 9 else rng.uniform(1500, 3000)
            geometry = box(x, y, x + size, y + size * rng.uniform(0.3, 1.5)).__geo_interface__
            geometry = {"type": "Polygon", "coordinates": [[list(p) for p in geometry["coordinates"][0]]]}
        name = rng.choice(["A", "B", None])
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": {"classification": {"name": name}} if name else {}})
    return features


def test_viewport_queries_and_density_agree_with_a_brute_force_scan(site: Site) -> None:
    from slidebank.access.principal import operator
    from slidebank.annotations.geojson import parse_document
    from slidebank.annotations.service import Viewport

    node = open_node(site.home)
    try:
        slide = node.catalog.list_slides()[0]["slide_id"]
        features = random_features(3000, seed=5)
        node.annotations.add(slide, parse_document(features), operator(), "tester")
        everything, total = node.annotations.query(slide, limit=100_000)
        shapes = {f["id"]: shape(f["geometry"]) for f in everything}
        rng = random.Random(9)
        for _ in range(40):
            x0, y0 = rng.uniform(-200, 3000), rng.uniform(-200, 2400)
            x1, y1 = x0 + rng.uniform(1, 800), y0 + rng.uniform(1, 800)
            found, count = node.annotations.query(slide, Viewport(x0, y0, x1, y1), limit=100_000)
            view = box(x0, y0, x1, y1)
            expected = {i for i, s in shapes.items() if box(*s.bounds).intersects(view)}
            assert {f["id"] for f in found} == expected and count == len(expected)
            only_a, _ = node.annotations.query(slide, Viewport(x0, y0, x1, y1), classes=["A"], limit=100_000)
            assert {f["id"] for f in only_a} == {f["id"] for f in found if f["slidebank"]["class"] == "A"}
        whole = Viewport(0, 0, 3000, 2400)
        density = node.annotations.density(slide, whole, 30, 24)
        centred = [f for f in everything if 0 <= (f["slidebank"]["bbox"][0] + f["slidebank"]["bbox"][2]) / 2 < 3000
                   and 0 <= (f["slidebank"]["bbox"][1] + f["slidebank"]["bbox"][3]) / 2 < 2400]
        assert sum(sum(map(sum, c["counts"])) for c in density["classes"]) == len(centred)
        assert {c["name"] for c in density["classes"]} == {f["slidebank"]["class"] for f in centred}
    finally:
        node.close()


def test_annotation_rights_are_separate_from_slide_rights(site: Site) -> None:
    drawn = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [90, 10], [90, 60],
                                                                                 [10, 60], [10, 10]]]},
             "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}}
    with site.client("alice") as alice, site.client("bob") as bob, site.client(None) as anonymous, \
            site.client("steward") as steward, site.client("admin") as admin:
        # Read access is enough to annotate (alice has a grant, no write right on the slide).
        created = alice.post(f"/api/slides/{site.restricted}/annotations", json=drawn)
        assert created.status_code == 201, created.text
        [alices] = created.json()["ids"]
        # Without read access the slide and its annotations do not exist.
        assert bob.get(f"/api/slides/{site.restricted}/annotations").status_code == 404
        assert bob.post(f"/api/slides/{site.restricted}/annotations", json=drawn).status_code == 404
        assert bob.delete(f"/api/slides/{site.restricted}/annotations/{alices}").status_code == 404
        # Anonymous callers read the open dataset's annotations but cannot write.
        assert anonymous.get(f"/api/slides/{site.public}/annotations").status_code == 200
        assert anonymous.post(f"/api/slides/{site.public}/annotations", json=drawn).status_code == 401
        [bobs] = bob.post(f"/api/slides/{site.public}/annotations", json=drawn).json()["ids"]
        # Only the author, a steward of the dataset or an administrator changes a feature.
        assert alice.put(f"/api/slides/{site.public}/annotations/{bobs}", json={"class_name": "X"}).status_code == 403
        assert alice.delete(f"/api/slides/{site.public}/annotations/{bobs}").status_code == 403
        changed = bob.put(f"/api/slides/{site.public}/annotations/{bobs}", json={"class_name": "Stroma",
                                                                               "color": "#00ff00"})
        assert changed.status_code == 200 and changed.json()["properties"]["classification"] == {
            "name": "Stroma", "color": [0, 255, 0]}
        assert admin.delete(f"/api/slides/{site.public}/annotations/{bobs}").status_code == 204
        assert steward.put(f"/api/slides/{site.restricted}/annotations/{alices}",
                           json={"class_name": "Necrosis"}).json()["slidebank"]["class"] == "Necrosis"
        # Viewport query, density and export as the viewer and QuPath use them.
        view = alice.get(f"/api/slides/{site.restricted}/annotations", params={"bbox": "0,0,50,50"}).json()
        assert alices in {f["id"] for f in view["features"]}
        assert alice.get(f"/api/slides/{site.restricted}/annotations", params={"bbox": "95,95,99,99"}).json()[
            "total"] == 0 or alices not in {f["id"] for f in alice.get(
                f"/api/slides/{site.restricted}/annotations", params={"bbox": "95,95,99,99"}).json()["features"]}
        assert alice.get(f"/api/slides/{site.restricted}/annotations", params={"bbox": "9,9,1"}).status_code == 400
        density = alice.get(f"/api/slides/{site.restricted}/annotations/density",
                            params={"bbox": "0,0,3000,2400", "columns": 10, "rows": 8}).json()
        assert sum(sum(map(sum, c["counts"])) for c in density["classes"]) >= 1
        exported = alice.get(f"/api/slides/{site.restricted}/annotations.geojson")
        assert exported.headers["content-type"].startswith("application/geo+json")
        assert alices in {f["id"] for f in exported.json()["features"]}
        bad = alice.post(f"/api/slides/{site.restricted}/annotations", json={"type": "Feature", "geometry": None})
        assert bad.status_code == 400 and "unsupported geometry" in bad.json()["detail"]
    events = json_lines(run_cli("audit", "show", "--json", home=site.home, check=True).stdout)
    assert {"annotations.create", "annotations.update", "annotations.delete"} <= {e["action"] for e in events}
