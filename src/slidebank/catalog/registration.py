"""Registration: an ingested slide becomes a MetaFleX graph (being → case → specimen → block →
slide → image, staining, diagnosis, dataset under a policy), in one transaction.

Uniqueness (same source bytes, same slide id, shared objects such as a dataset or a subject
created by two ingests at once) is decided by the database's unique constraints, not by the
pre-checks, which only give early, friendly errors: a constraint violation rolls back, is
re-examined, and becomes `DuplicateSourceError`, `SlideIdTakenError` or a retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slidebank.catalog import instances
from slidebank.catalog.errors import DuplicateSourceError, SlideIdTakenError
from slidebank.catalog.facets import index_images
from slidebank.catalog.identifiers import SLIDE_ID_PATTERN
from slidebank.catalog.records import IngestedSlide, SlideDescription
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
    clean_text,
    split_stains,
    stain_entry,
)
from slidebank.db import UnitOfWork
from slidebank.db.models import (
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    Image,
    ImageFile,
    ImageLevel,
    Observation,
    Organisation,
    Policy,
    Slide,
    Specimen,
    Staining,
    block_specimens,
    slide_stainings,
)

DEFAULT_DATASET = "default"
DEFAULT_POLICY = "controlled-access"
DEFAULT_ORGANISATION = "local"
UNSPECIFIED = "unspecified"
SAMPLE_KINDS = ("subject", "case", "specimen", "block", "slide")
MAX_ALIAS = 255
REGISTER_ATTEMPTS = 4

SampleT = TypeVar("SampleT", BiologicalBeing, Case, Specimen, Block, Slide)


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
            clean_label(description.subject),
            clean_label(description.case),
            clean_label(description.specimen),
            clean_label(description.block),
            clean_label(description.slide),
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


def clean_label(value: str | None) -> str | None:
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


def _fill(obj: Any, attribute: str, term: Term | None) -> None:
    """Set a coded attribute unless already set: the first description of a shared object wins."""
    if term is None or getattr(obj, attribute) is not None:
        return
    for column, value in coded(attribute, term).items():
        setattr(obj, column, value)


def register(uow: UnitOfWork, slide: IngestedSlide, also: Callable[[Session], None] | None = None) -> str:
    """Create the image and its whole sample graph in one transaction, with whatever `also` writes
    in it (the audit entry, the pseudonym map); return the slide id."""
    if not SLIDE_ID_PATTERN.fullmatch(slide.slide_id):
        raise ValueError(f"slide id {slide.slide_id!r} is not a valid identifier")
    with uow.read() as session:
        raise_if_taken(session, slide)
    for attempt in range(REGISTER_ATTEMPTS):
        try:
            with uow.write() as session:
                raise_if_taken(session, slide)
                _insert(session, slide)
                if also is not None:
                    also(session)
            return slide.slide_id
        except IntegrityError:
            # A concurrent writer won a unique constraint. Re-read after the rollback to say which.
            with uow.read() as session:
                raise_if_taken(session, slide)
            if attempt == REGISTER_ATTEMPTS - 1:
                raise
            # It created a shared object (dataset, subject, staining…) first: the retry finds it.
    raise AssertionError("unreachable")


def raise_if_taken(session: Session, slide: IngestedSlide) -> None:
    existing = session.scalar(select(Image.slide_id).where(Image.source_sha256 == slide.source_sha256))
    if existing is not None:
        raise DuplicateSourceError(existing)
    if session.scalar(select(Image.id).where(Image.slide_id == slide.slide_id)) is not None:
        raise SlideIdTakenError(slide.slide_id)


def _insert(session: Session, slide: IngestedSlide) -> Image:
    description = slide.description
    dataset = ensure_dataset(session, description.dataset)
    aliases = SampleAliases(*description.sample_aliases) if description.sample_aliases \
        else SampleAliases.for_image(description, slide.slide_id)

    being = _get_or_create(session, BiologicalBeing, dataset, aliases.being)
    _fill(being, "species", SPECIES.normalise(description.species))
    _fill(being, "sex", SEX.normalise(description.sex))

    case = _get_or_create(session, Case, dataset, aliases.case, biological_being_id=being.id)
    specimen = _get_or_create(
        session, Specimen, dataset, aliases.specimen, biological_being_id=being.id, case_id=case.id
    )
    age = clean_label(description.age_at_extraction)
    if age and specimen.age_at_extraction is None:
        specimen.age_at_extraction = age.upper()[:32]
    _fill(specimen, "anatomical_site", ANATOMICAL_SITES.normalise(description.anatomical_site))
    _fill(specimen, "specimen_type", SPECIMEN_TYPES.normalise(description.specimen_type))
    _fill(specimen, "fixation_type", FIXATION_TYPES.normalise(description.fixation_type))
    extraction = EXTRACTION_METHODS.lookup(description.specimen_type)  # "biopsy" is also how it was taken
    _fill(specimen, "extraction_method", extraction.term if extraction else None)

    block = _get_or_create(session, Block, dataset, aliases.block)
    _fill(block, "block_preparation", BLOCK_PREPARATIONS.normalise(description.block_preparation))
    sampled = session.scalar(
        select(block_specimens.c.block_id).where(
            block_specimens.c.block_id == block.id, block_specimens.c.specimen_id == specimen.id
        )
    )
    if sampled is None:
        session.execute(insert(block_specimens).values(block_id=block.id, specimen_id=specimen.id))

    glass = _get_or_create(session, Slide, dataset, aliases.slide, block_id=block.id)
    for stain in split_stains(description.stain):
        staining = _staining(session, dataset, stain)
        linked = session.scalar(
            select(slide_stainings.c.staining_id).where(
                slide_stainings.c.glass_slide_id == glass.id, slide_stainings.c.staining_id == staining.id
            )
        )
        if linked is None:
            session.execute(insert(slide_stainings).values(glass_slide_id=glass.id, staining_id=staining.id))

    image = Image(**image_values(slide, dataset.id, glass.id))
    image.levels = [
        ImageLevel(level=index, width=level.width, height=level.height, downsample=float(level.downsample))
        for index, level in enumerate(slide.levels)
    ]
    image.files = [
        ImageFile(role=f.role, sha256=f.sha256, size=f.size, level=f.level, media_type=f.media_type,
                  key_header=f.key_header if f.key_header is not None else _existing_key(session, f.sha256))
        for f in slide.files
    ]
    session.add(image)
    session.flush()
    instances.add_identities(session, image, slide.files)

    diagnosis = clean_label(description.diagnosis)
    if diagnosis:
        session.add(Observation(**diagnosis_values(slide.slide_id, dataset.id, image.id, diagnosis)))
        session.flush()
    index_images(session, [image.id])
    return image


def image_values(slide: IngestedSlide, dataset_id: int, glass_slide_id: int) -> dict[str, Any]:
    """The images row of an ingested slide (registration and bulk loads write the same)."""
    return {
        "alias": slide.slide_id,
        "slide_id": slide.slide_id,
        "dataset_id": dataset_id,
        "glass_slide_id": glass_slide_id,
        "image_type": "WSI",
        "width": slide.width,
        "height": slide.height,
        "tile_width": slide.tile_width,
        "tile_height": slide.tile_height,
        "level_count": len(slide.levels),
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "objective_power": slide.objective_power,
        "vendor": slide.vendor,
        "original_format": slide.original_format,
        "scanner_manufacturer": slide.scanner_manufacturer,
        "scanner_model": slide.scanner_model,
        "source_sha256": slide.source_sha256,
        "source_size": slide.source_size,
        "source_name_pseudonym": slide.source_name_pseudonym,
        "canonical_size": slide.canonical_size,
        "transfer_syntax": slide.transfer_syntax,
        "source_associated_images": list(slide.source_associated_images),
        "provenance": dict(slide.provenance),
        "thumbnail_sha256": slide.thumbnail_sha256,
        "ingested_at": datetime.now(UTC),
    }


def coded(attribute: str, term: Term | None) -> dict[str, str | None]:
    """A coded attribute's four columns (display value, code, scheme, meaning); {} without a term."""
    if term is None:
        return {}
    return {attribute: term.name[:MAX_ALIAS], f"{attribute}_code": term.code.code if term.code else None,
            f"{attribute}_scheme": term.code.scheme if term.code else None,
            f"{attribute}_meaning": term.code.meaning if term.code else None}


