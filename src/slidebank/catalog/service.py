"""The catalog service: register ingested slides as a MetaFleX graph, describe them, search them.

Callers get plain JSON-serialisable dicts, never ORM objects, so the HTTP and CLI layers cannot
trigger lazy loads or hold sessions open.

Registration is one transaction. Uniqueness (same source bytes, same slide id, shared objects such
as a dataset or a subject created by two ingests at once) is decided by the database's unique
constraints, not by the pre-checks, which only give early, friendly errors: a constraint violation
rolls back, is re-examined, and becomes `DuplicateSourceError`, `SlideIdTakenError` or a retry.

Search is faceted at image level over `image_facets`, a derived index written in the same
transaction as the graph: OR within a facet, AND across facets, and each facet's counts computed
with every *other* facet's filter applied, all by GROUP BY in SQL.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Engine,
    Select,
    delete,
    func,
    insert,
    or_,
    select,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from slidebank.catalog.database import WRITE_OPTIONS, iso_utc, session_factory
from slidebank.catalog.models import (
    Annotation,
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    Image,
    ImageFacet,
    ImageFile,
    ImageLevel,
    Observation,
    Organisation,
    Policy,
    Slide,
    SlideFact,
    Specimen,
    Staining,
    block_specimens,
    slide_stainings,
)
from slidebank.catalog.records import IngestedSlide, SlideDescription, StoredFile
from slidebank.catalog.vocabulary import (
    ANATOMICAL_SITES,
    BLOCK_PREPARATIONS,
    EXTRACTION_METHODS,
    FIXATION_TYPES,
    SEX,
    SPECIES,
    SPECIMEN_TYPES,
    STAINS,
    Code,
    Term,
    Vocabulary,
    clean_text,
    normalise_key,
    split_stains,
    stain_entry,
)

SLIDE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FACETS: tuple[str, ...] = ("dataset", "species", "organ", "stain", "vendor", "diagnosis")
SUMMARY_FACETS: tuple[str, ...] = ("species", "organ", "stain", "diagnosis")
FACET_VOCABULARIES: dict[str, Vocabulary] = {"species": SPECIES, "organ": ANATOMICAL_SITES, "stain": STAINS}

DEFAULT_DATASET = "default"
DEFAULT_POLICY = "controlled-access"
DEFAULT_ORGANISATION = "local"
NO_RESTRICTION = {"code": "DUO:0000004", "scheme": "DUO", "meaning": "no restriction"}

UNSPECIFIED = "unspecified"
SAMPLE_KINDS = ("subject", "case", "specimen", "block", "slide")
MAX_ALIAS = 255
MAX_FACET_VALUE = 255
REGISTER_ATTEMPTS = 4
CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
MAX_LIMIT = 10_000

SampleT = TypeVar("SampleT", BiologicalBeing, Case, Specimen, Block, Slide)


class CatalogError(Exception):
    """Base class of the catalog's own errors."""


class DuplicateSourceError(CatalogError):
    """The same source bytes are already in the catalog, as `slide_id`."""

    def __init__(self, slide_id: str) -> None:
        self.slide_id = slide_id
        super().__init__(f"this source is already ingested as slide {slide_id!r}")


class SlideIdTakenError(CatalogError):
    """Another image already uses this slide id."""

    def __init__(self, slide_id: str) -> None:
        self.slide_id = slide_id
        super().__init__(f"slide id {slide_id!r} is already taken")


FACT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
FACT_CONDITION = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9_.]+)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>'[^']*'|\"[^\"]*\"|[-+0-9.eE]+)\s*$"
)
FACT_OPERATORS = ("<", "<=", "=", "!=", ">=", ">")


@dataclass(frozen=True)
class FactCondition:
    """One test on a slide-level fact, e.g. `qc.blur_fraction < 0.05` or `qc.flags = ''`."""

    name: str
    op: str
    value: float | str

    @classmethod
    def parse_all(cls, text: str) -> tuple[FactCondition, ...]:
        """Conditions joined by `and`; CatalogError with the offending part when one is malformed."""
        conditions = []
        for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
            match = FACT_CONDITION.match(part)
            if not match or not FACT_NAME.match(match["name"]):
                raise CatalogError(f"cannot read condition {part!r}; write e.g. qc.blur_fraction < 0.05")
            raw = match["value"]
            if raw[0] in "'\"":
                if match["op"] not in ("=", "!="):
                    raise CatalogError(f"text can only be compared with = or != in {part!r}")
                value: float | str = raw[1:-1]
            else:
                try:
                    value = float(raw)
                except ValueError:
                    raise CatalogError(f"{raw!r} is not a number in {part!r}") from None
            conditions.append(cls(match["name"], match["op"], value))
        return tuple(conditions)

    def clause(self) -> ColumnElement[bool]:
        column = SlideFact.text if isinstance(self.value, str) else SlideFact.value
        test = {
            "<": column < self.value, "<=": column <= self.value, "=": column == self.value,
            "!=": column != self.value, ">=": column >= self.value, ">": column > self.value,
        }[self.op]
        return Image.id.in_(select(SlideFact.image_id).where(SlideFact.name == self.name, test))


