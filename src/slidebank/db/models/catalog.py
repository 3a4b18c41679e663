"""SQLAlchemy models of the BIGPICTURE MetaFleX 2.0 object graph.

Organisation ─owns→ Dataset ←governs─ Policy
Dataset ⊃ BiologicalBeing → Case → Specimen ⇉ Block → Slide ⇄ Staining
                                                        ↓
Dataset ⊃ Image (of one Slide) → ImageLevel, ImageFile, Annotation
Observation (by an Observer) on exactly one of being / case / specimen / block / slide / image / annotation

Every MetaFleX object has an integer `id` (joins), a `uuid` (stable external id), an `alias` (the
submitter's name for it) and an `accession` (the archive's id). Aliases are unique where MetaFleX
says they are: per dataset for the sample graph ("unique within the Study and Dataset the entity
belongs to"), globally for organisations, policies, datasets and observers. The catalog builds
sample aliases as paths (`SUBJ-…/case/specimen`), so a submitter's "block A1" under two specimens
stays two blocks.

Coded attributes are four columns: the display value (free text when the vocabulary does not know
it) plus the MetaFleX CodeType triple `*_code`, `*_scheme`, `*_meaning` (NULL when uncoded).

`ImageFacet` is a derived index, one row per (image, facet, value), maintained in the same
transaction as the graph: faceted counts at millions of images become one indexed GROUP BY
instead of six-table joins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import (
    Mapped,
    mapped_column,
    relationship,
)

from slidebank.db.models.base import (
    CODE_LENGTH,
    NAME_LENGTH,
    SCHEME_LENGTH,
    SHA256_LENGTH,
    Base,
    CatalogObject,
    utcnow,
)

# --- governance -------------------------------------------------------------------------------


class Organisation(CatalogObject, Base):
    """The submitting organisation (BP.organisation.xsd); owns datasets."""

    __tablename__ = "organisations"
    __table_args__ = (UniqueConstraint("alias"),)
    accession_prefix = "SBO"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    pic_code: Mapped[int | None] = mapped_column(Integer)  # EU Participant Identification Code
    datamanager_group: Mapped[str | None] = mapped_column(String(NAME_LENGTH))

    datasets: Mapped[list[Dataset]] = relationship(back_populates="organisation")


class Policy(CatalogObject, Base):
    """Terms of use for datasets (BP.policy.xsd); GA4GH DUO codes live in `data_use`."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("alias"),)
    accession_prefix = "SBP"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str | None] = mapped_column(Text)
    data_use: Mapped[list[Any]] = mapped_column(JSON, default=list)
    max_grant_days: Mapped[int | None] = mapped_column(Integer)  # longest grant the DAC may give; None: node default

    datasets: Mapped[list[Dataset]] = relationship(back_populates="policy")

    @property
    def codes(self) -> list[str]:
        """The data-use codes (e.g. "DUO:0000004"), whether stored as CodeType dicts or bare strings."""
        return [str(c.get("code")) if isinstance(c, dict) else str(c) for c in self.data_use or []]


class Dataset(CatalogObject, Base):
    """A group of images, annotations and observations under one policy (BP.dataset.xsd).

    `alias` is the dataset name users type (`--dataset tox-study`).
    """

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("alias"),)
    accession_prefix = "SBD"

    title: Mapped[str] = mapped_column(String(NAME_LENGTH))
    short_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(32), default="1")
    metadata_standard: Mapped[str] = mapped_column(String(16), default="2.0.0")
    owner_contact_email: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), index=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)

    policy: Mapped[Policy] = relationship(back_populates="datasets")
    organisation: Mapped[Organisation] = relationship(back_populates="datasets")


# --- samples ----------------------------------------------------------------------------------


class BiologicalBeing(CatalogObject, Base):
    """A human or animal (BP.sample.xsd). `alias` is the keyed pseudonym, never the real identifier."""

    __tablename__ = "biological_beings"
    __table_args__ = (UniqueConstraint("dataset_id", "alias"),)
    accession_prefix = "SBB"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    species: Mapped[str | None] = mapped_column(String(NAME_LENGTH), index=True)
    species_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    species_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    species_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    sex: Mapped[str | None] = mapped_column(String(32))
    sex_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    sex_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    sex_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))

    dataset: Mapped[Dataset] = relationship()
    cases: Mapped[list[Case]] = relationship(back_populates="biological_being")
    specimens: Mapped[list[Specimen]] = relationship(back_populates="biological_being")