def diagnosis_values(slide_id: str, dataset_id: int, image_id: int, diagnosis: str) -> dict[str, Any]:
    """The observation row of a submitter's diagnosis of one image."""
    return {"alias": _bounded_alias(f"{slide_id}/diagnosis"), "dataset_id": dataset_id,
            "statement_type": "Diagnosis", "statement_status": "Distinct", "free_text": diagnosis,
            "image_id": image_id}


def _get_or_create(
    session: Session, model: type[SampleT], dataset: Dataset, alias: str, **parents: int
) -> SampleT:
    """The sample object with this alias in the dataset, created (with these parents) if missing."""
    found = session.scalar(select(model).where(model.dataset_id == dataset.id, model.alias == alias))
    if found is not None:
        return found
    created = model(dataset_id=dataset.id, alias=alias, **parents)
    session.add(created)
    session.flush()  # a concurrent twin fails here, and register() retries
    return created


def _staining(session: Session, dataset: Dataset, stain: str) -> Staining:
    values = staining_values(dataset.id, stain)
    found = session.scalar(
        select(Staining).where(Staining.dataset_id == dataset.id, Staining.alias == values["alias"]))
    if found is not None:
        return found
    staining = Staining(**values)
    session.add(staining)
    session.flush()
    return staining


def staining_values(dataset_id: int, stain: str) -> dict[str, Any]:
    """The stainings row of one stain as a slide names it: normalised name, coded procedure and substances."""
    term = STAINS.normalise(stain)
    assert term is not None
    name = term.name[:MAX_ALIAS]
    entry = stain_entry(name)
    procedure: Code | None = entry.code if entry else None
    return {
        "dataset_id": dataset_id,
        "alias": name,
        "name": name,
        "kind": entry.kind if entry else None,
        "procedure_code": procedure.code if procedure else None,
        "procedure_scheme": procedure.scheme if procedure else None,
        "procedure_meaning": procedure.meaning if procedure else None,
        "substances": [code.to_json() for code in entry.substances] if entry else [],
    }


def dataset_alias(name: str | None) -> str:
    """The dataset a slide described with `name` is registered in."""
    return (clean_label(name) or DEFAULT_DATASET)[:MAX_ALIAS]


def ensure_dataset(session: Session, name: str | None) -> Dataset:
    """Get or create the dataset; a new one goes under the node's default policy and organisation."""
    alias = dataset_alias(name)
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


def _existing_key(session: Session, sha256: str) -> bytes | None:
    """A blob stored before (same bytes, other image) keeps its payload: share its key header."""
    return session.scalar(
        select(ImageFile.key_header).where(ImageFile.sha256 == sha256, ImageFile.key_header.is_not(None)).limit(1)
    )
