"""Bulk registration: thousands of slides per transaction, for migrations of whole repositories.

`registration.register` makes one transaction per slide, with a lookup per sample object (about
70 slides/s): fine for ingest, where conversion takes far longer, but hours for a migration of a
million catalog records. This path writes the same rows (`registration.image_values`, the same
sample aliases, codes and facet index) set-wise: per batch, one lookup and one multi-row insert
per table. A batch commits whole or not at all; a slide already registered with the same source is
skipped, so an interrupted load resumes by running it again.

`register_many_parallel` and `record_facts_many_parallel` spread the batches over processes, each
with its own connection: on PostgreSQL the batches' Python work and the server's overlap. Batches
that race to create the same shared object (a dataset's staining, say) lose one of them to a unique
violation or a deadlock; the loser is rolled back whole and runs again, finding the object there.

What it does not do: store pixels. The records name blobs already in the store (a migration moves
those separately) and the pipeline's checks are assumed done where the records were made.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from slidebank.catalog.changes import note_changed
from slidebank.catalog.errors import DuplicateSourceError, SlideIdTakenError
from slidebank.catalog.facets import FacetRows, add_facet, index_images
from slidebank.catalog.facts import fact_row
from slidebank.catalog.identifiers import SLIDE_ID_PATTERN
from slidebank.catalog.records import IngestedSlide
from slidebank.catalog.registration import (
    SampleAliases,
    clean_label,
    coded,
    dataset_alias,
    diagnosis_values,
    ensure_dataset,
    image_values,
    staining_values,
)
from slidebank.catalog.vocabulary import (
    ANATOMICAL_SITES,
    BLOCK_PREPARATIONS,
    EXTRACTION_METHODS,
    FIXATION_TYPES,
    SEX,
    SPECIES,
    SPECIMEN_TYPES,
    Term,
    Vocabulary,
    split_stains,
)
from slidebank.db import UnitOfWork, create_database_engine
from slidebank.db.models import (
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    DicomInstance,
    Image,
    ImageFile,
    ImageLevel,
    Observation,
    Slide,
    SlideFact,
    Specimen,
    Staining,
    block_specimens,
    slide_stainings,
)
from slidebank.db.rows import allocate_ids, among, insert_rows

BATCH = 5_000
LOOKUP = 5_000  # keys per lookup (an array on PostgreSQL, an IN list on SQLite: under its 32,766 parameters)

Sample = TypeVar("Sample", BiologicalBeing, Case, Specimen, Block, Slide, Staining)
Key = tuple[int, str]  # (dataset id, alias)


@dataclass
class BulkResult:
    registered: int = 0
    skipped: int = 0  # already registered with the same source: a resumed load
    slide_ids: list[str] = field(default_factory=list)


def register_many(uow: UnitOfWork, slides: Iterable[IngestedSlide], batch: int = BATCH,
                  progress: Callable[[int], None] | None = None) -> BulkResult:
    """Register slides `batch` at a time, each batch in one transaction; see the module docstring."""
    result = BulkResult()
    for group in _batched(iter(slides), batch):
        with uow.write() as session:
            _ensure_shared(session, group)
        with uow.write() as session:
            registered = _register_batch(session, group)
        result.registered += len(registered)
        result.skipped += len(group) - len(registered)
        result.slide_ids.extend(registered)
        if progress is not None:
            progress(result.registered + result.skipped)
    return result


def record_facts_many(uow: UnitOfWork, facts: Iterable[tuple[str, dict[str, float | str]]],
                      batch: int = BATCH, job_id: int | None = None) -> int:
    """Record (replace) facts of many slides, `batch` slides per transaction; returns slides written.
    The same rows as `facts.set_facts`, for migrations and re-measurements of whole collections."""
    written = 0
    for group in _batched(iter(facts), batch):
        with uow.write() as session:
            image_ids = _lookup(session, Image.slide_id, Image.id, [slide_id for slide_id, _ in group])
            missing = [slide_id for slide_id, _ in group if slide_id not in image_ids]
            if missing:
                raise LookupError(f"no slide {missing[0]!r}")
            rows = [fact_row(image_ids[slide_id], name, value, job_id)
                    for slide_id, values in group for name, value in values.items()]
            ids = sorted({row["image_id"] for row in rows})
            names = sorted({row["name"] for row in rows})
            dialect = session.get_bind().dialect.name
            for chunk in _chunked(ids):
                session.execute(delete(SlideFact).where(among(dialect, SlideFact.image_id, chunk),
                                                        SlideFact.name.in_(names)))
            insert_rows(session, SlideFact, rows)
            note_changed(session, ids)
        written += len(group)
    return written


def register_many_parallel(database_url: str, slides: Iterable[IngestedSlide], workers: int = 2,
                           batch: int = BATCH, progress: Callable[[int], None] | None = None) -> BulkResult:
    """`register_many` over `workers` processes; the database must already be at the current schema."""
    result = BulkResult()

    def done(group: list[IngestedSlide], registered: list[str]) -> None:
        result.registered += len(registered)
        result.skipped += len(group) - len(registered)
        result.slide_ids.extend(registered)
        if progress is not None:
            progress(result.registered + result.skipped)

    _in_processes(database_url, _register_group, _batched(iter(slides), batch), workers, done)
    return result


def record_facts_many_parallel(database_url: str, facts: Iterable[tuple[str, dict[str, float | str]]],
                               workers: int = 2, batch: int = BATCH) -> int:
    """`record_facts_many` over `workers` processes; returns slides written."""
    written = [0]

    def done(_: list[Any], count: int) -> None:
        written[0] += count

    _in_processes(database_url, _record_group, _batched(iter(facts), batch), workers, done)
    return written[0]


def _in_processes(database_url: str, work: Callable[[list[Any]], Any], groups: Iterator[list[Any]], workers: int,
                  done: Callable[[list[Any], Any], None]) -> None:
    """Run `work` on each group in a pool of processes, a few groups in flight per process (bounded
    memory); `done` gets each group's result as it completes. The first failure stops the load."""
    context = multiprocessing.get_context("spawn")  # the caller may hold threads and connections
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_open_worker,
                             initargs=(database_url,)) as pool:
        pending: dict[Future[Any], list[Any]] = {}
        for group in groups:
            pending[pool.submit(work, group)] = group
            if len(pending) >= 2 * workers:
                _collect(pending, done, FIRST_COMPLETED)
        _collect(pending, done, ALL_COMPLETED)


