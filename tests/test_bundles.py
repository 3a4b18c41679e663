"""BIGPICTURE submission bundles: export writes every MetaFleX object type, valid against the XSDs
(checked here with lxml directly, not through Slidebank's own validation), with checksums that match
the files and references that resolve inside the bundle."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from lxml import etree

from conftest import REPO, json_lines, run_cli
from databases import open_node
from slidebank.slides.stored import open_stored_slide

XSD = Path(os.environ.get("SLIDEBANK_METAFLEX_XSD", REPO.parent / "shared" / "bigpicture-metaflex"))
SCHEMA_OF = {
    "METADATA/dataset.xml": "BP.dataset.xsd", "METADATA/policy.xml": "BP.policy.xsd",
    "METADATA/sample.xml": "BP.sample.xsd", "METADATA/staining.xml": "BP.staining.xsd",
    "METADATA/image.xml": "BP.image.xsd", "METADATA/annotation.xml": "BP.annotation.xsd",
    "METADATA/observation.xml": "BP.observation.xsd", "METADATA/observer.xml": "BP.observer.xsd",
    "LANDING_PAGE/landing_page.xml": "BP.landing_page.xsd", "PRIVATE/organisation.xml": "BP.organisation.xsd",
}
SQUARE = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [90, 10], [90, 90], [10, 90],
                                                                             [10, 10]]]},
          "properties": {"classification": {"name": "Tumor"}}}


@dataclass
class Exported:
    home: Path
    bundle: Path
    slides: dict[str, str]  # file name -> slide id


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[Exported]:  # noqa: ANN001
    if not (XSD / "BP.common.xsd").is_file():
        pytest.skip(f"the MetaFleX XSDs are not at {XSD}")
    folder = tmp_path_factory.mktemp("bundles")
    home = folder / "node"
    run_cli("init", home=home, check=True)
    run_cli("datasets", "create", "liver-study", "--policy", "Apply to the DAC", "--duo", "DUO:0000007",
            home=home, check=True)
    sidecar = folder / "meta.csv"
    sidecar.write_text(
        "file,subject,species,sex,age_at_extraction,case,specimen,anatomical_site,specimen_type,block,stain,diagnosis\n"
        f"{aperio_slide.path.name},PATIENT-1,human,female,P54Y,C1,S1,liver,biopsy,B1,H&E,hepatocellular carcinoma\n"
        f"{generic_slide.path.name},PATIENT-1,human,female,P54Y,C1,S1,liver,biopsy,B1,\"H&E;Ki-67\",\n")
    ingested = json_lines(run_cli("ingest", str(aperio_slide.path), str(generic_slide.path), "--dataset",
                                  "liver-study", "--metadata", str(sidecar), "--json", "--no-qc", home=home,
                                  check=True).stdout)
    slides = {Path(line["path"]).name: line["slide_id"] for line in ingested}
    drawn = folder / "drawn.geojson"
    drawn.write_text(json.dumps({"type": "FeatureCollection", "features": [SQUARE]}))
    run_cli("annotations", "import", slides[aperio_slide.path.name], str(drawn), home=home, check=True)
    env = {"SLIDEBANK_METAFLEX_XSD": str(XSD)}
    run_cli("bundle", "export", "liver-study", "--to", str(folder / "out"), home=home, check=True, env=env)
    yield Exported(home, folder / "out" / "DATASET_liver-study", slides)


def objects(bundle: Path) -> dict[str, set[str]]:
    """Element name -> aliases of the objects of that kind, over every XML file of the bundle."""
    found: dict[str, set[str]] = {}
    for relative in SCHEMA_OF:
        if (bundle / relative).is_file():
            for element in etree.parse(str(bundle / relative)).getroot():
                found.setdefault(element.tag, set()).add(element.get("alias"))
    return found


def test_every_xml_file_is_valid_against_the_metaflex_xsds(exported: Exported) -> None:
    present = {relative for relative in SCHEMA_OF if (exported.bundle / relative).is_file()}
    assert present >= set(SCHEMA_OF) - {"METADATA/observer.xml"}  # no observer recorded in this dataset
    for relative in present:
        schema = etree.XMLSchema(etree.parse(str(XSD / SCHEMA_OF[relative])))
        document = etree.parse(str(exported.bundle / relative))
        assert schema.validate(document), (relative, [str(e) for e in schema.error_log][:5])


def test_the_graph_is_complete_and_every_reference_resolves(exported: Exported) -> None:
    found = objects(exported.bundle)
    assert len(found["IMAGE"]) == 2 and set(exported.slides.values()) == found["IMAGE"]
    assert len(found["BIOLOGICAL_BEING"]) == 1 and len(found["SPECIMEN"]) == 1 and len(found["SLIDE"]) == 2
    assert found["STAINING"] == {"H&E", "H&E+Ki-67"}
    assert len(found["OBSERVATION"]) == 1 and len(found["ANNOTATION"]) == 1
    targets = {"BIOLOGICAL_BEING_REF": "BIOLOGICAL_BEING", "EXTRACTED_FROM_REF": "BIOLOGICAL_BEING",
               "PART_OF_CASE_REF": "CASE", "SAMPLED_FROM_REF": "SPECIMEN", "CREATED_FROM_REF": "BLOCK",
               "STAINING_INFORMATION_REF": "STAINING", "IMAGE_OF": "SLIDE", "IMAGE_REF": "IMAGE",
               "ANNOTATION_REF": "ANNOTATION", "OBSERVATION_REF": "OBSERVATION", "DATASET_REF": "DATASET"}
    for relative in SCHEMA_OF:
        if not (exported.bundle / relative).is_file():
            continue
        for element in etree.parse(str(exported.bundle / relative)).iter(*targets):
            assert element.get("alias") in found[targets[element.tag]], (relative, element.tag, element.get("alias"))
    sample = etree.parse(str(exported.bundle / "METADATA/sample.xml"))
    codes = {e.findtext("TAG"): e.findtext("VALUE/CODE") for e in sample.iter("CODE_ATTRIBUTE")}
    assert codes["animal_species"] and codes["anatomical_site"]  # coded, not only named
    diagnosis = etree.parse(str(exported.bundle / "METADATA/observation.xml")).findtext(".//FREETEXT")
    assert diagnosis == "hepatocellular carcinoma"


def test_files_match_their_checksums_and_are_the_stored_dicom(exported: Exported) -> None:
    listed = dict(reversed(line.split("  ", 1)) for line in
                  (exported.bundle / "CHECKSUMS.sha256").read_text().splitlines())
    files = {str(p.relative_to(exported.bundle)) for p in exported.bundle.rglob("*") if p.is_file()}
    assert set(listed) == files - {"CHECKSUMS.sha256"}
    for relative, digest in listed.items():
        assert hashlib.sha256((exported.bundle / relative).read_bytes()).hexdigest() == digest, relative
    image_xml = etree.parse(str(exported.bundle / "METADATA/image.xml"))
    for element in image_xml.iter("FILE"):
        assert listed[element.get("filename")] == element.get("checksum")
        dataset = pydicom.dcmread(exported.bundle / element.get("filename"), stop_before_pixels=True)
        assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6" and dataset.PatientIdentityRemoved == "YES"
    [annotations] = list((exported.bundle / "ANNOTATIONS").glob("*.geojson"))
    assert json.loads(annotations.read_text())["features"][0]["geometry"] == SQUARE["geometry"]


def test_an_existing_bundle_or_an_unknown_dataset_is_refused(exported: Exported, tmp_path: Path) -> None:
    env = {"SLIDEBANK_METAFLEX_XSD": str(XSD)}
    again = run_cli("bundle", "export", "liver-study", "--to", str(exported.bundle.parent), home=exported.home,
                    env=env)
    assert again.returncode == 1 and "exists" in again.stdout + again.stderr
    unknown = run_cli("bundle", "export", "nothing-here", "--to", str(tmp_path), home=exported.home, env=env)
    assert unknown.returncode == 1 and "no dataset" in unknown.stdout + unknown.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written
    audit = json_lines(run_cli("audit", "show", "--json", home=exported.home, check=True).stdout)
    assert [e["dataset"] for e in audit if e["action"] == "dataset.export"] == ["liver-study"]


def graph(bundle: Path) -> dict[str, Any]:
    """What must survive a round trip: aliases per kind, codes per object, statements, stainings."""
    found = objects(bundle)
    codes = set()
    for relative in ("METADATA/sample.xml", "METADATA/staining.xml", "METADATA/policy.xml"):
        for element in etree.parse(str(bundle / relative)).getroot():
            for code in element.iter("CODE_ATTRIBUTE"):
                codes.add((element.get("alias"), code.findtext("TAG"), code.findtext("VALUE/CODE"),
                           code.findtext("VALUE/SCHEME")))
    statements = {(e.get("alias"), e.findtext("STATEMENT/STATEMENT_TYPE"), e.findtext("STATEMENT/FREETEXT"))
                  for e in etree.parse(str(bundle / "METADATA/observation.xml")).getroot()}
    links = {(e.getparent().get("alias"), e.tag, e.get("alias"))
             for e in etree.parse(str(bundle / "METADATA/sample.xml")).getroot().iter("*") if e.tag.endswith("_REF")}
    return {"objects": {k: v for k, v in found.items() if k not in ("DATASET", "POLICY", "ORGANISATION")},
            "codes": codes, "statements": statements, "links": links}


def frame_digests(home: Path, slide_id: str) -> list[str]:
    """SHA-256 of every stored frame, level by level: the pixels as stored."""
    node = open_node(home)
    slide = open_stored_slide(node.catalog, node.open_blob, slide_id)
    try:
        digests = []
        for level in range(slide.level_count):
            columns, rows = slide.tile_grid(level)
            digest = hashlib.sha256()
            for row in range(rows):
                for column in range(columns):
                    digest.update(slide.read_encoded_tile(level, column, row, crop_to_level=False))
            digests.append(digest.hexdigest())
        return digests
    finally:
        slide.close()
        node.close()


OBSERVER_XML = """<?xml version='1.0' encoding='UTF-8'?>
<OBSERVER_SET><OBSERVER alias="pathologist-7"><OBSERVER_TYPE>Human</OBSERVER_TYPE><ATTRIBUTES>
<STRING_ATTRIBUTE><TAG>name</TAG><VALUE>Reader 7</VALUE></STRING_ATTRIBUTE></ATTRIBUTES></OBSERVER></OBSERVER_SET>
"""


def with_an_observer(exported: Exported, tmp_path: Path) -> Path:
    """The bundle with its diagnosis made by an observer (Slidebank records none of its own)."""
    copy = tmp_path / "DATASET_liver-study"
    shutil.copytree(exported.bundle, copy)
    (copy / "METADATA/observer.xml").write_text(OBSERVER_XML)
    observations = copy / "METADATA/observation.xml"
    document = etree.parse(str(observations))
    for observation in document.getroot():
        observation.find("STATEMENT").addprevious(etree.Element("OBSERVER_REF", alias="pathologist-7"))
    document.write(str(observations), xml_declaration=True, encoding="UTF-8")
    return copy


def test_a_bundle_round_trips_into_a_fresh_node(exported: Exported, tmp_path: Path) -> None:
    env = {"SLIDEBANK_METAFLEX_XSD": str(XSD)}
    fresh = tmp_path / "fresh"
    run_cli("init", home=fresh, check=True)
    bundle = with_an_observer(exported, tmp_path)
    report = json_lines(run_cli("bundle", "import", str(bundle), "--json", home=fresh, check=True,
                                env=env).stdout)[0]
    assert report == {"dataset": "liver-study", "images": 2, "observations": 1, "annotations": 1}
    run_cli("bundle", "export", "liver-study", "--to", str(tmp_path / "again"), home=fresh, check=True, env=env)
    again = tmp_path / "again" / "DATASET_liver-study"
    assert graph(again) == graph(bundle)
    assert objects(again)["OBSERVER"] == {"pathologist-7"}
    assert [e.get("alias") for e in etree.parse(str(again / "METADATA/observation.xml")).iter("OBSERVER_REF")] == [
        "pathologist-7"]
    for slide_id in exported.slides.values():  # same slide ids, same pixels (frames copied, never re-encoded)
        assert frame_digests(fresh, slide_id) == frame_digests(exported.home, slide_id)
    features = [json.loads(p.read_text())["features"] for p in sorted((again / "ANNOTATIONS").glob("*.geojson"))]
    assert [f["geometry"] for f in features[0]] == [SQUARE["geometry"]]
    policy = etree.parse(str(again / "METADATA/policy.xml"))
    assert [c.findtext("VALUE/CODE") for c in policy.iter("CODE_ATTRIBUTE")] == ["DUO:0000007"]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node that every refused bundle is offered to (and that must stay empty)."""
    home = tmp_path_factory.mktemp("receiver") / "node"
    run_cli("init", home=home, check=True)
    return home


