"""Search at scale: the bitmap index stays exact across processes, pages by cursor, and the bulk
path writes what registration writes. On SQLite and PostgreSQL (the catalog fixtures in conftest)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select

from slidebank.catalog import Catalog, CatalogError, FactCondition, SearchQuery
from slidebank.catalog.bulk import record_facts_many_parallel, register_many, register_many_parallel
from slidebank.catalog.changes import note_rebuild
from slidebank.catalog.erasure import erase_subject
from slidebank.catalog.errors import SlideIdTakenError
from slidebank.catalog.records import DicomIdentity
from slidebank.catalog.search_index import NumericFact
from slidebank.db import UnitOfWork
from slidebank.db.models import BiologicalBeing, Dataset, DicomInstance, Image, ImageFacet, ImageFile, Observation
from test_catalog import _corpus, make_slide


@pytest.fixture
def corpus_catalog(catalog: Catalog) -> tuple[Catalog, list[dict[str, Any]]]:
    corpus = _corpus()
    for spec in corpus:
        description = {k: v for k, v in spec.items() if k not in ("slide_id", "vendor") and v is not None}
        catalog.register(make_slide(spec["slide_id"], vendor=spec["vendor"], **description))
    return catalog, corpus


def _ids(result: Any) -> list[str]:
    return [item["slide_id"] for item in result.items]


def test_a_change_in_one_process_shows_in_the_next_search_of_another(engine: Engine) -> None:
    writer, reader = Catalog(UnitOfWork(engine)), Catalog(UnitOfWork(engine))  # two processes' indexes
    writer.register(make_slide("A-1", dataset="d", species="rat", subject="SUBJ-1", diagnosis="Necrosis"))
    assert _ids(reader.search(SearchQuery())) == ["A-1"]  # built from the catalog
    writer.register(make_slide("A-2", dataset="d", species="mouse", subject="SUBJ-2"))
    assert _ids(reader.search(SearchQuery(species=["mouse"]))) == ["A-2"]  # from the change log
    writer.set_facts("A-1", {"qc.blur_fraction": 0.5, "qc.flags": "blurry"})
    assert _ids(reader.search(SearchQuery(where=FactCondition.parse_all("qc.blur_fraction > 0.4")))) == ["A-1"]
    assert _ids(reader.search(SearchQuery(where=FactCondition.parse_all("qc.flags = 'blurry'")))) == ["A-1"]
    writer.set_facts("A-1", {"qc.blur_fraction": 0.1})  # replaced, not added
    assert reader.search(SearchQuery(where=FactCondition.parse_all("qc.blur_fraction > 0.4"))).total == 0

    with writer.uow.write() as session:
        erase_subject(session, "SUBJ-1")
    after = reader.search(SearchQuery())
    assert _ids(after) == ["A-2"]
    assert after.facets["diagnosis"] == [] and after.facets["species"] == [("Mus musculus", 1)]
    assert reader.search(SearchQuery(text="a-1")).total == 0
    assert reader.search(SearchQuery(where=FactCondition.parse_all("qc.blur_fraction < 1"))).total == 0

    with writer.uow.write() as session:  # what a bulk load asks: every process rebuilds
        note_rebuild(session)
    assert _ids(reader.search(SearchQuery(text="A-"))) == ["A-2"]


def test_pages_by_cursor_and_facets_cut_to_the_most_frequent(corpus_catalog: tuple[Catalog, list[dict[str, Any]]]) -> None:
    catalog, corpus = corpus_catalog
    everything = _ids(catalog.search(SearchQuery(limit=100)))
    seen: list[str] = []
    after = None
    while True:
        page = catalog.search(SearchQuery(limit=4, after=after))
        seen += _ids(page)
        after = page.next
        if after is None:
            break
    assert seen == everything and len(seen) == len(corpus)
    catalog.register(make_slide("S99", dataset="tox", species="rat"))  # added while paging: no repeat, no skip
    first = catalog.search(SearchQuery(limit=5))
    rest = catalog.search(SearchQuery(limit=100, after=first.next))
    assert _ids(first) + _ids(rest) == [*everything, "S99"]
    for hostile in ("", "i", "x12", "i-1", "i" + "f" * 17, "'; DROP TABLE images; --"):
        if hostile:
            with pytest.raises(CatalogError):
                catalog.search(SearchQuery(after=hostile))

    full = catalog.search(SearchQuery())
    cut = catalog.search(SearchQuery(facet_limit=2))
    for facet, counts in full.facets.items():
        assert cut.facets[facet] == counts[:2]
        assert cut.facet_values[facet] == len(counts)
    assert cut.datasets == dict(full.facets["dataset"])


def test_numeric_fact_bins_answer_exactly() -> None:
    rng = np.random.default_rng(7)
    fact = NumericFact()
    ids = rng.choice(200_000, 50_000, replace=False).astype(np.int64)
    values = np.round(rng.gamma(0.5, 0.05, len(ids)), 4)  # skewed, many ties, as QC fractions are
    fact.set(ids, values)
    fact.rebin()
    later = rng.choice(300_000, 2_000, replace=False).astype(np.int64)  # re-measured and new images
    fact.set(later, rng.uniform(-1, 2, len(later)))
    gone = ids[:500]
    fact.forget(gone)
    truth = {int(i): float(v) for i, v in zip(ids, values, strict=True)}
    truth.update({int(i): float(fact.values[i]) for i in later})
    for image_id in gone:
        truth.pop(int(image_id), None)
    operations = {"<": np.less, "<=": np.less_equal, "=": np.equal, "!=": np.not_equal, ">=": np.greater_equal,
                  ">": np.greater}
    for threshold in [-5.0, 0.0, 0.0001, 0.05, float(values[3]), float(np.median(values)), 1.5, 9.0]:
        for op, test in operations.items():
            expected = sorted(i for i, v in truth.items() if test(v, threshold))
            assert list(fact.matching(op, threshold)) == expected, (op, threshold)


def _prefixed(spec: dict[str, Any], prefix: str) -> Any:
    """A corpus slide in datasets of its own (`prefix` + dataset), with its own slide id."""
    description = {k: v for k, v in spec.items() if k not in ("slide_id", "vendor") and v is not None}
    return make_slide(prefix + spec["slide_id"], vendor=spec["vendor"],
                      **{**description, "dataset": prefix + description["dataset"]})


def _described(catalog: Catalog, slide_id: str, prefix: str) -> str:
    """A slide's description without what differs between two registrations of the same record."""
    text = repr(catalog.get_slide(slide_id))
    text = re.sub(r"'(uuid|accession|ingested_at|source_sha256|sha256|thumbnail_sha256)': '[^']*'", "", text)
    return re.sub(r"[0-9a-f]{64}", "", text).replace(prefix, "")