def _collect(pending: dict[Future[Any], list[Any]], done: Callable[[list[Any], Any], None], when: str) -> None:
    finished, _ = wait(pending, return_when=when)
    for future in finished:
        done(pending.pop(future), future.result())


_worker_uow: list[UnitOfWork] = []  # the pool process's own connection pool


def _open_worker(database_url: str) -> None:
    _worker_uow.append(UnitOfWork(create_database_engine(database_url)))


def _register_group(group: list[IngestedSlide]) -> list[str]:
    return _retrying(lambda: register_many(_worker_uow[0], group, batch=len(group)).slide_ids)


def _record_group(group: list[tuple[str, dict[str, float | str]]]) -> int:
    return _retrying(lambda: record_facts_many(_worker_uow[0], group, batch=len(group)))


RETRIES = 8
Result = TypeVar("Result")


def _retrying(attempt: Callable[[], Result]) -> Result:
    """Run a batch again when a concurrent batch won a race for the same rows (its transaction was
    rolled back whole, so running it again is safe: what exists now is found, not inserted)."""
    for tries in range(RETRIES):
        try:
            return attempt()
        except Exception as error:  # SQLAlchemy's wrapper, or the driver's own error from COPY
            cause = getattr(error, "orig", error)
            state = str(getattr(cause, "sqlstate", "") or "")  # PostgreSQL's: unique violation, rollback class
            if tries == RETRIES - 1 or not (state == "23505" or state.startswith("40")):
                raise
            time.sleep(0.05 * (tries + 1))
    raise AssertionError("unreachable")


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while group := list(islice(items, size)):
        yield group


