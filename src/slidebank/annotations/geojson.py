"""GeoJSON as QuPath writes and reads it: features in level-0 pixel coordinates, with the class
under `properties.classification` ({"name": …, "color": [r, g, b]}; older QuPath: `colorRGB`).

Geometry and properties are kept exactly as given, so what QuPath exported comes back unchanged;
only what an index needs (bounding box, class, colour) is derived here, with shapely.
"""

from __future__ import annotations

import json
import math
import re
import uuid as uuid_module
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import shapely
from shapely.geometry import shape

GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})
MAX_COORDINATE = 10_000_000.0  # 10 m at 1 µm/px: anything beyond is not a slide coordinate
COLOR_PATTERN = re.compile(r"^#[0-9a-fA-F]{6}$")
MAX_VERTICES = 1_000_000
MAX_PROPERTY_DEPTH = 16  # QuPath nests three levels; JSON far deeper breaks parsers and databases
MAX_PROPERTIES_BYTES = 64 * 1024


class AnnotationError(ValueError):
    """A feature that cannot be stored, with the reason a person can act on."""


@dataclass(frozen=True)
class ParsedFeature:
    uuid: str | None
    geometry: dict[str, Any]
    properties: dict[str, Any]
    class_name: str | None
    color: str | None
    bounds: tuple[float, float, float, float]

    @property
    def size_class(self) -> int:
        return size_class(self.bounds)


def size_class(bounds: tuple[float, float, float, float]) -> int:
    """ceil(log2(largest side)), at least 0: a feature of class c is at most 2**c pixels wide and high."""
    extent = max(bounds[2] - bounds[0], bounds[3] - bounds[1], 1.0)
    return max(0, math.ceil(math.log2(extent)))


def iter_features(document: Any) -> Iterator[dict[str, Any]]:
    """The features of a FeatureCollection, a single Feature, a bare geometry or a list of these."""
    if isinstance(document, list):
        for item in document:
            yield from iter_features(item)
        return
    if not isinstance(document, dict):
        raise AnnotationError("expected a GeoJSON object or a list of features")
    kind = document.get("type")
    if kind == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise AnnotationError("a FeatureCollection needs a 'features' list")
        yield from iter_features(features)
    elif kind == "Feature":
        yield document
    elif kind in GEOMETRY_TYPES:
        yield {"type": "Feature", "geometry": document, "properties": {}}
    else:
        raise AnnotationError(f"unsupported GeoJSON type {kind!r}")


def parse_feature(feature: dict[str, Any]) -> ParsedFeature:
    """Validate one GeoJSON feature and derive its index columns."""
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
        kind = geometry.get("type") if isinstance(geometry, dict) else geometry
        raise AnnotationError(f"unsupported geometry {kind!r}; one of {', '.join(sorted(GEOMETRY_TYPES))}")
    try:
        parsed = shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException) as error:
        raise AnnotationError(f"malformed {geometry['type']} coordinates: {error}") from None
    if parsed.is_empty:
        raise AnnotationError(f"empty {geometry['type']}")
    if shapely.get_num_coordinates(parsed) > MAX_VERTICES:
        raise AnnotationError(f"more than {MAX_VERTICES} vertices in one feature")
    bounds = tuple(float(b) for b in parsed.bounds)
    if not all(math.isfinite(b) and abs(b) <= MAX_COORDINATE for b in bounds):
        raise AnnotationError("coordinates must be finite level-0 pixel positions")
    properties = feature.get("properties") or {}
    if not isinstance(properties, dict):
        raise AnnotationError("'properties' must be an object")
    _check_properties(properties)
    identifier = feature.get("id")
    return ParsedFeature(
        uuid=_valid_uuid(identifier),
        geometry=geometry,
        properties=properties,
        class_name=class_name(properties),
        color=class_color(properties),
        bounds=bounds,  # type: ignore[arg-type]  # shapely's bounds are always four numbers
    )


def _check_properties(properties: dict[str, Any]) -> None:
    """Bounded depth and size, finite numbers: what is stored must be readable back by everyone."""
    stack: list[tuple[Any, int]] = [(properties, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_PROPERTY_DEPTH:
            raise AnnotationError(f"'properties' nest deeper than {MAX_PROPERTY_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise AnnotationError("'properties' hold a number that is not finite")
    try:
        size = len(json.dumps(properties, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise AnnotationError(f"'properties' are not plain JSON: {error}") from None
    if size > MAX_PROPERTIES_BYTES:
        raise AnnotationError(f"'properties' take {size} bytes; at most {MAX_PROPERTIES_BYTES} per feature")


def parse_document(document: Any) -> list[ParsedFeature]:
    """Every feature of a document, or AnnotationError naming the first bad one."""
    parsed = []
    for index, feature in enumerate(iter_features(document)):
        try:
            parsed.append(parse_feature(feature))
        except AnnotationError as error:
            raise AnnotationError(f"feature {index}: {error}") from None
    return parsed


def class_name(properties: dict[str, Any]) -> str | None:
    classification = properties.get("classification")
    if isinstance(classification, dict) and isinstance(classification.get("name"), str):
        return classification["name"][:255] or None
    if isinstance(classification, str):
        return classification[:255] or None
    return None


def class_color(properties: dict[str, Any]) -> str | None:
    """'#rrggbb' from QuPath's `classification.color` ([r, g, b]), a '#rrggbb' string, or the packed
    ARGB integer `colorRGB` of QuPath 0.2 (in `classification` or in `properties`)."""
    classification = properties.get("classification")
    color = classification.get("color", classification.get("colorRGB")) if isinstance(classification, dict) else None
    if color is None:
        color = properties.get("color", properties.get("colorRGB"))
    if isinstance(color, list) and len(color) >= 3 and all(isinstance(c, int) for c in color[:3]):
        return "#" + "".join(f"{max(0, min(255, c)):02x}" for c in color[:3])
    if isinstance(color, int) and not isinstance(color, bool):
        return f"#{color & 0xFFFFFF:06x}"
    if isinstance(color, str) and COLOR_PATTERN.match(color):
        return color.lower()
    return None


def with_class(properties: dict[str, Any], name: str | None, color: str | None) -> dict[str, Any]:
    """Properties with QuPath's classification set (or removed when `name` is None)."""
    updated = {k: v for k, v in properties.items() if k != "classification"}
    if name:
        classification: dict[str, Any] = {"name": name}
        if color and COLOR_PATTERN.match(color):
            classification["color"] = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
        updated["classification"] = classification
    return updated


def _valid_uuid(identifier: Any) -> str | None:
    if not isinstance(identifier, str):
        return None
    try:
        return str(uuid_module.UUID(identifier))
    except ValueError:
        return None
