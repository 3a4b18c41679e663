"""Wire formats of the catalog routes: datasets, slide summaries, slide descriptions, search.

A slide description is what `catalog.describe.describe_slide` builds: the image and its pyramid,
the MetaFleX chain above it (being → case → specimen → block → slide), coded terms, observations,
stored files, and the facts algorithms measured.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from slidebank.api.schemas import Timestamp, TypedDict, fixed_array, wire

FacetCount = Annotated[tuple[str, int], fixed_array(2, "string", "integer", description="[value, count]")]
"""One facet value and how many of the caller's slides have it, as a [value, count] pair."""

Facts = dict[str, float | str | None]
"""Facts of one namespace, e.g. {"blur_fraction": 0.01} for `qc.blur_fraction`."""

ObservationTarget = Literal["image", "slide", "block", "specimen", "case", "biological_being"]


# --- datasets ---------------------------------------------------------------------------------------


@wire
class Dataset(TypedDict):
    """A dataset as the public sees it: its terms and size, none of its slides."""

    name: str
    title: str
    accession: str
    uuid: str
    policy: Annotated[str, Field(description="The policy's alias")]
    terms: Annotated[str | None, Field(description="The policy's free text")]
    data_use: Annotated[list[str], Field(description="GA4GH DUO codes, e.g. DUO:0000004 (no restriction)")]
    organisation: str
    images: Annotated[int, Field(description="Images in the dataset; see images_exact")]
    images_exact: Annotated[bool, Field(description="False: a controlled dataset the caller may not read, its size "
                                                    "rounded down to a multiple of 10")]
    created_at: Timestamp


@wire
class DatasetDetail(Dataset):
    """A dataset with its contents counted, over the slides the caller may read."""

    facets: Annotated[dict[str, list[FacetCount]], Field(
        description="Per facet (species, organ, stain, vendor, diagnosis): [value, count] pairs")]


# --- slides -----------------------------------------------------------------------------------------


@wire
class SlideSummary(TypedDict):
    """One image in a listing or a search result; facet values joined with "; "."""

    slide_id: str
    dataset: str
    width: Annotated[int, Field(description="Level-0 width in pixels")]
    height: int
    vendor: str
    stain: str | None
    species: str | None
    organ: str | None
    diagnosis: str | None
    ingested_at: Timestamp


@wire
class Level(TypedDict):
    level: int
    width: int
    height: int
    downsample: float


@wire
class Scanner(TypedDict):
    manufacturer: str | None
    model: str | None


@wire
class StoredFile(TypedDict):
    """A blob of the canonical DICOM WSI in the content-addressed store."""

    role: Annotated[str, Field(description='"volume" (a pyramid level) or "thumbnail"')]
    sha256: str
    size: int
    level: int | None
    media_type: str


@wire
class Samples(TypedDict):
    """The MetaFleX chain above the image, by alias (pseudonyms)."""

    case: str | None
    specimen: str | None
    block: str
    slide: str


@wire
class Code(TypedDict):
    """A coded value (MetaFleX CodeType)."""

    code: str
    scheme: str
    meaning: str


@wire
class CodedTerm(TypedDict):
    """A display value and, where the vocabulary knows it, its code."""

    name: str
    code: str | None
    scheme: str | None
    meaning: str | None


@wire
class Stain(TypedDict):
    name: str
    kind: Annotated[str | None, Field(description='"chemical" or "immunohistochemistry"')]
    procedure: Code | None
    substances: list[Code]


@wire
class Diagnosis(TypedDict):
    text: str
    code: Code | None
    on: ObservationTarget


@wire
class Coded(TypedDict):
    species: CodedTerm | None
    sex: CodedTerm | None
    anatomical_site: CodedTerm | None
    specimen_type: CodedTerm | None
    fixation_type: CodedTerm | None
    extraction_method: CodedTerm | None
    block_preparation: CodedTerm | None
    stains: list[Stain]
    diagnoses: list[Diagnosis]


@wire
class ObjectIdentity(TypedDict):
    """How other systems refer to a MetaFleX object."""

    alias: str
    accession: str
    uuid: str


@wire
class DatasetObject(ObjectIdentity):
    policy: str
    organisation: str


@wire
class Observation(ObjectIdentity):
    on: ObservationTarget
    statement_type: Literal["Diagnosis", "Macroscopic Description", "Microscopic Description", "Finding"]
    statement_status: Literal["Summary", "Distinct"] | None
    code: Code | None
    text: str


@wire
class Objects(TypedDict):
    dataset: DatasetObject
    biological_being: ObjectIdentity | None
    case: ObjectIdentity | None
    specimens: list[ObjectIdentity]
    block: ObjectIdentity
    slide: ObjectIdentity
    stainings: list[ObjectIdentity]
    observations: list[Observation]


@wire
class SlideDetail(SlideSummary):
    """Everything the catalog knows about one image, its sample graph and its observations."""

    uuid: str
    accession: str
    alias: str
    image_type: Literal["WSI", "GROSS"]
    tile_width: int
    tile_height: int
    level_count: int
    levels: list[Level]
    mpp_x: Annotated[float | None, Field(description="µm per level-0 pixel; null when nobody knows")]
    mpp_y: float | None
    pixel_size_known: bool
    objective_power: float | None
    original_format: str
    scanner: Scanner
    source_sha256: str
    source_size: int
    source_name_pseudonym: str | None
    canonical_size: int
    transfer_syntax: str
    source_associated_images: list[str]
    associated_images_stored: Annotated[list[str], Field(description="Always empty: de-identification drops them")]
    provenance: dict[str, Any]
    files: list[StoredFile]
    thumbnail_sha256: str | None
    qc: Facts
    facts: Annotated[dict[str, Facts], Field(description='By namespace: {"qc": {"blur_fraction": 0.01}, …}')]
    subject: Annotated[str | None, Field(description="The subject's pseudonym")]
    samples: Samples
    sex: str | None
    age_at_extraction: Annotated[str | None, Field(description="ISO 8601 duration, e.g. P54Y")]
    anatomical_site: str | None
    specimen_type: str | None
    fixation_type: str | None
    block_preparation: str | None
    coded: Coded
    objects: Objects


# --- search -----------------------------------------------------------------------------------------


@wire
class SearchResult(TypedDict):
    """One page of matching slides, how many match in all, and the facet counts."""

    total: int
    items: list[SlideSummary]
    facets: Annotated[dict[str, list[FacetCount]], Field(
        description="Per facet (dataset, species, organ, stain, vendor, diagnosis): [value, count] pairs, "
                    "each counted with every other facet's filter applied")]
    facet_values: Annotated[dict[str, int], Field(
        description="Per facet, how many values it has in all: more than listed when facet_limit cut the list")]
    next: Annotated[str | None, Field(
        description="Cursor of the following page (pass it as `after`); null on the last page")]
