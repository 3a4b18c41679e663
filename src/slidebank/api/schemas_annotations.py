"""Wire formats of the annotation routes: GeoJSON features as QuPath writes them (level-0 pixel
coordinates), with Slidebank's own fields under `slidebank`; class counts and density grids."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, with_config

from slidebank.api.schemas import Number, Timestamp, TypedDict, fixed_array, wire

GeometryType = Literal["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"]


# --- request bodies -----------------------------------------------------------------------------------


class FeatureChange(BaseModel):
    geometry: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    class_name: str | None = Field(default=None, max_length=255)
    color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")


# --- answers ------------------------------------------------------------------------------------------


@with_config(ConfigDict(extra="allow"))
class Geometry(TypedDict):
    """A GeoJSON geometry, kept exactly as it was given (other GeoJSON members included)."""

    type: GeometryType
    coordinates: list[Any]


@wire
class ExportedFeature(TypedDict):
    """A GeoJSON Feature as QuPath imports it; the class is `properties.classification`."""

    type: Literal["Feature"]
    id: str
    geometry: Geometry
    properties: dict[str, Any]


FeatureInfo = TypedDict("FeatureInfo", {  # what Slidebank knows beyond GeoJSON; "class" is a keyword
    "class": str | None,
    "color": Annotated[str | None, Field(description="#rrggbb")],
    "author": Annotated[str, Field(description="A user, or `algorithm@version` for a job's results")],
    "job": Annotated[str | None, Field(description="The job that wrote it")],
    "bbox": Annotated[tuple[float, float, float, float],
                      fixed_array(4, "number", description="x0, y0, x1, y1 in level-0 pixels")],
    "updated_at": Timestamp | None,
})
wire(FeatureInfo)  # made by call, as a class body cannot name a key "class"


@wire
class Feature(ExportedFeature):
    """A feature with Slidebank's own fields under `slidebank`."""

    slidebank: FeatureInfo


@wire
class FeatureCollection(TypedDict):
    """Features in a viewport, at most `limit` of `total` (`truncated` when there were more)."""

    type: Literal["FeatureCollection"]
    features: list[Feature]
    total: int
    truncated: bool


@wire
class FeatureExport(TypedDict):
    """Every feature of a slide, as QuPath imports it."""

    type: Literal["FeatureCollection"]
    features: list[ExportedFeature]


@wire
class Created(TypedDict):
    ids: Annotated[list[str], Field(description="Every stored feature's id, in the order given")]
    features: Annotated[list[Feature], Field(description="The first 100 stored features")]


@wire
class AnnotationClass(TypedDict):
    name: Annotated[str | None, Field(description="null: unclassified")]
    color: str | None
    count: int


@wire
class DensityGrid(TypedDict):
    name: Annotated[str | None, Field(description="The class (null: unclassified)")]
    counts: Annotated[list[list[int]], Field(description="rows × columns feature counts, top row first")]


@wire
class Density(TypedDict):
    """Feature centres counted on a grid over `bbox` (level-0 pixels), per class."""

    bbox: Annotated[tuple[Number, Number, Number, Number],
                    fixed_array(4, "number", description="x0, y0, x1, y1 in level-0 pixels")]
    columns: int
    rows: int
    classes: list[DensityGrid]