def test_bulk_registration_writes_what_registration_writes(catalog: Catalog) -> None:
    corpus = _corpus()
    slide = _prefixed

    for spec in corpus:
        catalog.register(slide(spec, "one-"))
    twos = [slide(spec, "two-") for spec in corpus]
    result = register_many(catalog.uow, iter(twos), batch=5)
    assert result.registered == len(corpus) and result.skipped == 0

    for spec in corpus:
        assert _described(catalog, "two-" + spec["slide_id"], "two-") == \
            _described(catalog, "one-" + spec["slide_id"], "one-")
    one = catalog.search(SearchQuery(visible_datasets=["one-tox", "one-onco"]))
    two = catalog.search(SearchQuery(visible_datasets=["two-tox", "two-onco"]))
    assert {k: v for k, v in one.facets.items() if k != "dataset"} == \
           {k: v for k, v in two.facets.items() if k != "dataset"}

    # A bulk load writes the facet rows of slides whose whole sample chain it creates without reading
    # them back; slides joining existing objects take them from the graph, which may hold more: a
    # diagnosis recorded on the subject reaches its new slide, and the batch's own slides agree too.
    [subject] = [spec["subject"] for spec in corpus if spec.get("subject")][:1]
    dataset = next(spec["dataset"] for spec in corpus if spec.get("subject") == subject)
    with catalog.uow.write() as session:
        being_id = session.scalar(select(BiologicalBeing.id).join(Dataset, Dataset.id == BiologicalBeing.dataset_id)
                                  .where(Dataset.alias == "two-" + dataset, BiologicalBeing.alias == subject))
        session.add(Observation(dataset_id=session.scalar(select(Dataset.id).where(Dataset.alias == "two-" + dataset)),
                                alias="subject-diagnosis", statement_type="Diagnosis", free_text="Chronic nephropathy",
                                biological_being_id=being_id))
    catalog.refresh_facets()  # what an edit of the graph outside registration calls
    register_many(catalog.uow, [make_slide("two-late", dataset="two-" + dataset, subject=subject),
                                make_slide("two-alone", dataset="two-" + dataset, subject="SUBJ-ALONE", stain="PAS",
                                           species="rat", diagnosis="Fibrosis")])
    assert "two-late" in _ids(catalog.search(SearchQuery(text="nephropathy")))
    assert _ids(catalog.search(SearchQuery(stain=["PAS"], species=["rat"], text="fibrosis"))) == ["two-alone"]
    with catalog.uow.read() as session:
        written = set(session.execute(select(ImageFacet.image_id, ImageFacet.facet, ImageFacet.key, ImageFacet.value)))
    catalog.refresh_facets()
    with catalog.uow.read() as session:
        assert set(session.execute(select(ImageFacet.image_id, ImageFacet.facet, ImageFacet.key,
                                          ImageFacet.value))) == written

    again = register_many(catalog.uow, twos)  # a resumed load
    assert again.registered == 0 and again.skipped == len(corpus)
    with pytest.raises(SlideIdTakenError):  # a taken id in a batch: nothing of the batch is written
        register_many(catalog.uow, [make_slide("three-new", dataset="three"), make_slide("two-S01")])
    assert not catalog.slide_exists("three-new")
    with catalog.uow.read() as session:  # nor its dataset, created ahead of the batch for new slides only
        assert session.scalar(select(Dataset.id).where(Dataset.alias == "three")) is None
    assert catalog.search(SearchQuery()).total == 2 * len(corpus) + 2

    # Files with a DICOM identity get their instance rows (what DICOMweb searches), as in registration.
    def with_identity(slide_id: str, uid: str) -> Any:
        plain = make_slide(slide_id, dataset="dicom")
        identity = DicomIdentity(uid, "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.3", f"1.2.3.{uid[-1]}", "1.2.840.10008.1.2.4.50",
                                 "SM", "SUBJ-X", "", "00010101", "", "", "", "", 1, "", 1, "ORIGINAL", 4, 256, 256,
                                 1024, 1024, 3, "YBR_FULL_422", 8)
        return replace(plain, files=(replace(plain.files[0], dicom=identity), *plain.files[1:]))

    register_many(catalog.uow, [with_identity("dicom-bulk", "1.2.3.4.1")])
    catalog.register(with_identity("dicom-one", "1.2.3.4.2"))
    with catalog.uow.read() as session:
        rows = session.execute(select(Image.slide_id, DicomInstance.sop_instance_uid, ImageFile.level)
                               .join(DicomInstance, DicomInstance.image_id == Image.id)
                               .join(ImageFile, ImageFile.id == DicomInstance.file_id).order_by(Image.slide_id)).all()
    assert [tuple(row) for row in rows] == [("dicom-bulk", "1.2.3.4.1", 0), ("dicom-one", "1.2.3.4.2", 0)]