@dataclass(frozen=True)
class SearchQuery:
    """Faceted search: OR within a facet, AND across facets; `text` matches id, alias and diagnosis.

    `visible_datasets`, when given, restricts everything — items, total and facet counts — to
    those datasets, so that counts never reveal what a caller may not see.
    """

    dataset: Sequence[str] | None = None
    species: Sequence[str] | None = None
    organ: Sequence[str] | None = None
    stain: Sequence[str] | None = None
    vendor: Sequence[str] | None = None
    diagnosis: Sequence[str] | None = None
    text: str | None = None
    where: Sequence[FactCondition] = ()
    limit: int = 50
    offset: int = 0
    visible_datasets: Sequence[str] | None = None

    def facet_values(self, facet: str) -> list[str]:
        """The filter values of one facet; a bare string counts as one value, not as characters."""
        values = getattr(self, facet)
        if values is None:
            return []
        return [values] if isinstance(values, str) else [str(v) for v in values]


@dataclass(frozen=True)
class ErasedSubject:
    slide_ids: tuple[str, ...]
    datasets: tuple[str, ...]
    blobs: frozenset[str]  # sha256 of every stored file the erased images used
    beings: int


@dataclass(frozen=True)
class SearchResult:
    """One page of matching images, the total match count, and (value, count) pairs per facet."""

    total: int
    items: list[dict[str, Any]]
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleAliases:
    """Dataset-unique aliases for the sample chain of one image.

    A level the submitter named is shared by every image that names it within the same parent
    (its alias is the path "SUBJ-…/case/specimen"). A level left out *above* the deepest named one
    is the parent's shared "unspecified" placeholder, so two slides of specimen "S1" with no case
    given still share that specimen. A level left out *below* it belongs to this image alone and is
    called "<kind>:<slide id>", which no submitter path (always containing '/') can equal.
    """

    being: str
    case: str
    specimen: str
    block: str
    slide: str

    @classmethod
    def for_image(cls, description: SlideDescription, slide_id: str) -> SampleAliases:
        given = [
            _text(description.subject),
            _text(description.case),
            _text(description.specimen),
            _text(description.block),
            _text(description.slide),
        ]
        deepest = max((i for i, label in enumerate(given) if label), default=-1)
        aliases: list[str] = []
        for index, (kind, label) in enumerate(zip(SAMPLE_KINDS, given, strict=True)):
            if label is None and index > deepest:
                aliases.append(f"{kind}:{slide_id}")
                continue
            name = label or UNSPECIFIED
            aliases.append(_bounded_alias(f"{aliases[-1]}/{name}" if aliases else name))
        return cls(*aliases)


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = clean_text(value)
    return cleaned or None


def _bounded_alias(alias: str) -> str:
    """Aliases fit the column; an over-long path keeps its start and a digest of the whole."""
    if len(alias) <= MAX_ALIAS:
        return alias
    digest = hashlib.sha256(alias.encode()).hexdigest()[:16]
    return f"{alias[: MAX_ALIAS - 18]}~{digest}"



def _code(code: str | None, scheme: str | None, meaning: str | None) -> dict[str, str] | None:
    if code is None:
        return None
    return {"code": code, "scheme": scheme or "", "meaning": meaning or ""}


def _term(obj: Any, attribute: str) -> dict[str, Any] | None:
    """A coded attribute as {name, code, scheme, meaning}; None when unset."""
    name = getattr(obj, attribute, None) if obj is not None else None
    if name is None:
        return None
    return {
        "name": name,
        "code": getattr(obj, f"{attribute}_code"),
        "scheme": getattr(obj, f"{attribute}_scheme"),
        "meaning": getattr(obj, f"{attribute}_meaning"),
    }


def _fill(obj: Any, attribute: str, term: Term | None) -> None:
    """Set a coded attribute unless already set: the first description of a shared object wins."""
    if term is None or getattr(obj, attribute) is not None:
        return
    setattr(obj, attribute, term.name[:MAX_ALIAS])
    setattr(obj, f"{attribute}_code", term.code.code if term.code else None)
    setattr(obj, f"{attribute}_scheme", term.code.scheme if term.code else None)
    setattr(obj, f"{attribute}_meaning", term.code.meaning if term.code else None)


