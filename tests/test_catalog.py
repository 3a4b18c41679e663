"""The catalog on SQLite and on PostgreSQL: schema, registration, races, get-or-create, faceted search."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slidebank.audit import AuditLog
from slidebank.catalog import (
    Catalog,
    DuplicateSourceError,
    SearchQuery,
    SlideIdTakenError,
    registration,
)
from slidebank.catalog.records import (
    IngestedSlide,
    LevelInfo,
    SlideDescription,
    StoredFile,
)
from slidebank.catalog.vocabulary import ANATOMICAL_SITES, SPECIES, STAINS
from slidebank.db import UnitOfWork, upgrade_schema
from slidebank.db import create_database_engine as create_catalog_engine
from slidebank.db.models import Base, BiologicalBeing, Case, Observation


def make_slide(
    slide_id: str, *, source: str | None = None, vendor: str = "aperio", **description: str
) -> IngestedSlide:
    """An IngestedSlide as the pipeline would build it, with random blob digests."""
    volume = [StoredFile("volume", secrets.token_hex(32), 1000 + level, level) for level in range(3)]
    thumbnail = StoredFile("thumbnail", secrets.token_hex(32), 99, None, "image/jpeg")
    return IngestedSlide(
        slide_id=slide_id,
        source_sha256=source or secrets.token_hex(32),
        source_size=5_000_000_000,  # > 2**31: sizes need 64-bit columns
        source_name_pseudonym="SOUR-0123456789abcdef0123",
        original_format="aperio-svs",
        vendor=vendor,
        width=40_000,
        height=30_000,
        tile_width=256,
        tile_height=256,
        levels=(LevelInfo(40_000, 30_000, 1.0), LevelInfo(20_000, 15_000, 2.0), LevelInfo(10_000, 7_500, 4.0)),
        mpp_x=0.2525,
        mpp_y=0.2526,
        objective_power=40.0,
        scanner_manufacturer="Aperio",
        scanner_model="GT 450",
        transfer_syntax="1.2.840.10008.1.2.4.50",
        source_associated_images=("label", "macro"),
        files=(*volume, thumbnail),
        thumbnail_sha256=thumbnail.sha256,
        description=SlideDescription(**description),
        provenance={"conversion": "tile-copy", "tools": {"wsidicomizer": "0.26.1"}},
    )


# --- schema -----------------------------------------------------------------------------------


def test_migrations_create_exactly_the_models_schema(database_url: str) -> None:
    engine = create_catalog_engine(database_url)
    try:
        upgrade_schema(database_url)  # by URL, in its own engine
        upgrade_schema(engine)  # and again: already at head, nothing to do
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0008"
        names = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= names
    finally:
        engine.dispose()


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(tmp_path: Path) -> None:
    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def test_observation_must_have_exactly_one_target(catalog: Catalog, engine: Engine) -> None:
    catalog.register(make_slide("OBS-1", subject="SUBJ-A"))
    with Session(engine) as session:
        being = session.scalars(select(BiologicalBeing)).one()
        case = session.scalars(select(Case)).one()
        for targets in ({}, {"biological_being_id": being.id, "case_id": case.id}):
            session.add(
                Observation(
                    alias="two", dataset_id=being.dataset_id, statement_type="Finding", free_text="x", **targets
                )
            )
            with pytest.raises(IntegrityError):
                session.flush()
            session.rollback()


# --- registration -----------------------------------------------------------------------------


def test_register_then_get_slide_round_trip(catalog: Catalog) -> None:
    slide = make_slide(
        "HOSP.2026-0042",
        dataset="tox-study",
        subject="SUBJ-0123456789abcdef0123",
        species="rat",
        sex="M",
        age_at_extraction="p10w",
        case="C-1",
        specimen="S-1",
        anatomical_site="Liver",
        specimen_type="biopsy",
        fixation_type="NBF",
        block="A1",
        block_preparation="FFPE",
        slide="1",
        stain="H&E",
        diagnosis="Hepatocellular hypertrophy",
    )
    assert catalog.register(slide) == "HOSP.2026-0042"
    detail = catalog.get_slide("HOSP.2026-0042")
    assert detail is not None
    json.dumps(detail)  # JSON-serialisable, no ORM objects or datetimes

    assert detail["slide_id"] == "HOSP.2026-0042" and detail["dataset"] == "tox-study"
    assert (detail["width"], detail["height"], detail["tile_width"], detail["tile_height"]) == (
        40_000,
        30_000,
        256,
        256,
    )
    assert detail["level_count"] == 3
    assert detail["levels"] == [
        {"level": i, "width": 40_000 >> i, "height": 30_000 >> i, "downsample": float(2**i)} for i in range(3)
    ]
    assert (detail["mpp_x"], detail["mpp_y"], detail["objective_power"]) == (0.2525, 0.2526, 40.0)
    assert detail["vendor"] == "aperio" and detail["original_format"] == "aperio-svs"
    assert detail["scanner"] == {"manufacturer": "Aperio", "model": "GT 450"}
    assert detail["source_sha256"] == slide.source_sha256 and detail["source_size"] == 5_000_000_000
    assert detail["canonical_size"] == slide.canonical_size
    assert detail["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert detail["source_associated_images"] == ["label", "macro"]
    assert detail["associated_images_stored"] == []
    assert detail["provenance"] == slide.provenance
    assert detail["files"] == [
        {"role": f.role, "sha256": f.sha256, "size": f.size, "level": f.level, "media_type": f.media_type}
        for f in slide.files
    ]
    assert detail["thumbnail_sha256"] == slide.thumbnail_sha256
    assert re.fullmatch(r"SBI[A-Z2-7]{13}", detail["accession"])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", detail["uuid"])
    assert detail["ingested_at"].endswith("+00:00")

    # Biological context, normalised and coded.
    assert detail["subject"] == "SUBJ-0123456789abcdef0123"
    assert (detail["species"], detail["sex"], detail["age_at_extraction"]) == ("Rattus norvegicus", "male", "P10W")
    assert (detail["organ"], detail["anatomical_site"]) == ("liver", "liver")
    assert (detail["specimen_type"], detail["fixation_type"]) == ("biopsy", "neutral buffered formalin")
    assert (detail["block_preparation"], detail["stain"]) == ("paraffin", "H&E")
    assert detail["diagnosis"] == "Hepatocellular hypertrophy"
    coded = detail["coded"]
    assert coded["species"] == {
        "name": "Rattus norvegicus",
        "code": "371565004",
        "scheme": "SCT",
        "meaning": "Rattus norvegicus",
    }
    assert coded["sex"]["code"] == "248153007"
    assert coded["anatomical_site"]["code"] == "10200004"
    assert coded["specimen_type"]["code"] == "258415003"
    assert coded["extraction_method"]["code"] == "86273004"
    assert coded["fixation_type"]["code"] == "434162003"
    assert coded["block_preparation"]["code"] == "311731000"
    [stain] = coded["stains"]
    assert stain["procedure"]["code"] == "104210008"
    assert [s["code"] for s in stain["substances"]] == ["12710003", "36879007"]
    assert coded["diagnoses"] == [{"text": "Hepatocellular hypertrophy", "code": None, "on": "image"}]

    objects = detail["objects"]
    assert objects["dataset"]["policy"] == "controlled-access" and objects["dataset"]["organisation"] == "local"
    assert objects["biological_being"]["alias"] == "SUBJ-0123456789abcdef0123"
    assert objects["case"]["alias"].endswith("/C-1")
    assert objects["block"]["alias"].endswith("/C-1/S-1/A1")
    prefixes = {"case": "SBC", "block": "SBK", "slide": "SBL", "biological_being": "SBB"}
    for name, prefix in prefixes.items():
        assert objects[name]["accession"].startswith(prefix)

    [summary] = catalog.list_slides()
    assert summary == {key: detail[key] for key in summary}
    assert set(summary) == {
        "slide_id",
        "dataset",
        "width",
        "height",
        "vendor",
        "stain",
        "species",
        "organ",
        "diagnosis",
        "ingested_at",
    }
    assert catalog.slide_exists("HOSP.2026-0042") and not catalog.slide_exists("nope")
    assert catalog.slide_id_for_source(slide.source_sha256) == "HOSP.2026-0042"
    assert catalog.slide_id_for_source("0" * 64) is None
    assert catalog.referenced_blobs() == {f.sha256 for f in slide.files}
    assert catalog.get_slide("no-such-slide") is None


def test_undescribed_slide_gets_a_complete_anonymous_graph(catalog: Catalog) -> None:
    catalog.register(make_slide("anon-1"))
    catalog.register(make_slide("anon-2"))
    first, second = catalog.get_slide("anon-1"), catalog.get_slide("anon-2")
    assert first and second
    for name in ("biological_being", "case", "block", "slide"):
        assert first["objects"][name] is not None
        assert first["objects"][name]["accession"] != second["objects"][name]["accession"]
    assert len(first["objects"]["specimens"]) == 1
    assert first["dataset"] == "default"
    assert first["objects"]["dataset"]["policy"] == "controlled-access"
    assert first["species"] is None and first["stain"] is None and first["diagnosis"] is None
    [dataset] = catalog.datasets()
    assert (dataset["name"], dataset["images"], dataset["policy"]) == ("default", 2, "controlled-access")


def test_free_text_values_are_kept_uncoded(catalog: Catalog) -> None:
    catalog.register(make_slide("free-1", species="Danio rerio", anatomical_site="gill", stain="Mystery blue"))
    detail = catalog.get_slide("free-1")
    assert detail is not None
    assert detail["coded"]["species"] == {"name": "Danio rerio", "code": None, "scheme": None, "meaning": None}
    assert detail["organ"] == "gill" and detail["stain"] == "Mystery blue"
    assert detail["coded"]["stains"][0]["procedure"] is None


def test_same_source_twice_is_a_duplicate(catalog: Catalog) -> None:
    source = secrets.token_hex(32)
    catalog.register(make_slide("first", source=source))
    with pytest.raises(DuplicateSourceError) as raised:
        catalog.register(make_slide("second", source=source))
    assert raised.value.slide_id == "first"
    assert [s["slide_id"] for s in catalog.list_slides()] == ["first"]


def test_slide_id_taken(catalog: Catalog) -> None:
    catalog.register(make_slide("SAME-ID"))
    with pytest.raises(SlideIdTakenError):
        catalog.register(make_slide("SAME-ID"))
    assert len(catalog.list_slides()) == 1


def test_invalid_slide_id_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError):
        catalog.register(make_slide("../escape"))


class BlindCatalog(Catalog):
    """A catalog whose friendly pre-checks see nothing, as when another process commits in between."""

    def __init__(self, engine: Engine, blind_checks: int) -> None:
        super().__init__(UnitOfWork(engine))
        self.blind_checks = blind_checks

    def register(self, slide: IngestedSlide, also: Any = None) -> str:
        real = registration.raise_if_taken

        def blind(session: Session, slide: IngestedSlide) -> None:
            if self.blind_checks > 0:
                self.blind_checks -= 1
                return
            real(session, slide)

        registration.raise_if_taken = blind  # type: ignore[assignment]  (the checks the module runs)
        try:
            return super().register(slide, also)
        finally:
            registration.raise_if_taken = real  # type: ignore[assignment]


def test_duplicate_source_race_is_caught_by_the_unique_constraint(catalog: Catalog, engine: Engine) -> None:
    source = secrets.token_hex(32)
    catalog.register(make_slide("winner", source=source, subject="SUBJ-R", stain="H&E"))
    racer = BlindCatalog(engine, blind_checks=2)  # the check before and the one inside the transaction
    with pytest.raises(DuplicateSourceError) as raised:
        racer.register(make_slide("loser", source=source, subject="SUBJ-R", stain="H&E"))
    assert raised.value.slide_id == "winner"
    with pytest.raises(SlideIdTakenError):
        BlindCatalog(engine, blind_checks=2).register(make_slide("winner"))
    assert [s["slide_id"] for s in catalog.list_slides()] == ["winner"]
    assert catalog.search(SearchQuery()).facets["stain"] == [("H&E", 1)]  # the rollback left no facet rows


def test_concurrent_registrations_of_one_source_leave_one_image(database_url: str, engine: Engine) -> None:
    """Real concurrency: six sessions (own engines) register the same bytes and a shared subject at once."""
    source = secrets.token_hex(32)
    contenders = 6
    barrier = threading.Barrier(contenders)
    results: dict[str, Any] = {}
    engines = [create_catalog_engine(database_url) for _ in range(contenders)]

    def contend(index: int) -> None:
        catalog = Catalog(UnitOfWork(engines[index]))
        slide = make_slide(f"race-{index}", source=source, dataset="race", subject="SUBJ-shared", stain="PAS")
        barrier.wait()
        try:
            results[slide.slide_id] = catalog.register(slide)
        except DuplicateSourceError as duplicate:
            results[slide.slide_id] = duplicate

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for other in engines:
        other.dispose()

    winners = [value for value in results.values() if isinstance(value, str)]
    losers = [value for value in results.values() if isinstance(value, DuplicateSourceError)]
    assert len(results) == contenders and len(winners) == 1, results
    assert all(loser.slide_id == winners[0] for loser in losers)
    assert [s["slide_id"] for s in Catalog(UnitOfWork(engine)).list_slides()] == winners

    # Different sources, same new dataset and subject, all at once: shared objects are created once.
    barrier = threading.Barrier(contenders)
    engines = [create_catalog_engine(database_url) for _ in range(contenders)]
    errors: list[BaseException] = []

    def share(index: int) -> None:
        try:
            barrier.wait()
            Catalog(UnitOfWork(engines[index])).register(
                make_slide(f"share-{index}", dataset="new-ds", subject="SUBJ-together", stain="Giemsa")
            )
        except BaseException as error:  # noqa: BLE001 - collected, asserted below
            errors.append(error)

    threads = [threading.Thread(target=share, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for other in engines:
        other.dispose()
    assert not errors, errors
    beings = {
        Catalog(UnitOfWork(engine)).get_slide(f"share-{i}")["objects"]["biological_being"]["accession"]  # type: ignore[index]
        for i in range(contenders)
    }
    assert len(beings) == 1
    assert dict(Catalog(UnitOfWork(engine)).search(SearchQuery(dataset=["new-ds"])).facets["stain"]) == {"Giemsa": contenders}


def test_get_or_create_shares_objects_between_slides_of_one_subject(catalog: Catalog) -> None:
    catalog.register(
        make_slide("p1-he", dataset="onco", subject="SUBJ-P1", species="human", specimen="S1", block="A1", stain="H&E")
    )
    catalog.register(
        make_slide("p1-ki67", dataset="onco", subject="SUBJ-P1", sex="female", specimen="S1", block="A1", stain="Ki-67")
    )
    catalog.register(make_slide("p1-other", dataset="onco", subject="SUBJ-P1", specimen="S2"))
    catalog.register(make_slide("p1-elsewhere", dataset="other", subject="SUBJ-P1"))
    he, ki67, other, elsewhere = (catalog.get_slide(s) for s in ("p1-he", "p1-ki67", "p1-other", "p1-elsewhere"))
    assert he and ki67 and other and elsewhere

    def acc(detail: dict[str, Any], name: str) -> str:
        return detail["objects"][name]["accession"]

    assert acc(he, "biological_being") == acc(ki67, "biological_being") == acc(other, "biological_being")
    assert acc(he, "block") == acc(ki67, "block")  # same specimen S1, same block A1
    assert he["objects"]["specimens"] == ki67["objects"]["specimens"]
    assert acc(he, "slide") != acc(ki67, "slide")  # no slide label given: one glass slide per image
    assert other["objects"]["specimens"] != he["objects"]["specimens"]
    assert acc(elsewhere, "biological_being") != acc(he, "biological_being")  # datasets do not share subjects
    # The first description of a shared subject wins; later ones fill only what was missing.
    assert (ki67["species"], ki67["sex"]) == ("Homo sapiens", "female")
    assert (he["species"], he["sex"]) == ("Homo sapiens", "female")


def test_refresh_facets_follows_observations_on_any_object(catalog: Catalog, engine: Engine) -> None:
    catalog.register(make_slide("case-dx", subject="SUBJ-C", case="K-1"))
    with Session(engine) as session, session.begin():
        case = session.scalars(select(Case).where(Case.alias == "SUBJ-C/K-1")).one()
        session.add(
            Observation(
                alias="K-1/dx",
                dataset_id=case.dataset_id,
                statement_type="Diagnosis",
                code="35917007",
                scheme="SCT",
                meaning="Adenocarcinoma",
                case_id=case.id,
            )
        )
    assert catalog.search(SearchQuery(diagnosis=["adenocarcinoma"])).total == 0  # index not yet refreshed
    assert catalog.refresh_facets() == 1
    assert catalog.search(SearchQuery(diagnosis=["adenocarcinoma"])).total == 1
    detail = catalog.get_slide("case-dx")
    assert detail and detail["coded"]["diagnoses"] == [
        {
            "text": "Adenocarcinoma",
            "code": {"code": "35917007", "scheme": "SCT", "meaning": "Adenocarcinoma"},
            "on": "case",
        }
    ]


# --- faceted search ---------------------------------------------------------------------------

FACET_NAMES = ("dataset", "species", "organ", "stain", "vendor", "diagnosis")
VOCABULARIES = {"species": SPECIES, "organ": ANATOMICAL_SITES, "stain": STAINS}


def _corpus() -> list[dict[str, Any]]:
    """22 slides whose facets vary independently enough that wrong counting shows."""
    species = ["rat", "mouse", "human"]
    organs = ["liver", "kidney", "lung", "Liver"]
    stains = ["H&E", "PAS", "Ki-67", "H&E; PAS"]
    vendors = ["aperio", "hamamatsu"]
    diagnoses = ["necrosis", "hypertrophy", None]
    corpus = []
    for i in range(22):
        corpus.append(
            {
                "slide_id": f"S{i:02d}",
                "dataset": "tox" if i % 3 else "onco",
                "species": species[i % 3],
                "anatomical_site": organs[(i // 2) % 4],
                "stain": stains[(i // 3) % 4],
                "vendor": vendors[(i // 5) % 2],
                "diagnosis": diagnoses[i % 3 if i < 20 else 0],
                "subject": f"SUBJ-{i % 6}",  # shared subjects have the same species and dataset
            }
        )
    return corpus


def _facet_values(spec: dict[str, Any]) -> dict[str, set[str]]:
    """Ground truth: the facet values one slide should have, normalised like the catalog does."""
    values = {
        "dataset": {spec["dataset"]},
        "species": {SPECIES.display_name(spec["species"])},
        "organ": {ANATOMICAL_SITES.display_name(spec["anatomical_site"])},
        "stain": {STAINS.display_name(s.strip()) for s in spec["stain"].split(";")},
        "vendor": {spec["vendor"]},
        "diagnosis": {spec["diagnosis"]} if spec["diagnosis"] else set(),
    }
    return values


def _expected(
    corpus: list[dict[str, Any]], filters: dict[str, list[str]]
) -> tuple[list[str], dict[str, dict[str, int]]]:
    def normal(facet: str, value: str) -> str:
        vocabulary = VOCABULARIES.get(facet)
        return (vocabulary.display_name(value) if vocabulary else value).casefold()

    def matches(values: dict[str, set[str]], skip: str | None = None) -> bool:
        return all(
            {normal(facet, v) for v in wanted} & {v.casefold() for v in values[facet]}
            for facet, wanted in filters.items()
            if facet != skip
        )

    facts = [(spec["slide_id"], _facet_values(spec)) for spec in corpus]
    ids = [slide_id for slide_id, values in facts if matches(values)]
    counts = {
        facet: dict(Counter(v for _, values in facts if matches(values, skip=facet) for v in values[facet]))
        for facet in FACET_NAMES
    }
    return ids, counts


@pytest.fixture
def corpus_catalog(catalog: Catalog) -> tuple[Catalog, list[dict[str, Any]]]:
    corpus = _corpus()
    for spec in corpus:
        description = {k: v for k, v in spec.items() if k not in ("slide_id", "vendor") and v is not None}
        catalog.register(make_slide(spec["slide_id"], vendor=spec["vendor"], **description))
    return catalog, corpus


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"species": ["rat"]},
        {"species": ["Rattus norvegicus", "MOUSE"]},
        {"species": ["rat", "mouse"], "organ": ["liver"]},
        {"dataset": ["tox"], "stain": ["H&E"], "vendor": ["aperio"]},
        {"stain": ["PAS", "ki67"], "diagnosis": ["necrosis"]},
        {"organ": ["kidney", "lung"], "diagnosis": ["hypertrophy", "necrosis"], "dataset": ["onco"]},
        {"species": ["dog"]},
    ],
    ids=lambda f: "+".join(f"{k}={'|'.join(v)}" for k, v in f.items()) or "none",
)
def test_faceted_counts_apply_the_other_facets_filters(
    corpus_catalog: tuple[Catalog, list[dict[str, Any]]], filters: dict[str, list[str]]
) -> None:
    catalog, corpus = corpus_catalog
    result = catalog.search(SearchQuery(**filters, limit=100))  # type: ignore[arg-type]
    expected_ids, expected_counts = _expected(corpus, filters)
    assert result.total == len(expected_ids)
    assert [item["slide_id"] for item in result.items] == expected_ids
    for facet in FACET_NAMES:
        got = result.facets[facet]
        assert dict(got) == expected_counts[facet], facet
        assert [count for _, count in got] == sorted((count for _, count in got), reverse=True)


def test_search_pages_and_summaries(corpus_catalog: tuple[Catalog, list[dict[str, Any]]]) -> None:
    catalog, corpus = corpus_catalog
    everything = [item["slide_id"] for item in catalog.search(SearchQuery(limit=100)).items]
    pages = [catalog.search(SearchQuery(limit=5, offset=offset)) for offset in range(0, 25, 5)]
    assert [item["slide_id"] for page in pages for item in page.items] == everything
    assert all(page.total == len(corpus) for page in pages)
    both = catalog.search(SearchQuery(text="S09")).items[0]
    assert both["stain"] == "H&E; PAS" and both["organ"] == "liver" and both["species"] == "Rattus norvegicus"
    assert catalog.list_slides() == catalog.search(SearchQuery(limit=100)).items


def test_visible_datasets_limit_items_and_counts(corpus_catalog: tuple[Catalog, list[dict[str, Any]]]) -> None:
    catalog, corpus = corpus_catalog
    result = catalog.search(SearchQuery(visible_datasets=["onco"], limit=100))
    onco = [spec["slide_id"] for spec in corpus if spec["dataset"] == "onco"]
    assert [item["slide_id"] for item in result.items] == onco
    assert result.facets["dataset"] == [("onco", len(onco))]
    assert sum(count for _, count in result.facets["vendor"]) == len(onco)
    assert catalog.search(SearchQuery(visible_datasets=[], limit=100)).total == 0


def test_text_search_is_case_insensitive_and_treats_sql_as_text(catalog: Catalog, engine: Engine) -> None:
    catalog.register(make_slide("HOSP-0001", diagnosis="Steatosis, macrovesicular"))
    catalog.register(make_slide("HOSP-0002", diagnosis="No abnormality detected"))
    catalog.register(make_slide("lab_7", diagnosis="100% necrotic"))
    catalog.register(make_slide("QUOTE.1", diagnosis="the 'usual' finding"))

    def found(text: str) -> list[str]:
        return [item["slide_id"] for item in catalog.search(SearchQuery(text=text)).items]

    assert found("hosp") == ["HOSP-0001", "HOSP-0002"]
    assert found("STEATO") == ["HOSP-0001"]
    assert found("%") == ["lab_7"]  # only the diagnosis that really contains a percent sign
    assert found("_") == ["lab_7"]  # only the slide id that really contains an underscore
    assert found("'usual'") == found("'") == ["QUOTE.1"]  # a quote is just a character
    hostile = ['"; DROP TABLE images; --', "' OR '1'='1", "%%", "\\", "x\x00y", "*", "?", "[a-z]", "100%x"]
    for text_query in hostile:
        assert found(text_query) == [], text_query
    assert found("100%") == ["lab_7"]
    assert len(catalog.list_slides()) == 4
    assert "images" in inspect(engine).get_table_names()
    assert catalog.search(SearchQuery(species=["'; DROP TABLE image_facets; --"])).total == 0
    assert catalog.search(SearchQuery()).total == 4


def test_audit_chain_stays_whole_under_concurrent_writers(database_url: str) -> None:
    """Server workers append to one chain at once (own engines, as separate processes would)."""
    from concurrent.futures import ThreadPoolExecutor

    upgrade_schema(database_url)
    engines = [create_catalog_engine(database_url) for _ in range(4)]
    try:
        logs = [AuditLog(UnitOfWork(engine)) for engine in engines]

        def write(index: int) -> None:
            for n in range(25):
                logs[index].record(f"worker-{index}", "metadata.read", dataset="d", slide_id=f"s{n}")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
        check = logs[0].verify()
        assert check.ok and check.entries == 100, check
    finally:
        for engine in engines:
            engine.dispose()


def test_annotation_index_facts_and_job_claims_on_both_databases(catalog: Catalog, engine: Engine) -> None:
    """The parts of issue 5 that lean on SQL: viewport ranges, fact conditions, one claim per job."""
    from shapely.geometry import box, shape

    from slidebank.access.principal import Principal
    from slidebank.annotations.geojson import parse_document
    from slidebank.annotations.service import Annotations, Viewport
    from slidebank.catalog import FactCondition
    from slidebank.jobs import Jobs, JobSpec
    from test_annotations import random_features

    catalog.register(make_slide("ANN-1"))
    catalog.register(make_slide("ANN-2"))
    uow = UnitOfWork(engine)
    annotations = Annotations(uow, AuditLog(uow))
    annotations.add("ANN-1", parse_document(random_features(600, seed=1)), Principal("tester", "researcher", 1))
    everything, _ = annotations.query("ANN-1", limit=10_000)
    shapes = {f["id"]: box(*shape(f["geometry"]).bounds) for f in everything}
    for x0, y0, size in ((0, 0, 500), (1200, 900, 300), (2900, 2300, 900), (-50, 1000, 60)):
        found, total = annotations.query("ANN-1", Viewport(x0, y0, x0 + size, y0 + size), limit=10_000)
        expected = {i for i, s in shapes.items() if s.intersects(box(x0, y0, x0 + size, y0 + size))}
        assert {f["id"] for f in found} == expected and total == len(expected)
    assert annotations.query("ANN-2", Viewport(0, 0, 3000, 3000))[1] == 0  # another slide's features stay put
    density = annotations.density("ANN-1", Viewport(0, 0, 6000, 4800), 6, 4)
    centred = sum(1 for f in everything if sum(f["slidebank"]["bbox"][0::2]) / 2 < 6000
                  and sum(f["slidebank"]["bbox"][1::2]) / 2 < 4800)
    assert sum(sum(map(sum, c["counts"])) for c in density["classes"]) == centred

    catalog.set_facts("ANN-1", {"qc.blur_fraction": 0.01, "qc.flags": ""})
    catalog.set_facts("ANN-2", {"qc.blur_fraction": 0.4, "qc.flags": "out of focus"})
    def where(text: str) -> list[str]:
        return [i["slide_id"] for i in catalog.search(SearchQuery(where=FactCondition.parse_all(text))).items]
    assert where("qc.blur_fraction < 0.05") == ["ANN-1"] and where("qc.flags = 'out of focus'") == ["ANN-2"]
    assert catalog.get_slide("ANN-2")["qc"] == {"blur_fraction": 0.4, "flags": "out of focus"}

    jobs = Jobs(uow, AuditLog(uow))
    job = jobs.create(JobSpec("qc", "1.0.0", {}, ("ANN-1", "ANN-2"), "operator"))
    assert [jobs.claim(job["id"], "tcp://a"), jobs.claim(job["id"], "tcp://b")] == [True, False]
    assert jobs.claimable() == []  # running, with a fresh heartbeat