def test_a_load_spread_over_processes_writes_what_one_process_writes(catalog: Catalog, database_url: str) -> None:
    """Batches of two over three processes: the datasets' shared objects (stainings, subjects) are
    raced for by concurrent batches; the losers run again and find them."""
    corpus = _corpus()
    register_many(catalog.uow, [_prefixed(spec, "one-") for spec in corpus])
    twos = [_prefixed(spec, "two-") for spec in corpus]
    loaded = register_many_parallel(database_url, twos, workers=3, batch=2)
    assert loaded.registered == len(corpus) and sorted(loaded.slide_ids) == sorted("two-" + s["slide_id"] for s in corpus)
    for spec in corpus:
        assert _described(catalog, "two-" + spec["slide_id"], "two-") == \
            _described(catalog, "one-" + spec["slide_id"], "one-")
    again = register_many_parallel(database_url, twos, workers=2, batch=3)
    assert again.registered == 0 and again.skipped == len(corpus)  # a resumed load
    with pytest.raises(SlideIdTakenError, match="'two-S01' is already taken"):  # the worker's error, intact
        register_many_parallel(database_url, [make_slide("two-S01")], workers=1)

    facts = [("two-" + spec["slide_id"], {"qc.blur_fraction": n / 100, "qc.flags": "pen" if n % 2 else ""})
             for n, spec in enumerate(corpus)]
    assert record_facts_many_parallel(database_url, facts, workers=2, batch=3) == len(corpus)
    for slide_id, values in facts:
        assert catalog.facts(slide_id)["qc"] == {"blur_fraction": values["qc.blur_fraction"], "flags": values["qc.flags"]}
    found = catalog.search(SearchQuery(where=FactCondition.parse_all("qc.blur_fraction < 0.05")))
    assert sorted(_ids(found)) == sorted(slide_id for slide_id, values in facts if values["qc.blur_fraction"] < 0.05)
