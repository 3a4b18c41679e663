"""Search at scale: a synthetic catalog of millions of images, loaded through the bulk path, searched
with a realistic query mix, on SQLite and PostgreSQL; the previous SQL search as the peer.

The catalog: dozens of datasets of Zipf-distributed sizes (a few controlled), several species (mostly
human, the rest toxicology animals), ~60 organs, ~30 stains, ~3,000 Zipf-distributed diagnoses,
subjects with several slides each, five scanner vendors, and QC facts per slide. It is written by
`slidebank.catalog.bulk.register_many` (the same rows registration writes, thousands per
transaction) and `record_facts_many`; on PostgreSQL their parallel forms, over `--load-workers` processes.

The query mix, as an anonymous user (open datasets) and as a researcher holding grants on three
controlled datasets: unfiltered facet counts, one facet, three facets, `where qc.blur_fraction <
0.05`, text on diagnosis, a deep page (by cursor and by offset). Each query is `Catalog.search` —
what `/api/search` calls; the HTTP layer adds a constant. The peer is the SQL search this index
replaced (one GROUP BY per facet over the facet table, filters as IN (SELECT …)), run on a few
queries of each kind in the same run. PostgreSQL runs on a throwaway cluster (tests/postgres.py).

    .venv/bin/python bench/search.py [--images 1000000] [--databases sqlite,postgresql] [--queries 40]
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import ColumnElement, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from postgres import create_database, postgres_cluster  # noqa: E402  (a throwaway server, as the tests use)
from slidebank.catalog import Catalog, FactCondition, SearchQuery  # noqa: E402
from slidebank.catalog.bulk import (  # noqa: E402
    record_facts_many,
    record_facts_many_parallel,
    register_many,
    register_many_parallel,
)
from slidebank.catalog.query import FACETS, facet_key  # noqa: E402
from slidebank.catalog.records import IngestedSlide, LevelInfo, SlideDescription, StoredFile  # noqa: E402
from slidebank.catalog.vocabulary import ANATOMICAL_SITES, STAINS, clean_text, normalise_key  # noqa: E402
from slidebank.db import UnitOfWork, create_database_engine, upgrade_schema  # noqa: E402
from slidebank.db.models import Dataset, Image, ImageFacet  # noqa: E402

console = Console()
DATASETS = 40
SLIDES_PER_SUBJECT = 4
CONTROLLED = 5  # the last datasets are controlled; the researcher holds grants on three
EXTRA_ORGANS = ["thyroid gland", "adrenal gland", "pituitary gland", "spleen", "thymus", "bone marrow", "tongue",
                "oesophagus", "small intestine", "caecum", "rectum", "gallbladder", "urinary bladder", "ureter",
                "testis", "epididymis", "prostate", "seminal vesicle", "ovary", "uterus", "cervix", "vagina",
                "mammary gland", "skin", "skeletal muscle", "heart", "aorta", "trachea", "nasal cavity", "eye",
                "optic nerve", "sciatic nerve", "spinal cord", "bone", "joint", "salivary gland", "lymph node"]
EXTRA_STAINS = ["Masson trichrome", "Sirius red", "Perls", "Congo red", "Alcian blue", "Giemsa", "Oil red O"]
VENDORS = (["aperio", "hamamatsu", "philips", "mirax", "leica"], [0.45, 0.25, 0.15, 0.1, 0.05])
MORPHOLOGIES = ["adenocarcinoma", "carcinoma", "hyperplasia", "necrosis", "inflammation", "fibrosis", "atrophy",
                "hypertrophy", "degeneration", "metaplasia", "dysplasia", "lymphoma", "sarcoma", "adenoma",
                "cyst", "haemorrhage", "infiltrate", "vacuolation", "mineralisation", "pigmentation"]
QUALIFIERS = ["", "focal ", "multifocal ", "diffuse ", "minimal ", "mild ", "moderate ", "marked ", "chronic ",
              "acute ", "well differentiated ", "poorly differentiated ", "invasive ", "in situ ", "benign "]


class Catalogue:
    """The synthetic population: per-dataset distributions, drawn reproducibly."""

    def __init__(self, images: int, seed: int = 2026) -> None:
        self.rng = np.random.default_rng(seed)
        self.images = images
        weights = 1 / np.arange(1, DATASETS + 1) ** 0.8
        self.dataset_weights = weights / weights.sum()
        self.names = [f"ds-{i:02d}" for i in range(DATASETS)]
        self.controlled = self.names[-CONTROLLED:]
        self.open = self.names[:-CONTROLLED]
        organs = list(ANATOMICAL_SITES.names) + EXTRA_ORGANS
        stains = list(STAINS.names) + EXTRA_STAINS
        animals = ["Mus musculus", "Rattus norvegicus", "Canis lupus familiaris", "Callithrix jacchus", "Sus scrofa"]
        self.profiles = []
        for _ in range(DATASETS):
            species = "Homo sapiens" if self.rng.random() < 0.7 else str(self.rng.choice(animals))
            chosen = self.rng.choice(organs, size=int(self.rng.integers(3, 16)), replace=False)
            organ_weights = self.rng.dirichlet(np.ones(len(chosen)))
            stain_choice = ["H&E", *self.rng.choice([s for s in stains if s != "H&E"], size=6, replace=False)]
            stain_weights = np.array([0.6, *(self.rng.dirichlet(np.ones(6)) * 0.4)])
            self.profiles.append((species, chosen, organ_weights, stain_choice, stain_weights))
        diagnoses = sorted({f"{q}{m}" for q in QUALIFIERS for m in MORPHOLOGIES})
        self.diagnoses = [f"{d} of the {o}" for d in diagnoses for o in organs][:3000]
        rank = np.arange(1, len(self.diagnoses) + 1)
        self.diagnosis_weights = (1 / rank) / (1 / rank).sum()

    def slides(self) -> Iterator[IngestedSlide]:
        """Drawn a chunk at a time with numpy (a draw per image costs the bench more than the load)."""
        chunk = 10_000  # a multiple of SLIDES_PER_SUBJECT: a subject's slides are drawn in one chunk
        profiles = [(species, [str(o) for o in organs], list(np.cumsum(organ_weights)), [str(s) for s in stains],
                     list(np.cumsum(stain_weights))) for species, organs, organ_weights, stains, stain_weights
                    in self.profiles]
        for start in range(0, self.images, chunk):
            n = min(chunk, self.images - start)
            subjects = -(-n // SLIDES_PER_SUBJECT)
            subject_datasets = self.rng.choice(DATASETS, size=subjects, p=self.dataset_weights)
            subject_organs = self.rng.random(subjects)
            stain_draws = self.rng.random(n)
            diagnoses = self.rng.choice(len(self.diagnoses), size=n, p=self.diagnosis_weights)
            has_diagnosis = self.rng.random(n) < 0.8
            vendors = self.rng.choice(VENDORS[0], size=n, p=VENDORS[1])
            for j in range(n):
                i = start + j
                subject = j // SLIDES_PER_SUBJECT  # a subject's slides: same dataset, same organ
                dataset = int(subject_datasets[subject])
                species, organs, organ_cumulative, stains, stain_cumulative = profiles[dataset]
                yield _slide(
                    i, str(vendors[j]),
                    SlideDescription(
                        dataset=self.names[dataset], subject=f"SUBJ-{i // SLIDES_PER_SUBJECT:08d}", species=species,
                        anatomical_site=organs[_drawn(organ_cumulative, subject_organs[subject])],
                        specimen_type="biopsy", block=f"B{i % 3}", slide=f"{i}",
                        stain=stains[_drawn(stain_cumulative, stain_draws[j])],
                        diagnosis=self.diagnoses[diagnoses[j]] if has_diagnosis[j] else None,
                    ),
                )

    def facts(self) -> Iterator[tuple[str, dict[str, float | str]]]:
        blur = self.rng.gamma(0.6, 0.04, self.images)
        tissue = self.rng.beta(2, 3, self.images)
        flags = self.rng.choice(["", "", "", "", "blurry", "pen-marks", "folds"], size=self.images)
        for i in range(self.images):
            yield slide_id(i), {"qc.blur_fraction": round(float(blur[i]), 5),
                                "qc.tissue_fraction": round(float(tissue[i]), 4), "qc.flags": str(flags[i])}


def _drawn(cumulative: list[float], draw: float) -> int:
    """The index a uniform draw in [0, 1) falls on, given cumulative weights."""
    return min(bisect.bisect(cumulative, draw), len(cumulative) - 1)


def slide_id(i: int) -> str:
    return f"SB{i:08d}-{hashlib.blake2s(str(i).encode(), digest_size=4).hexdigest()}"


LEVELS = (LevelInfo(80_000, 60_000, 1.0), LevelInfo(20_000, 15_000, 4.0), LevelInfo(5_000, 3_750, 16.0))


def _slide(i: int, vendor: str, description: SlideDescription) -> IngestedSlide:
    digest = f"{i:016x}"
    levels = LEVELS
    files = tuple(StoredFile("volume", f"{digest}{level:048x}", 10**9 >> (2 * level), level)
                  for level in range(len(levels))) + (StoredFile("thumbnail", f"{digest}{'f' * 48}", 9_000, None,
                                                                "image/jpeg"),)
    return IngestedSlide(
        slide_id=slide_id(i), source_sha256=f"{'a' * 48}{digest}", source_size=2 * 10**9,
        source_name_pseudonym=f"SOUR-{digest}", original_format=f"{vendor}-wsi", vendor=vendor,
        width=80_000, height=60_000, tile_width=256, tile_height=256, levels=levels, mpp_x=0.25, mpp_y=0.25,
        objective_power=40.0, scanner_manufacturer=vendor, scanner_model="scanner", transfer_syntax="1.2.840.10008.1.2.4.50",
        source_associated_images=("label", "macro"), files=files, thumbnail_sha256=files[-1].sha256,
        description=description, provenance={"conversion": "tile-copy"},
    )


# --- the query mix ------------------------------------------------------------------------------


def query_mix(population: Catalogue, catalog: Catalog, rng: np.random.Generator) -> dict[str, Callable[[], SearchQuery]]:
    top = catalog.search(SearchQuery(limit=0, facet_limit=40))
    organs = [v for v, _ in top.facets["organ"]]
    stains = [v for v, _ in top.facets["stain"]]
    species = [v for v, _ in top.facets["species"]]
    words = [w for w in MORPHOLOGIES]

    def pick(values: list[str]) -> str:
        return str(values[int(rng.integers(len(values)))])

    return {
        "unfiltered": lambda: SearchQuery(facet_limit=20),
        "1 facet": lambda: SearchQuery(organ=[pick(organs)], facet_limit=20),
        "3 facets": lambda: SearchQuery(species=[pick(species[:2])], stain=[pick(stains[:5])],
                                        organ=[pick(organs[:10])], facet_limit=20),
        "where qc": lambda: SearchQuery(where=FactCondition.parse_all("qc.blur_fraction < 0.05"), facet_limit=20),
        "text": lambda: SearchQuery(text=pick(words), facet_limit=20),
        "deep page": lambda: SearchQuery(offset=int(rng.integers(population.images // 2, population.images - 100)),
                                         facet_limit=20),
    }


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return (time.perf_counter() - start) * 1000, result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- the peer: the SQL search the index replaced ----------------------------------------------------


def sql_search(catalog: Catalog, query: SearchQuery) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """One COUNT and one GROUP BY per facet over image_facets, filters as IN (SELECT …) (as before)."""
    from slidebank.catalog.search import FACET_VOCABULARIES

    with catalog.uow.read() as session:
        filters: dict[str, ColumnElement[bool]] = {}
        for name in FACETS:
            values = query.facet_values(name)
            if values:
                vocabulary = FACET_VOCABULARIES.get(name)
                keys = sorted({facet_key(vocabulary.display_name(v) if vocabulary else clean_text(v)) for v in values})
                filters[name] = Image.id.in_(select(ImageFacet.image_id).where(ImageFacet.facet == name,
                                                                               ImageFacet.key.in_(keys)))
        common: list[ColumnElement[bool]] = [condition.clause() for condition in query.where]
        if query.visible_datasets is not None:
            common.append(Image.dataset_id.in_(select(Dataset.id).where(Dataset.alias.in_(query.visible_datasets))))
        if query.text:
            key = normalise_key(query.text)
            common.append(Image.id.in_(select(ImageFacet.image_id).where(
                ImageFacet.facet == "diagnosis", ImageFacet.key.contains(key, autoescape=True))))
        total = session.scalar(select(func.count()).select_from(Image).where(*common, *filters.values())) or 0
        session.execute(select(Image.id).where(*common, *filters.values()).order_by(Image.id)
                        .limit(50).offset(query.offset)).all()
        facets = {}
        for name in FACETS:
            others = [*common, *(c for f, c in filters.items() if f != name)]
            count = func.count().label("count")
            statement = select(func.min(ImageFacet.value), count).where(ImageFacet.facet == name)
            if others:
                statement = statement.where(ImageFacet.image_id.in_(select(Image.id).where(*others)))
            facets[name] = [(str(v), int(c)) for v, c in session.execute(
                statement.group_by(ImageFacet.key).order_by(count.desc()))]
        return int(total), facets


# --- one database ----------------------------------------------------------------------------------


def run(url: str, label: str, population: Catalogue, queries: int, peer_queries: int, workers: int) -> dict[str, Any]:
    engine = create_database_engine(url)
    upgrade_schema(engine)
    catalog = Catalog(UnitOfWork(engine))
    started = time.perf_counter()

    def progress(done: int) -> None:
        if done % 100_000 == 0:
            rate = done / (time.perf_counter() - started)
            console.print(f"  {label}: {done:,} images registered ({rate:,.0f}/s)")

    if workers > 1:
        result = register_many_parallel(url, population.slides(), workers, progress=progress)
        registered_s = time.perf_counter() - started
        record_facts_many_parallel(url, population.facts(), workers)
    else:
        result = register_many(catalog.uow, population.slides(), progress=progress)
        registered_s = time.perf_counter() - started
        record_facts_many(catalog.uow, population.facts())
    load_s = time.perf_counter() - started
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
        if engine.dialect.name == "postgresql":
            size = int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        else:
            database = Path(str(engine.url.database))
            size = sum(p.stat().st_size for p in (database, database.with_name(database.name + "-wal")) if p.exists())
    console.print(f"  {label}: loaded {result.registered:,} images in {load_s:,.0f} s by {workers} process(es) "
                  f"({registered_s:,.0f} s graph, {load_s - registered_s:,.0f} s facts); "
                  f"{size / 2**20:,.0f} MB on disk, {size / max(1, result.registered):,.0f} bytes per image")

    rss = psutil.Process().memory_info().rss
    build_ms, _ = timed(lambda: catalog.search(SearchQuery(limit=1)))
    index_mb = (psutil.Process().memory_info().rss - rss) / 2**20

    rng = np.random.default_rng(5)
    mix = query_mix(population, catalog, rng)
    anonymous = population.open
    researcher = [*population.open, *population.controlled[:3]]
    times: dict[tuple[str, str], list[float]] = {}
    for role, visible in (("anonymous", anonymous), ("researcher", researcher)):
        for kind, make in mix.items():
            times[(role, kind)] = [
                timed(partial(catalog.search, replace(make(), visible_datasets=visible)))[0] for _ in range(queries)]
    # Keyset paging: follow cursors from the middle.
    page = catalog.search(SearchQuery(offset=population.images // 2, limit=50, visible_datasets=anonymous))
    keyset = []
    for _ in range(queries):
        elapsed, page = timed(partial(catalog.search, SearchQuery(after=page.next, limit=50, visible_datasets=anonymous)))
        keyset.append(elapsed)
    times[("anonymous", "next page (cursor)")] = keyset

    peer: dict[str, list[float]] = {}
    for kind, make in mix.items():
        peer[kind] = [timed(partial(sql_search, catalog, replace(make(), visible_datasets=anonymous)))[0]
                      for _ in range(peer_queries)]
    engine.dispose()
    return {"label": label, "images": result.registered, "load_s": load_s, "workers": workers, "bytes": size,
            "build_ms": build_ms, "index_mb": index_mb, "times": times, "peer": peer}


def report(results: list[dict[str, Any]]) -> None:
    for outcome in results:
        table = Table(title=f"{outcome['label']}: {outcome['images']:,} images — load {outcome['load_s']:,.0f} s "
                            f"({outcome['workers']} process(es)), {outcome['bytes'] / outcome['images']:,.0f} B/image, "
                            f"index built at first search in {outcome['build_ms'] / 1000:,.1f} s "
                            f"(+{outcome['index_mb']:,.0f} MB RSS)")
        for column in ("user", "query", "p50 ms", "p95 ms", "p99 ms", "SQL peer p50 ms", "peer / index (p50)"):
            table.add_column(column, justify="right" if "ms" in column or "/" in column else "left")
        everything = []
        for (role, kind), samples in outcome["times"].items():
            everything += samples
            peer = outcome["peer"].get(kind) if role == "anonymous" else None
            peer_p50 = statistics.median(peer) if peer else None
            table.add_row(role, kind, f"{percentile(samples, 50):.1f}", f"{percentile(samples, 95):.1f}",
                          f"{percentile(samples, 99):.1f}", f"{peer_p50:,.0f}" if peer_p50 else "",
                          f"{peer_p50 / percentile(samples, 50):,.0f}×" if peer_p50 else "")
        table.add_row("all", "the mix", f"{percentile(everything, 50):.1f}", f"{percentile(everything, 95):.1f}",
                      f"{percentile(everything, 99):.1f}", "", "", style="bold")
        console.print(table)
    console.print("Targets: p95 < 50 ms at 1M images on both databases; moonshot: BIGPICTURE's OpenSearch, "
                  "13 ms p95 at 10M on PostgreSQL; load 1M into PostgreSQL faster than 349 s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--queries", type=int, default=40, help="queries of each kind and user")
    parser.add_argument("--peer-queries", type=int, default=3, help="queries of each kind for the SQL peer")
    parser.add_argument("--load-workers", type=int, default=2,
                        help="processes loading PostgreSQL (SQLite takes one writer at a time: always 1)")
    args = parser.parse_args()
    population_args = args.images
    results = []
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slidebank-search-bench-")))
        for database in args.databases.split(","):
            population = Catalogue(population_args)
            if database == "sqlite":
                url = f"sqlite:///{folder / 'catalog.sqlite'}"
            else:
                url = create_database(stack.enter_context(postgres_cluster()))
            console.print(f"[bold]{database}[/]: {args.images:,} images")
            workers = 1 if database == "sqlite" else args.load_workers
            results.append(run(url, database, population, args.queries, args.peer_queries, workers))
            report(results[-1:])  # as soon as it is known
    console.print(f"{os.cpu_count()} CPUs; all databases:")
    report(results)


if __name__ == "__main__":
    main()