def _ensure_shared(session: Session, group: list[IngestedSlide]) -> None:
    """Create the stainings the batch names in existing datasets, in a transaction of their own ahead of it.

    Every batch of a dataset shares them: created inside the batch, a new one would make each
    concurrent batch naming it wait for the creator's commit, then fail and run again whole. A batch
    that fails later may leave a staining no slide uses yet (a dataset's vocabulary, never shown on
    its own); new datasets are still created in the batch, so a refused batch leaves none."""
    names = sorted({dataset_alias(slide.description.dataset) for slide in group})
    datasets = _lookup(session, Dataset.alias, Dataset.id, names)
    graph = _SampleGraph(session)
    for slide in group:
        dataset_id = datasets.get(dataset_alias(slide.description.dataset))
        for stain in split_stains(slide.description.stain) if dataset_id is not None else ():
            values = staining_values(dataset_id, stain)
            graph.want(Staining, dataset_id, values["alias"], values)
    graph.write()


def _register_batch(session: Session, group: list[IngestedSlide]) -> list[str]:
    slides = _new_slides(session, group)
    if not slides:
        return []
    found = {name: ensure_dataset(session, name) for name in {s.description.dataset for s in slides}}
    datasets = {name: dataset.id for name, dataset in found.items()}
    graph = _SampleGraph(session)
    glasses: list[Key] = []
    for slide in slides:
        description = slide.description
        dataset_id = datasets[description.dataset]
        aliases = SampleAliases(*description.sample_aliases) if description.sample_aliases \
            else SampleAliases.for_image(description, slide.slide_id)
        being = graph.want(BiologicalBeing, dataset_id, aliases.being,
                           {**coded("species", _normalised(SPECIES, description.species)),
                            **coded("sex", _normalised(SEX, description.sex))})
        case = graph.want(Case, dataset_id, aliases.case, {}, biological_being_id=being)
        extraction = EXTRACTION_METHODS.lookup(description.specimen_type)
        age = clean_label(description.age_at_extraction)
        specimen = graph.want(Specimen, dataset_id, aliases.specimen, {
            "age_at_extraction": age.upper()[:32] if age else None,
            **coded("anatomical_site", _normalised(ANATOMICAL_SITES, description.anatomical_site)),
            **coded("specimen_type", _normalised(SPECIMEN_TYPES, description.specimen_type)),
            **coded("fixation_type", _normalised(FIXATION_TYPES, description.fixation_type)),
            **coded("extraction_method", extraction.term if extraction else None),
        }, biological_being_id=being, case_id=case)
        block = graph.want(Block, dataset_id, aliases.block,
                           coded("block_preparation", _normalised(BLOCK_PREPARATIONS, description.block_preparation)))
        graph.link(block_specimens, block, specimen)
        glass = graph.want(Slide, dataset_id, aliases.slide, {}, block_id=block)
        for stain in split_stains(description.stain):
            values = staining_values(dataset_id, stain)
            graph.link(slide_stainings, glass, graph.want(Staining, dataset_id, values["alias"], values))
        glasses.append(glass)
    graph.write()

    image_ids = allocate_ids(session, Image, len(slides))
    insert_rows(session, Image, [
        {"id": image_id, **image_values(s, datasets[s.description.dataset], graph.id_of(Slide, g))}
        for s, g, image_id in zip(slides, glasses, image_ids, strict=True)])
    insert_rows(session, ImageLevel, [
        {"image_id": image_id, "level": index, "width": level.width, "height": level.height,
         "downsample": float(level.downsample)}
        for slide, image_id in zip(slides, image_ids, strict=True) for index, level in enumerate(slide.levels)])
    files = [(image_id, f) for slide, image_id in zip(slides, image_ids, strict=True) for f in slide.files]
    file_ids = allocate_ids(session, ImageFile, len(files))
    insert_rows(session, ImageFile, [
        {"id": file_id, "image_id": image_id, "role": f.role, "sha256": f.sha256, "size": f.size, "level": f.level,
         "media_type": f.media_type, "key_header": f.key_header} for (image_id, f), file_id in zip(files, file_ids,
                                                                                                   strict=True)])
    insert_rows(session, DicomInstance, [
        {"image_id": image_id, "file_id": file_id, **asdict(f.dicom)}
        for (image_id, f), file_id in zip(files, file_ids, strict=True) if f.dicom is not None])
    observations = {image_id: diagnosis_values(slide.slide_id, datasets[slide.description.dataset], image_id, diagnosis)
                    for slide, image_id in zip(slides, image_ids, strict=True)
                    if (diagnosis := clean_label(slide.description.diagnosis))}
    insert_rows(session, Observation, list(observations.values()))
    facets: FacetRows = {}
    fresh: set[int] = set()
    for slide, glass, image_id in zip(slides, glasses, image_ids, strict=True):
        if graph.add_facets(facets, image_id, glass):  # the chain is new: nothing else describes it
            fresh.add(image_id)
            add_facet(facets, image_id, "dataset", found[slide.description.dataset].alias)
            add_facet(facets, image_id, "vendor", slide.vendor)
            if (observation := observations.get(image_id)) is not None:
                add_facet(facets, image_id, "diagnosis", _displayed(observation))
    index_images(session, image_ids, facets, fresh)
    return [slide.slide_id for slide in slides]