class Case(CatalogObject, Base):
    """A pathological case of one biological being."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("dataset_id", "alias"),)
    accession_prefix = "SBC"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    biological_being_id: Mapped[int] = mapped_column(ForeignKey("biological_beings.id"), index=True)

    biological_being: Mapped[BiologicalBeing] = relationship(back_populates="cases")
    specimens: Mapped[list[Specimen]] = relationship(back_populates="case")


block_specimens = Table(
    "block_specimens",
    Base.metadata,
    Column("block_id", ForeignKey("blocks.id", ondelete="CASCADE"), nullable=False),
    Column("specimen_id", ForeignKey("specimens.id", ondelete="CASCADE"), nullable=False),
    PrimaryKeyConstraint("block_id", "specimen_id"),
    Index(None, "specimen_id"),
)
"""A block is sampled from one or more specimens (MetaFleX SAMPLED_FROM_REF, maxOccurs unbounded)."""


class Specimen(CatalogObject, Base):
    """A removed part of a being, optionally part of a case."""

    __tablename__ = "specimens"
    __table_args__ = (UniqueConstraint("dataset_id", "alias"),)
    accession_prefix = "SBS"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    biological_being_id: Mapped[int] = mapped_column(ForeignKey("biological_beings.id"), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    age_at_extraction: Mapped[str | None] = mapped_column(String(32))  # ISO 8601 duration, e.g. P54Y
    anatomical_site: Mapped[str | None] = mapped_column(String(NAME_LENGTH), index=True)
    anatomical_site_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    anatomical_site_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    anatomical_site_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    specimen_type: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    specimen_type_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    specimen_type_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    specimen_type_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    fixation_type: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    fixation_type_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    fixation_type_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    fixation_type_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    extraction_method: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    extraction_method_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    extraction_method_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    extraction_method_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))

    biological_being: Mapped[BiologicalBeing] = relationship(back_populates="specimens")
    case: Mapped[Case | None] = relationship(back_populates="specimens")
    blocks: Mapped[list[Block]] = relationship(secondary=block_specimens, back_populates="specimens")


class Block(CatalogObject, Base):
    """Tissue sampled from one or more specimens and processed (embedded) for sectioning."""

    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("dataset_id", "alias"),)
    accession_prefix = "SBK"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    block_preparation: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    block_preparation_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    block_preparation_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    block_preparation_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))

    specimens: Mapped[list[Specimen]] = relationship(secondary=block_specimens, back_populates="blocks")
    slides: Mapped[list[Slide]] = relationship(back_populates="block")


slide_stainings = Table(
    "slide_stainings",
    Base.metadata,
    Column("glass_slide_id", ForeignKey("slides.id", ondelete="CASCADE"), nullable=False),
    Column("staining_id", ForeignKey("stainings.id", ondelete="CASCADE"), nullable=False),
    PrimaryKeyConstraint("glass_slide_id", "staining_id"),
    Index(None, "staining_id"),
)
"""Slides reference stainings; one staining (e.g. the lab's H&E protocol) serves many slides."""


class Slide(CatalogObject, Base):
    """The physical glass slide, created from a block.

    Not to be confused with `Image.slide_id`, the public identifier users call "the slide": foreign
    keys to this table are named `glass_slide_id` to keep the two apart.
    """

    __tablename__ = "slides"
    __table_args__ = (UniqueConstraint("dataset_id", "alias"),)
    accession_prefix = "SBL"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    block_id: Mapped[int] = mapped_column(ForeignKey("blocks.id"), index=True)

    block: Mapped[Block] = relationship(back_populates="slides")
    stainings: Mapped[list[Staining]] = relationship(secondary=slide_stainings, back_populates="slides")
    images: Mapped[list[Image]] = relationship(back_populates="glass_slide")


class Staining(CatalogObject, Base):
    """A staining as MetaFleX describes it: a coded procedure and/or a list of coded stains.

    `name` is the facet value ("H&E"); `substances` is a JSON list of {code, scheme, meaning}.
    """

    __tablename__ = "stainings"
    __table_args__ = (UniqueConstraint("dataset_id", "alias"),)
    accession_prefix = "SBT"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    kind: Mapped[str | None] = mapped_column(String(32))  # "chemical" or "immunohistochemistry"
    procedure_code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    procedure_scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    procedure_meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    substances: Mapped[list[Any]] = mapped_column(JSON, default=list)

    slides: Mapped[list[Slide]] = relationship(secondary=slide_stainings, back_populates="stainings")


# --- images -----------------------------------------------------------------------------------


class Image(CatalogObject, Base):
    """The scanned whole-slide image of one glass slide: the object users search, view and cite."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("slide_id"),
        UniqueConstraint("source_sha256"),
        UniqueConstraint("dataset_id", "alias"),
        CheckConstraint("image_type IN ('WSI', 'GROSS')", name="image_type"),
    )
    accession_prefix = "SBI"

    slide_id: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    glass_slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id"), index=True)
    image_type: Mapped[str] = mapped_column(String(8), default="WSI")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    tile_width: Mapped[int] = mapped_column(Integer)
    tile_height: Mapped[int] = mapped_column(Integer)
    level_count: Mapped[int] = mapped_column(Integer)
    mpp_x: Mapped[float | None] = mapped_column(Float)
    mpp_y: Mapped[float | None] = mapped_column(Float)
    objective_power: Mapped[float | None] = mapped_column(Float)
    vendor: Mapped[str] = mapped_column(String(64), index=True)
    original_format: Mapped[str] = mapped_column(String(64))
    scanner_manufacturer: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    scanner_model: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    source_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    source_size: Mapped[int] = mapped_column(BigInteger)
    source_name_pseudonym: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    canonical_size: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    source_associated_images: Mapped[list[Any]] = mapped_column(JSON, default=list)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    thumbnail_sha256: Mapped[str | None] = mapped_column(String(SHA256_LENGTH), index=True)
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    dataset: Mapped[Dataset] = relationship()
    glass_slide: Mapped[Slide] = relationship(back_populates="images")
    levels: Mapped[list[ImageLevel]] = relationship(
        back_populates="image", order_by="ImageLevel.level", cascade="all, delete-orphan", passive_deletes=True
    )
    files: Mapped[list[ImageFile]] = relationship(
        back_populates="image", order_by="ImageFile.id", cascade="all, delete-orphan", passive_deletes=True
    )
    annotations: Mapped[list[Annotation]] = relationship(back_populates="image")


class ImageLevel(Base):
    """One level of the stored pyramid (a row, not a MetaFleX object)."""

    __tablename__ = "image_levels"
    __table_args__ = (UniqueConstraint("image_id", "level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    downsample: Mapped[float] = mapped_column(Float)

    image: Mapped[Image] = relationship(back_populates="levels")


class ImageFile(Base):
    """One blob of the canonical image in the content-addressed store (MetaFleX FILE with checksum)."""

    __tablename__ = "image_files"
    __table_args__ = (UniqueConstraint("image_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32))  # "volume" (a pyramid level) or "thumbnail"
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[int | None] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(128))
    # The blob's data key, sealed to the node key (crypt4gh header). Kept here, not beside the
    # payload, so that deleting the row is crypto-shredding. NULL: a blob stored in clear.
    key_header: Mapped[bytes | None] = mapped_column(LargeBinary)

    image: Mapped[Image] = relationship(back_populates="files")


class ImageFacet(Base):
    """Derived search index: one row per (image, facet, value), rebuilt from the graph on change.

    `key` is the case-folded value (computed in Python, so SQLite and PostgreSQL agree on non-ASCII
    text); the primary key makes each value count once per image.
    """

    __tablename__ = "image_facets"
    __table_args__ = (
        PrimaryKeyConstraint("image_id", "facet", "key"),
        Index(None, "facet", "key", "image_id"),
    )

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    facet: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(NAME_LENGTH))
    value: Mapped[str] = mapped_column(String(NAME_LENGTH))


class Annotation(CatalogObject, Base):
    """An annotation on an image: a GeoJSON file or a DICOM annotation object (minimal for now)."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("image_id", "alias"),
        CheckConstraint("format IN ('geojson', 'dicom')", name="format"),
    )
    accession_prefix = "SBA"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str | None] = mapped_column(String(SHA256_LENGTH), index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    media_type: Mapped[str | None] = mapped_column(String(128))
    dicom_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))

    image: Mapped[Image] = relationship(back_populates="annotations")