def _chunks(values: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _facet_key(value: str) -> str:
    return normalise_key(value)[:MAX_FACET_VALUE]


class Catalog:
    """The catalog of one node, over any SQLAlchemy engine made by `create_catalog_engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = session_factory(engine)
        self._write = session_factory(engine.execution_options(**WRITE_OPTIONS))

    # --- registration -------------------------------------------------------------------------

    def register(self, slide: IngestedSlide) -> str:
        """Create the image and its whole sample graph in one transaction; return the slide id."""
        if not SLIDE_ID_PATTERN.fullmatch(slide.slide_id):
            raise ValueError(f"slide id {slide.slide_id!r} is not a valid identifier")
        self._raise_if_taken(slide)
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                with self._write.begin() as session:
                    self._raise_if_taken(slide, session)
                    self._insert(session, slide)
                return slide.slide_id
            except IntegrityError:
                # A concurrent writer won a unique constraint. Re-read after the rollback to say which.
                self._raise_if_taken(slide)
                if attempt == REGISTER_ATTEMPTS - 1:
                    raise
                # It created a shared object (dataset, subject, staining…) first: the retry finds it.
        raise AssertionError("unreachable")

    def _raise_if_taken(self, slide: IngestedSlide, session: Session | None = None) -> None:
        if session is None:
            with self._read() as own:
                self._raise_if_taken(slide, own)
            return
        existing = session.scalar(select(Image.slide_id).where(Image.source_sha256 == slide.source_sha256))
        if existing is not None:
            raise DuplicateSourceError(existing)
        if session.scalar(select(Image.id).where(Image.slide_id == slide.slide_id)) is not None:
            raise SlideIdTakenError(slide.slide_id)

    def _insert(self, session: Session, slide: IngestedSlide) -> Image:
        description = slide.description
        dataset = self._dataset(session, description.dataset)
        aliases = SampleAliases.for_image(description, slide.slide_id)

        being = self._get_or_create(session, BiologicalBeing, dataset, aliases.being)
        _fill(being, "species", SPECIES.normalise(description.species))
        _fill(being, "sex", SEX.normalise(description.sex))

        case = self._get_or_create(session, Case, dataset, aliases.case, biological_being_id=being.id)
        specimen = self._get_or_create(
            session, Specimen, dataset, aliases.specimen, biological_being_id=being.id, case_id=case.id
        )
        age = _text(description.age_at_extraction)
        if age and specimen.age_at_extraction is None:
            specimen.age_at_extraction = age.upper()[:32]
        _fill(specimen, "anatomical_site", ANATOMICAL_SITES.normalise(description.anatomical_site))
        _fill(specimen, "specimen_type", SPECIMEN_TYPES.normalise(description.specimen_type))
        _fill(specimen, "fixation_type", FIXATION_TYPES.normalise(description.fixation_type))
        extraction = EXTRACTION_METHODS.lookup(description.specimen_type)  # "biopsy" is also how it was taken
        _fill(specimen, "extraction_method", extraction.term if extraction else None)

        block = self._get_or_create(session, Block, dataset, aliases.block)
        _fill(block, "block_preparation", BLOCK_PREPARATIONS.normalise(description.block_preparation))
        sampled = session.scalar(
            select(block_specimens.c.block_id).where(
                block_specimens.c.block_id == block.id, block_specimens.c.specimen_id == specimen.id
            )
        )
        if sampled is None:
            session.execute(insert(block_specimens).values(block_id=block.id, specimen_id=specimen.id))

        glass = self._get_or_create(session, Slide, dataset, aliases.slide, block_id=block.id)
        for stain in split_stains(description.stain):
            staining = self._staining(session, dataset, stain)
            linked = session.scalar(
                select(slide_stainings.c.staining_id).where(
                    slide_stainings.c.glass_slide_id == glass.id, slide_stainings.c.staining_id == staining.id
                )
            )
            if linked is None:
                session.execute(insert(slide_stainings).values(glass_slide_id=glass.id, staining_id=staining.id))

        image = Image(
            alias=slide.slide_id,
            slide_id=slide.slide_id,
            dataset_id=dataset.id,
            glass_slide_id=glass.id,
            image_type="WSI",
            width=slide.width,
            height=slide.height,
            tile_width=slide.tile_width,
            tile_height=slide.tile_height,
            level_count=len(slide.levels),
            mpp_x=slide.mpp_x,
            mpp_y=slide.mpp_y,
            objective_power=slide.objective_power,
            vendor=slide.vendor,
            original_format=slide.original_format,
            scanner_manufacturer=slide.scanner_manufacturer,
            scanner_model=slide.scanner_model,
            source_sha256=slide.source_sha256,
            source_size=slide.source_size,
            source_name_pseudonym=slide.source_name_pseudonym,
            canonical_size=slide.canonical_size,
            transfer_syntax=slide.transfer_syntax,
            source_associated_images=list(slide.source_associated_images),
            provenance=dict(slide.provenance),
            thumbnail_sha256=slide.thumbnail_sha256,
            ingested_at=datetime.now(UTC),
        )
        image.levels = [
            ImageLevel(level=index, width=level.width, height=level.height, downsample=float(level.downsample))
            for index, level in enumerate(slide.levels)
        ]
        image.files = [
            ImageFile(role=f.role, sha256=f.sha256, size=f.size, level=f.level, media_type=f.media_type,
                      key_header=f.key_header if f.key_header is not None else self._existing_key(session, f.sha256))
            for f in slide.files
        ]
        session.add(image)
        session.flush()

        diagnosis = _text(description.diagnosis)
        if diagnosis:
            session.add(
                Observation(
                    alias=_bounded_alias(f"{slide.slide_id}/diagnosis"),
                    dataset_id=dataset.id,
                    statement_type="Diagnosis",
                    statement_status="Distinct",
                    free_text=diagnosis,
                    image_id=image.id,
                )
            )
            session.flush()
        self._index_images(session, [image.id])
        return image

    def _get_or_create(
        self, session: Session, model: type[SampleT], dataset: Dataset, alias: str, **parents: int
    ) -> SampleT:
        """The sample object with this alias in the dataset, created (with these parents) if missing."""
        found = session.scalar(select(model).where(model.dataset_id == dataset.id, model.alias == alias))
        if found is not None:
            return found
        created = model(dataset_id=dataset.id, alias=alias, **parents)
        session.add(created)
        session.flush()  # a concurrent twin fails here, and register() retries
        return created

    def _staining(self, session: Session, dataset: Dataset, stain: str) -> Staining:
        term = STAINS.normalise(stain)
        assert term is not None
        name = term.name[:MAX_ALIAS]
        found = session.scalar(select(Staining).where(Staining.dataset_id == dataset.id, Staining.alias == name))
        if found is not None:
            return found
        entry = stain_entry(name)
        procedure: Code | None = entry.code if entry else None
        staining = Staining(
            dataset_id=dataset.id,
            alias=name,
            name=name,
            kind=entry.kind if entry else None,
            procedure_code=procedure.code if procedure else None,
            procedure_scheme=procedure.scheme if procedure else None,
            procedure_meaning=procedure.meaning if procedure else None,
            substances=[code.to_json() for code in entry.substances] if entry else [],
        )
        session.add(staining)
        session.flush()
        return staining

    def _dataset(self, session: Session, name: str | None) -> Dataset:
        """Get or create the dataset; a new one goes under the node's default policy and organisation."""
        alias = (_text(name) or DEFAULT_DATASET)[:MAX_ALIAS]
        found = session.scalar(select(Dataset).where(Dataset.alias == alias))
        if found is not None:
            return found
        policy = session.scalar(select(Policy).where(Policy.alias == DEFAULT_POLICY))
        if policy is None:
            # A dataset nobody described yet is closed: readable through grants only, never by default.
            policy = Policy(
                alias=DEFAULT_POLICY,
                name="Controlled access",
                description="Access is granted by the dataset's data access committee on request.",
                data_use=[],
            )
            session.add(policy)
        organisation = session.scalar(select(Organisation).where(Organisation.alias == DEFAULT_ORGANISATION))
        if organisation is None:
            organisation = Organisation(alias=DEFAULT_ORGANISATION, name="This Slidebank node")
            session.add(organisation)
        session.flush()
        dataset = Dataset(
            alias=alias, title=alias, short_name=alias[:64], policy_id=policy.id, organisation_id=organisation.id
        )
        session.add(dataset)
        session.flush()
        return dataset

    # --- facet index --------------------------------------------------------------------------

    def refresh_facets(self, slide_ids: Iterable[str] | None = None) -> int:
        """Rebuild the facet index from the graph (all images, or these); returns images indexed.

        Registration keeps the index current; call this after editing metadata in other ways.
        """
        with self._write.begin() as session:
            statement = select(Image.id).order_by(Image.id)
            if slide_ids is not None:
                statement = statement.where(Image.slide_id.in_(list(slide_ids)))
            ids = list(session.scalars(statement))
            for chunk in _chunks(ids):
                self._index_images(session, chunk)
        return len(ids)

    def _index_images(self, session: Session, image_ids: Sequence[int]) -> None:
        rows: dict[tuple[int, str, str], str] = {}
        for facet, statement in self._facet_sources(image_ids):
            for image_id, raw in session.execute(statement):
                if raw is None:
                    continue
                value = clean_text(str(raw))[:MAX_FACET_VALUE]
                key = _facet_key(value)
                if key:
                    rows.setdefault((image_id, facet, key), value)
        session.execute(delete(ImageFacet).where(ImageFacet.image_id.in_(image_ids)))
        if rows:
            session.execute(
                insert(ImageFacet),
                [{"image_id": i, "facet": f, "key": k, "value": v} for (i, f, k), v in rows.items()],
            )

    @staticmethod
    def _facet_sources(image_ids: Sequence[int]) -> list[tuple[str, Select[Any]]]:
        """(facet, SELECT image_id, value) for each facet, following the graph's paths."""
        mine = Image.id.in_(image_ids)
        to_specimen = (
            select(Image.id)
            .join(Slide, Slide.id == Image.glass_slide_id)
            .join(block_specimens, block_specimens.c.block_id == Slide.block_id)
            .join(Specimen, Specimen.id == block_specimens.c.specimen_id)
            .where(mine)
        )
        diagnosis_text = func.coalesce(Observation.meaning, Observation.free_text)
        is_diagnosis = Observation.statement_type == "Diagnosis"
        diagnoses = union_all(
            select(Image.id, diagnosis_text)
            .join(Observation, Observation.image_id == Image.id)
            .where(mine, is_diagnosis),
            select(Image.id, diagnosis_text)
            .join(Observation, Observation.glass_slide_id == Image.glass_slide_id)
            .where(mine, is_diagnosis),
            select(Image.id, diagnosis_text)
            .join(Slide, Slide.id == Image.glass_slide_id)
            .join(Observation, Observation.block_id == Slide.block_id)
            .where(mine, is_diagnosis),
            to_specimen.add_columns(diagnosis_text)
            .join(Observation, Observation.specimen_id == Specimen.id)
            .where(is_diagnosis),
            to_specimen.add_columns(diagnosis_text)
            .join(Observation, Observation.case_id == Specimen.case_id)
            .where(is_diagnosis),
            to_specimen.add_columns(diagnosis_text)
            .join(Observation, Observation.biological_being_id == Specimen.biological_being_id)
            .where(is_diagnosis),
        )
        return [
            ("dataset", select(Image.id, Dataset.alias).join(Dataset, Dataset.id == Image.dataset_id).where(mine)),
            ("vendor", select(Image.id, Image.vendor).where(mine)),
            (
                "species",
                to_specimen.add_columns(BiologicalBeing.species).join(
                    BiologicalBeing, BiologicalBeing.id == Specimen.biological_being_id
                ),
            ),
            ("organ", to_specimen.add_columns(Specimen.anatomical_site)),
            (
                "stain",
                select(Image.id, Staining.name)
                .join(slide_stainings, slide_stainings.c.glass_slide_id == Image.glass_slide_id)
                .join(Staining, Staining.id == slide_stainings.c.staining_id)
                .where(mine),
            ),
            ("diagnosis", select(diagnoses.subquery())),
        ]

    # --- lookups ------------------------------------------------------------------------------

    def slide_id_for_source(self, sha256: str) -> str | None:
        """The slide already ingested from these source bytes, if any (de-duplication)."""
        with self._read() as session:
            return session.scalar(select(Image.slide_id).where(Image.source_sha256 == sha256))

    def slide_exists(self, slide_id: str) -> bool:
        with self._read() as session:
            return session.scalar(select(Image.id).where(Image.slide_id == slide_id)) is not None

    def slide_dataset(self, slide_id: str) -> str | None:
        """The dataset a slide belongs to (what access is decided on); None if there is no such slide."""
        with self._read() as session:
            return session.scalar(
                select(Dataset.alias).join(Image, Image.dataset_id == Dataset.id).where(Image.slide_id == slide_id)
            )

    @staticmethod
    def _existing_key(session: Session, sha256: str) -> bytes | None:
        """A blob stored before (same bytes, other image) keeps its payload: share its key header."""
        return session.scalar(
            select(ImageFile.key_header).where(ImageFile.sha256 == sha256, ImageFile.key_header.is_not(None)).limit(1)
        )

    def stored_files(self, slide_id: str) -> list[StoredFile]:
        """The blobs of a slide with their key headers: what reading its pixels needs."""
        with self._read() as session:
            rows = session.scalars(
                select(ImageFile).join(Image, Image.id == ImageFile.image_id).where(Image.slide_id == slide_id)
                .order_by(ImageFile.level, ImageFile.id)
            )
            return [StoredFile(f.role, f.sha256, f.size, f.level, f.media_type, f.key_header) for f in rows]

    def subject_datasets(self, pseudonym: str) -> set[str]:
        """The datasets that hold objects of the subject with this pseudonym (empty: unknown subject)."""
        with self._read() as session:
            return set(session.scalars(
                select(Dataset.alias).join(BiologicalBeing, BiologicalBeing.dataset_id == Dataset.id)
                .where(BiologicalBeing.alias == pseudonym)))

    def erase_subject(self, pseudonym: str) -> ErasedSubject:
        """Delete every object of one data subject, in every dataset: the being, its cases and
        specimens, the blocks holding its specimens, their slides and images (with levels, files,
        facets, annotations and observations, by cascade). One transaction; blobs are the caller's."""
        with self._write.begin() as session:
            beings = list(session.scalars(select(BiologicalBeing.id).where(BiologicalBeing.alias == pseudonym)))
            specimens = list(session.scalars(select(Specimen.id).where(Specimen.biological_being_id.in_(beings))))
            blocks = list(session.scalars(
                select(block_specimens.c.block_id).where(block_specimens.c.specimen_id.in_(specimens)).distinct()))
            slides = list(session.scalars(select(Slide.id).where(Slide.block_id.in_(blocks))))
            images = session.execute(
                select(Image.id, Image.slide_id, Dataset.alias, Image.thumbnail_sha256)
                .join(Dataset, Dataset.id == Image.dataset_id).where(Image.glass_slide_id.in_(slides))
            ).all()
            image_ids = [row.id for row in images]
            blobs = set(session.scalars(select(ImageFile.sha256).where(ImageFile.image_id.in_(image_ids))))
            blobs |= {row.thumbnail_sha256 for row in images if row.thumbnail_sha256}
            # Children first; observations, facets, files, levels and annotations go by ON DELETE CASCADE.
            for table, column, ids in (
                (Image, Image.id, image_ids), (Slide, Slide.id, slides), (Block, Block.id, blocks),
                (Specimen, Specimen.id, specimens), (Case, Case.biological_being_id, beings),
                (BiologicalBeing, BiologicalBeing.id, beings),
            ):
                session.execute(delete(table).where(column.in_(ids)))
            return ErasedSubject(
                slide_ids=tuple(row.slide_id for row in images), datasets=tuple(sorted({row.alias for row in images})),
                blobs=frozenset(blobs), beings=len(beings),
            )

    def referenced_blobs(self) -> set[str]:
        """Every blob the catalog points to; the blob store's garbage collector keeps exactly these."""
        statement: CompoundSelect[str | None] = union_all(
            select(ImageFile.sha256),
            select(Image.thumbnail_sha256).where(Image.thumbnail_sha256.is_not(None)),
            select(Annotation.sha256).where(Annotation.sha256.is_not(None)),
        )
        with self._read() as session:
            return {sha for sha in session.scalars(statement) if sha}

    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset with its policy, owner and number of images."""
        counts = select(Image.dataset_id, func.count().label("images")).group_by(Image.dataset_id).subquery()
        statement = (
            select(Dataset, Policy, Organisation.alias, func.coalesce(counts.c.images, 0))
            .join(Policy, Policy.id == Dataset.policy_id)
            .join(Organisation, Organisation.id == Dataset.organisation_id)
            .outerjoin(counts, counts.c.dataset_id == Dataset.id)
            .order_by(Dataset.alias)
        )
        with self._read() as session:
            return [
                {
                    "name": dataset.alias,
                    "title": dataset.title,
                    "accession": dataset.accession,
                    "uuid": dataset.uuid,
                    "policy": policy.alias,
                    "terms": policy.description,
                    "data_use": policy.codes,
                    "organisation": organisation,
                    "images": int(images),
                    "created_at": iso_utc(dataset.created_at),
                }
                for dataset, policy, organisation, images in session.execute(statement)
            ]

    # --- listing and search -------------------------------------------------------------------

    def list_slides(self) -> list[dict[str, Any]]:
        """A summary of every image, in ingest order."""
        with self._read() as session:
            items: list[dict[str, Any]] = []
            last_id = 0
            while True:  # keyset pagination: constant memory per batch, no OFFSET scans
                rows = session.execute(
                    self._summary_select().where(Image.id > last_id).order_by(Image.id).limit(CHUNK)
                ).all()
                if not rows:
                    return items
                items.extend(self._summaries(session, rows))
                last_id = rows[-1].id

    def search(self, query: SearchQuery) -> SearchResult:
        """Faceted search at image level; see `SearchQuery`."""
        filters = self._facet_filters(query)
        common = self._common_conditions(query)
        conditions = [*common, *filters.values()]
        limit = max(0, min(int(query.limit), MAX_LIMIT))
        offset = max(0, int(query.offset))
        with self._read() as session:
            total = session.scalar(select(func.count()).select_from(Image).where(*conditions)) or 0
            rows = session.execute(
                self._summary_select().where(*conditions).order_by(Image.id).limit(limit).offset(offset)
            ).all()
            items = self._summaries(session, rows)
            facets: dict[str, list[tuple[str, int]]] = {}
            for name in FACETS:
                others = [*common, *(condition for facet, condition in filters.items() if facet != name)]
                count = func.count().label("count")
                value = func.min(ImageFacet.value).label("value")
                statement = select(value, count).where(ImageFacet.facet == name)
                if others:
                    statement = statement.where(ImageFacet.image_id.in_(select(Image.id).where(*others)))
                statement = statement.group_by(ImageFacet.key).order_by(count.desc(), value)
                facets[name] = [(str(v), int(c)) for v, c in session.execute(statement)]
        return SearchResult(total=int(total), items=items, facets=facets)

    @staticmethod
    def _facet_filters(query: SearchQuery) -> dict[str, ColumnElement[bool]]:
        filters: dict[str, ColumnElement[bool]] = {}
        for name in FACETS:
            values = query.facet_values(name)
            if not values:
                continue
            vocabulary = FACET_VOCABULARIES.get(name)
            keys = {
                _facet_key(vocabulary.display_name(value) if vocabulary else clean_text(value))
                for value in values
                if clean_text(value)
            }
            if keys:
                filters[name] = Image.id.in_(
                    select(ImageFacet.image_id).where(ImageFacet.facet == name, ImageFacet.key.in_(sorted(keys)))
                )
        return filters

    @staticmethod
    def _common_conditions(query: SearchQuery) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [condition.clause() for condition in query.where]
        if query.visible_datasets is not None:
            visible = [clean_text(name) for name in query.visible_datasets]
            conditions.append(Image.dataset_id.in_(select(Dataset.id).where(Dataset.alias.in_(visible))))
        text = clean_text(query.text or "")
        if text:
            # Bound parameters plus autoescape: '%', '_' and quotes are literal characters.
            matches = [Image.slide_id.icontains(text, autoescape=True), Image.alias.icontains(text, autoescape=True)]
            key = normalise_key(text)
            if key:
                matches.append(
                    Image.id.in_(
                        select(ImageFacet.image_id).where(
                            ImageFacet.facet == "diagnosis", ImageFacet.key.contains(key, autoescape=True)
                        )
                    )
                )
            conditions.append(or_(*matches))
        return conditions

    @staticmethod
    def _summary_select() -> Select[int, str, str, int, int, str, datetime]:
        return select(
            Image.id,
            Image.slide_id,
            Dataset.alias.label("dataset"),
            Image.width,
            Image.height,
            Image.vendor,
            Image.ingested_at,
        ).join(Dataset, Dataset.id == Image.dataset_id)

    @staticmethod
    def _facet_strings(session: Session, image_ids: Sequence[int]) -> dict[int, dict[str, str]]:
        """ "; "-joined facet values per image, read from the facet index for just these images."""
        values: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for chunk in _chunks(list(image_ids)):
            statement = (
                select(ImageFacet.image_id, ImageFacet.facet, ImageFacet.value)
                .where(ImageFacet.image_id.in_(chunk), ImageFacet.facet.in_(SUMMARY_FACETS))
                .order_by(ImageFacet.image_id, ImageFacet.facet, ImageFacet.key)
            )
            for image_id, facet, value in session.execute(statement):
                values[image_id][facet].append(value)
        return {image_id: {f: "; ".join(v) for f, v in facets.items()} for image_id, facets in values.items()}

    def _summaries(self, session: Session, rows: Sequence[Any]) -> list[dict[str, Any]]:
        strings = self._facet_strings(session, [row.id for row in rows])
        return [
            {
                "slide_id": row.slide_id,
                "dataset": row.dataset,
                "width": row.width,
                "height": row.height,
                "vendor": row.vendor,
                "stain": strings.get(row.id, {}).get("stain"),
                "species": strings.get(row.id, {}).get("species"),
                "organ": strings.get(row.id, {}).get("organ"),
                "diagnosis": strings.get(row.id, {}).get("diagnosis"),
                "ingested_at": iso_utc(row.ingested_at),
            }
            for row in rows
        ]

    # --- slide-level facts (QC and other algorithm results) -----------------------------------

    def set_facts(self, slide_id: str, values: dict[str, float | str], job_id: int | None = None) -> None:
        """Record (replace) named numbers or words about one slide, with the job that measured them."""
        with self._write.begin() as session:
            image_id = session.scalar(select(Image.id).where(Image.slide_id == slide_id))
            if image_id is None:
                raise LookupError(f"no slide {slide_id!r}")
            if values:
                session.execute(delete(SlideFact).where(SlideFact.image_id == image_id, SlideFact.name.in_(list(values))))
            now = datetime.now(UTC)
            for name, value in values.items():
                if not FACT_NAME.match(name):
                    raise CatalogError(f"fact names are dotted lower-case words, not {name!r}")
                number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
                text = None if number is not None else str(value)[:MAX_FACET_VALUE]
                session.add(SlideFact(image_id=image_id, name=name, value=number, text=text, job_id=job_id,
                                      updated_at=now))

    def facts(self, slide_id: str) -> dict[str, dict[str, float | str | None]]:
        """{"qc": {"blur_fraction": 0.01, …}, "stain": {…}}: facts grouped by their first name part."""
        with self._read() as session:
            return self._facts(session, Image.slide_id == slide_id)

    @staticmethod
    def _facts(session: Session, image: ColumnElement[bool]) -> dict[str, dict[str, float | str | None]]:
        rows = session.execute(
            select(SlideFact.name, SlideFact.value, SlideFact.text)
            .join(Image, Image.id == SlideFact.image_id).where(image).order_by(SlideFact.name)
        ).all()
        grouped: dict[str, dict[str, float | str | None]] = defaultdict(dict)
        for name, value, text in rows:
            namespace, _, key = name.partition(".")
            grouped[namespace][key] = value if value is not None else text
        return dict(grouped)

    # --- one slide in full --------------------------------------------------------------------

    def get_slide(self, slide_id: str) -> dict[str, Any] | None:
        """Everything the catalog knows about one image, its sample graph and its observations."""
        with self._read() as session:
            image = session.scalar(
                select(Image)
                .where(Image.slide_id == slide_id)
                .options(
                    selectinload(Image.levels),
                    selectinload(Image.files),
                    selectinload(Image.dataset).selectinload(Dataset.policy),
                    selectinload(Image.dataset).selectinload(Dataset.organisation),
                    selectinload(Image.glass_slide).selectinload(Slide.stainings),
                    selectinload(Image.glass_slide)
                    .selectinload(Slide.block)
                    .selectinload(Block.specimens)
                    .selectinload(Specimen.biological_being),
                    selectinload(Image.glass_slide)
                    .selectinload(Slide.block)
                    .selectinload(Block.specimens)
                    .selectinload(Specimen.case),
                )
            )
            if image is None:
                return None
            facts = self._facts(session, Image.id == image.id)  # in the same read
            summary = self._summaries(
                session, session.execute(self._summary_select().where(Image.id == image.id)).all()
            )[0]
            glass = image.glass_slide
            block = glass.block
            specimens = sorted(block.specimens, key=lambda s: s.id)
            specimen = specimens[0] if specimens else None
            being = specimen.biological_being if specimen else None
            case = specimen.case if specimen else None
            observations = self._observations(session, image, glass, block, specimens)
            stainings = sorted(glass.stainings, key=lambda s: s.name)
            dataset = image.dataset

            return {
                **summary,
                "uuid": image.uuid,
                "accession": image.accession,
                "alias": image.alias,
                "image_type": image.image_type,
                "tile_width": image.tile_width,
                "tile_height": image.tile_height,
                "level_count": image.level_count,
                "levels": [
                    {"level": lvl.level, "width": lvl.width, "height": lvl.height, "downsample": lvl.downsample}
                    for lvl in image.levels
                ],
                "mpp_x": image.mpp_x,
                "mpp_y": image.mpp_y,
                "objective_power": image.objective_power,
                "original_format": image.original_format,
                "scanner": {"manufacturer": image.scanner_manufacturer, "model": image.scanner_model},
                "source_sha256": image.source_sha256,
                "source_size": image.source_size,
                "source_name_pseudonym": image.source_name_pseudonym,
                "canonical_size": image.canonical_size,
                "transfer_syntax": image.transfer_syntax,
                "source_associated_images": list(image.source_associated_images or []),
                "associated_images_stored": [],  # de-identification drops label and macro images
                "provenance": image.provenance or {},
                "files": [
                    {"role": f.role, "sha256": f.sha256, "size": f.size, "level": f.level, "media_type": f.media_type}
                    for f in image.files
                ],
                "thumbnail_sha256": image.thumbnail_sha256,
                "qc": facts.get("qc", {}),
                "facts": facts,
                # Biological context, as plain values…
                "subject": being.alias if being else None,
                "samples": {  # the MetaFleX chain above this image, by alias
                    "case": case.alias if case else None,
                    "specimen": specimen.alias if specimen else None,
                    "block": block.alias,
                    "slide": glass.alias,
                },
                "sex": being.sex if being else None,
                "age_at_extraction": specimen.age_at_extraction if specimen else None,
                "anatomical_site": specimen.anatomical_site if specimen else None,
                "specimen_type": specimen.specimen_type if specimen else None,
                "fixation_type": specimen.fixation_type if specimen else None,
                "block_preparation": block.block_preparation,
                # …and with their codes where the vocabulary knows them.
                "coded": {
                    "species": _term(being, "species"),
                    "sex": _term(being, "sex"),
                    "anatomical_site": _term(specimen, "anatomical_site"),
                    "specimen_type": _term(specimen, "specimen_type"),
                    "fixation_type": _term(specimen, "fixation_type"),
                    "extraction_method": _term(specimen, "extraction_method"),
                    "block_preparation": _term(block, "block_preparation"),
                    "stains": [
                        {
                            "name": s.name,
                            "kind": s.kind,
                            "procedure": _code(s.procedure_code, s.procedure_scheme, s.procedure_meaning),
                            "substances": list(s.substances or []),
                        }
                        for s in stainings
                    ],
                    "diagnoses": [
                        {
                            "text": o["text"],
                            "code": o["code"],
                            "on": o["on"],
                        }
                        for o in observations
                        if o["statement_type"] == "Diagnosis"
                    ],
                },
                "objects": {
                    "dataset": {
                        **dataset.identity(),
                        "policy": dataset.policy.alias,
                        "organisation": dataset.organisation.alias,
                    },
                    "biological_being": being.identity() if being else None,
                    "case": case.identity() if case else None,
                    "specimens": [s.identity() for s in specimens],
                    "block": block.identity(),
                    "slide": glass.identity(),
                    "stainings": [s.identity() for s in stainings],
                    "observations": observations,
                },
            }

    @staticmethod
    def _observations(
        session: Session, image: Image, glass: Slide, block: Block, specimens: Sequence[Specimen]
    ) -> list[dict[str, Any]]:
        """Observations on the image and on every object upstream of it."""
        targets: list[tuple[str, ColumnElement[bool]]] = [
            ("image", Observation.image_id == image.id),
            ("slide", Observation.glass_slide_id == glass.id),
            ("block", Observation.block_id == block.id),
        ]
        if specimens:
            targets += [
                ("specimen", Observation.specimen_id.in_([s.id for s in specimens])),
                ("case", Observation.case_id.in_([s.case_id for s in specimens if s.case_id is not None])),
                ("biological_being", Observation.biological_being_id.in_({s.biological_being_id for s in specimens})),
            ]
        found: list[dict[str, Any]] = []
        for target, condition in targets:
            for observation in session.scalars(select(Observation).where(condition).order_by(Observation.id)):
                found.append(
                    {
                        **observation.identity(),
                        "on": target,
                        "statement_type": observation.statement_type,
                        "statement_status": observation.statement_status,
                        "code": _code(observation.code, observation.scheme, observation.meaning),
                        "text": observation.display,
                    }
                )
        return found


__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_ORGANISATION",
    "DEFAULT_POLICY",
    "FACETS",
    "SLIDE_ID_PATTERN",
    "Catalog",
    "CatalogError",
    "DuplicateSourceError",
    "FactCondition",
    "SampleAliases",
    "SearchQuery",
    "SearchResult",
    "SlideIdTakenError",
]