def _displayed(observation: dict[str, Any]) -> str | None:
    """What the facet index shows of an observation: COALESCE(meaning, free_text), as `facets` reads it."""
    meaning = observation.get("meaning")
    return meaning if meaning is not None else observation.get("free_text")


def _new_slides(session: Session, group: list[IngestedSlide]) -> list[IngestedSlide]:
    """The slides not registered yet; one registered before from the same source is skipped (a resumed
    load), a slide id or source taken by another slide is an error (the batch is not written)."""
    for slide in group:
        if not SLIDE_ID_PATTERN.fullmatch(slide.slide_id):
            raise ValueError(f"slide id {slide.slide_id!r} is not a valid identifier")
    by_id = _lookup(session, Image.slide_id, Image.source_sha256, [s.slide_id for s in group])
    by_source = _lookup(session, Image.source_sha256, Image.slide_id, [s.source_sha256 for s in group])
    fresh = []
    for slide in group:
        if by_id.get(slide.slide_id) == slide.source_sha256:
            continue
        if slide.slide_id in by_id:
            raise SlideIdTakenError(slide.slide_id)
        if slide.source_sha256 in by_source:
            raise DuplicateSourceError(by_source[slide.source_sha256])
        fresh.append(slide)
    return fresh


class _SampleGraph:
    """Get-or-create of sample objects by (dataset, alias), set-wise: `want` collects, `write` looks
    up what exists, inserts the rest model by model (parents first) and links them."""

    ORDER = (BiologicalBeing, Case, Specimen, Block, Slide, Staining)
    PARENTS = {"biological_being_id": BiologicalBeing, "case_id": Case, "block_id": Block}

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: dict[type, dict[Key, tuple[dict[str, Any], dict[str, Key]]]] = {m: {} for m in self.ORDER}
        self.ids: dict[type, dict[Key, int]] = {m: {} for m in self.ORDER}
        self.links: dict[Any, set[tuple[Key, Key]]] = {block_specimens: set(), slide_stainings: set()}
        self.created: dict[type, set[Key]] = {m: set() for m in self.ORDER}
        self.staining_names: dict[Key, str] = {}
        self.linked: dict[Any, dict[Key, list[Key]]] = {block_specimens: {}, slide_stainings: {}}  # left -> rights

    def want(self, model: type[Sample], dataset_id: int, alias: str, values: dict[str, Any], **parents: Key) -> Key:
        """The key of this object; the first description of a shared object wins, as in registration."""
        key = (dataset_id, alias)
        self.pending[model].setdefault(key, (values, parents))
        return key

    def link(self, table: Any, left: Key, right: Key) -> None:
        self.links[table].add((left, right))

    def id_of(self, model: type, key: Key) -> int:
        return self.ids[model][key]

    def write(self) -> None:
        for model in self.ORDER:
            entries = self.pending[model]
            existing = self._existing(model, list(entries))
            self.ids[model].update(existing)
            new = [key for key in entries if key not in existing]
            self.created[model] = set(new)
            self.ids[model].update(zip(new, allocate_ids(self.session, model, len(new)), strict=True))
            insert_rows(self.session, model, [
                {"id": self.ids[model][key], "dataset_id": key[0], "alias": key[1], **entries[key][0],
                 **{column: self.ids[self.PARENTS[column]][parent] for column, parent in entries[key][1].items()}}
                for key in new
            ])
        self._write_links(block_specimens, Block, Specimen, "block_id", "specimen_id")
        self._write_links(slide_stainings, Slide, Staining, "glass_slide_id", "staining_id")
        for table, pairs in self.links.items():
            for left, right in sorted(pairs):
                self.linked[table].setdefault(left, []).append(right)
        self._read_staining_names()

    def add_facets(self, rows: FacetRows, image_id: int, glass: Key) -> bool:
        """Add the species, organ and stain facets of an image on glass slide `glass` when this batch
        created its whole chain (slide, block, the block's specimens, their beings and cases): then no
        observation or other description can hang on it yet. False, adding nothing, otherwise."""
        created = self.created
        if glass not in created[Slide]:
            return False
        block = self.pending[Slide][glass][1]["block_id"]
        if block not in created[Block]:
            return False
        specimens = self.linked[block_specimens].get(block, [])
        chains = [self.pending[Specimen][specimen][1] for specimen in specimens]
        if not all(specimen in created[Specimen] for specimen in specimens) or not all(
                parents["biological_being_id"] in created[BiologicalBeing]
                and (parents.get("case_id") is None or parents["case_id"] in created[Case]) for parents in chains):
            return False
        for specimen, parents in zip(specimens, chains, strict=True):
            add_facet(rows, image_id, "species", self.pending[BiologicalBeing][parents["biological_being_id"]][0]
                      .get("species"))
            add_facet(rows, image_id, "organ", self.pending[Specimen][specimen][0].get("anatomical_site"))
        for staining in self.linked[slide_stainings].get(glass, []):
            add_facet(rows, image_id, "stain", self.staining_names[staining])
        return True

    def _read_staining_names(self) -> None:
        """Names of the stainings this batch links (new ones from their rows, existing ones looked up)."""
        for key in self.created[Staining]:
            self.staining_names[key] = self.pending[Staining][key][0]["name"]
        existing = {self.ids[Staining][key]: key for key in self.pending[Staining] if key not in self.created[Staining]}
        if existing:
            names = _lookup(self.session, Staining.id, Staining.name, sorted(existing))
            self.staining_names.update({key: names[object_id] for object_id, key in existing.items()})

    def _existing(self, model: Any, keys: list[Key]) -> dict[Key, int]:
        """The ids of the objects among `keys` that exist: one lookup by alias over the datasets
        concerned (an alias seldom repeats across datasets; the pairs are matched here)."""
        wanted = set(keys)
        datasets = sorted({dataset_id for dataset_id, _ in keys})
        found = _lookup(self.session, model.alias, (model.dataset_id, model.id), sorted({a for _, a in keys}),
                        model.dataset_id.in_(datasets), many=True)
        return {(dataset_id, alias): object_id for alias, (dataset_id, object_id) in found
                if (dataset_id, alias) in wanted}

    def _write_links(self, table: Any, left: type, right: type, left_column: str, right_column: str) -> None:
        pairs = {(self.ids[left][a], self.ids[right][b]) for a, b in self.links[table]}
        if not pairs:
            return
        existing = set(_lookup(self.session, table.c[left_column], table.c[right_column],
                               sorted({a for a, _ in pairs}), many=True))
        rows = [{left_column: a, right_column: b} for a, b in sorted(pairs - existing)]
        insert_rows(self.session, table, rows)


def _lookup(session: Session, key: Any, value: Any, keys: list[Any], *where: Any, many: bool = False) -> Any:
    """{key: value} for the rows whose `key` is among `keys` (chunked); with `many`, every
    (key, value) pair instead. `value` may be a tuple of columns (then values are tuples)."""
    dialect = session.get_bind().dialect.name
    columns = value if isinstance(value, tuple) else (value,)
    pairs: list[tuple[Any, Any]] = []
    for chunk in _chunked(keys):
        for row in session.execute(select(key, *columns).where(among(dialect, key, chunk), *where)):
            pairs.append((row[0], tuple(row[1:]) if isinstance(value, tuple) else row[1]))
    return pairs if many else dict(pairs)


def _chunked(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), LOOKUP):
        yield values[start : start + LOOKUP]


_TERMS: dict[tuple[str, str], Term | None] = {}


def _normalised(vocabulary: Vocabulary, value: str | None) -> Term | None:
    """Vocabulary lookups repeat across a million records; each distinct value is looked up once."""
    if value is None:
        return None
    key = (vocabulary.attribute, value)
    if key not in _TERMS:
        if len(_TERMS) > 100_000:
            _TERMS.clear()
        _TERMS[key] = vocabulary.normalise(value)
    return _TERMS[key]