class SlideFact(Base):
    """A slide-level number (or word) an algorithm measured, e.g. `qc.blur_fraction`; searchable.

    One row per (image, name) with the latest value; `job_id` names the run that wrote it (provenance).
    """

    __tablename__ = "slide_facts"
    __table_args__ = (UniqueConstraint("image_id", "name"), Index("ix_slide_facts_name_value", "name", "value"))

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- observations -----------------------------------------------------------------------------


class Observer(CatalogObject, Base):
    """Who made an observation: a human (pathologist) or a machine (algorithm and version)."""

    __tablename__ = "observers"
    __table_args__ = (
        UniqueConstraint("alias"),
        CheckConstraint("observer_type IN ('Human', 'Machine')", name="observer_type"),
    )
    accession_prefix = "SBR"

    observer_type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))


OBSERVATION_TARGETS = (
    "biological_being_id",
    "case_id",
    "specimen_id",
    "block_id",
    "glass_slide_id",
    "image_id",
    "annotation_id",
)


def _exactly_one_target() -> str:
    return " + ".join(f"(CASE WHEN {column} IS NULL THEN 0 ELSE 1 END)" for column in OBSERVATION_TARGETS) + " = 1"


class Observation(CatalogObject, Base):
    """A statement (diagnosis, macroscopic/microscopic description, finding) about exactly one object.

    MetaFleX's ObservationType is a choice of references; here seven nullable foreign keys with a
    check constraint that exactly one is set, so every reference is still enforced by the database.
    """

    __tablename__ = "observations"
    __table_args__ = (
        UniqueConstraint("dataset_id", "alias"),
        CheckConstraint(_exactly_one_target(), name="exactly_one_target"),
        CheckConstraint(
            "statement_type IN ('Diagnosis', 'Macroscopic Description', 'Microscopic Description', 'Finding')",
            name="statement_type",
        ),
        CheckConstraint(
            "statement_status IS NULL OR statement_status IN ('Summary', 'Distinct')", name="statement_status"
        ),
    )
    accession_prefix = "SBX"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    observer_id: Mapped[int | None] = mapped_column(ForeignKey("observers.id"), index=True)
    statement_type: Mapped[str] = mapped_column(String(32))
    statement_status: Mapped[str | None] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(CODE_LENGTH))
    scheme: Mapped[str | None] = mapped_column(String(SCHEME_LENGTH))
    meaning: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    free_text: Mapped[str | None] = mapped_column(Text)

    biological_being_id: Mapped[int | None] = mapped_column(
        ForeignKey("biological_beings.id", ondelete="CASCADE"), index=True
    )
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    specimen_id: Mapped[int | None] = mapped_column(ForeignKey("specimens.id", ondelete="CASCADE"), index=True)
    block_id: Mapped[int | None] = mapped_column(ForeignKey("blocks.id", ondelete="CASCADE"), index=True)
    glass_slide_id: Mapped[int | None] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)

    observer: Mapped[Observer | None] = relationship()

    @property
    def display(self) -> str:
        """What search and listings show: the coded meaning, else the free text."""
        return self.meaning or self.free_text or ""


__all__ = [
    "OBSERVATION_TARGETS",
    "Annotation",
    "BiologicalBeing",
    "Block",
    "Case",
    "Dataset",
    "Image",
    "ImageFacet",
    "ImageFile",
    "ImageLevel",
    "Observation",
    "Observer",
    "Organisation",
    "Policy",
    "Slide",
    "SlideFact",
    "Specimen",
    "Staining",
    "block_specimens",
    "slide_stainings",
]