def broken_copy(exported: Exported, tmp_path: Path, relative: str, change: Callable[[str], str]) -> Path:
    copy = tmp_path / "DATASET_liver-study"
    shutil.copytree(exported.bundle, copy)
    path = copy / relative
    path.write_text(change(path.read_text()))
    return copy


@pytest.mark.parametrize(("relative", "change", "expected"), [
    ("METADATA/sample.xml", lambda x: x.replace("<CREATED_FROM_REF alias=\"", "<CREATED_FROM_REF alias=\"nope-", 1),
     r"METADATA/sample\.xml:\d+ <CREATED_FROM_REF>: refers to 'nope-"),
    ("METADATA/dataset.xml", lambda x: re.sub(r"<TITLE>.*?</TITLE>", "", x),
     r"METADATA/dataset\.xml:\d+ <SHORT_NAME>: .*TITLE"),
    ("METADATA/image.xml", lambda x: re.sub(r'checksum="[0-9a-f]{64}"', 'checksum="' + "0" * 64 + '"', x, count=1),
     r"METADATA/image\.xml:\d+ <FILE>: .*SHA-256"),
    ("METADATA/image.xml", lambda x: re.sub(r'filename="[^"]+"', 'filename="../../etc/passwd"', x, count=1),
     r"not a path inside the bundle"),
    ("LANDING_PAGE/landing_page.xml", lambda x: x[: len(x) // 2], r"LANDING_PAGE/landing_page\.xml:\d+: not well-formed"),
])
def test_an_invalid_bundle_is_refused_with_file_line_and_element_and_nothing_stays(
        exported: Exported, receiver: Path, tmp_path: Path, relative: str, change: Callable[[str], str],
        expected: str) -> None:
    bundle = broken_copy(exported, tmp_path, relative, change)
    fresh = receiver
    refused = run_cli("bundle", "import", str(bundle), home=fresh, env={"SLIDEBANK_METAFLEX_XSD": str(XSD)})
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 1 and re.search(expected, said), said
    assert_nothing_stored(fresh)


def assert_nothing_stored(home: Path) -> None:
    [datasets] = json_lines(run_cli("datasets", "list", "--json", home=home, check=True).stdout)
    assert "liver-study" not in {d["name"] for d in datasets}
    assert json_lines(run_cli("slides", "list", "--json", home=home, check=True).stdout) == [[]]
    assert not [p for p in (home / "store").rglob("*") if p.is_file() and "objects" in p.parts]


def test_an_image_the_pipeline_refuses_takes_the_whole_import_back(exported: Exported, receiver: Path,
                                                                  tmp_path: Path) -> None:
    """Checksums can be right and a file still broken: the import stops and removes what it stored."""
    copy = tmp_path / "DATASET_liver-study"
    shutil.copytree(exported.bundle, copy)
    image_xml = copy / "METADATA/image.xml"
    document = etree.parse(str(image_xml))
    last = list(document.iter("FILE"))[-1]  # the second image's smallest level, cut short
    target = copy / last.get("filename")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    last.set("checksum", hashlib.sha256(target.read_bytes()).hexdigest())
    document.write(str(image_xml), xml_declaration=True, encoding="UTF-8")
    fresh = receiver
    refused = run_cli("bundle", "import", str(copy), home=fresh, env={"SLIDEBANK_METAFLEX_XSD": str(XSD)})
    assert refused.returncode == 1 and "rejected" in refused.stdout + refused.stderr
    assert_nothing_stored(fresh)
    audit = json_lines(run_cli("audit", "show", "--json", home=fresh, check=True).stdout)
    assert "dataset.import_failed" in {e["action"] for e in audit}
