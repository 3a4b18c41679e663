"""Labels of patches from the annotations that cover them.

A patch takes the class of the annotation area that covers the largest part of it, if that part
is at least `min_overlap` of the patch; otherwise it is unlabelled (None). Areas of one class are
merged first, so two touching polygons of a class count together. Points and lines cover nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import shapely
from shapely.geometry import box, shape
from shapely.strtree import STRtree


def feature_class(feature: dict[str, Any]) -> str | None:
    classification = (feature.get("properties") or {}).get("classification") or {}
    name = classification.get("name") if isinstance(classification, dict) else None
    return str(name) if name else None


class AnnotationLabeler:
    """Labels level-0 boxes of one slide from its GeoJSON features (only `classes`, if given)."""

    def __init__(self, features: Iterable[dict[str, Any]], classes: Sequence[str] | None = None,
                 min_overlap: float = 0.5) -> None:
        if not 0 < min_overlap <= 1:
            raise ValueError("min_overlap is a fraction of the patch, in (0, 1]")
        self.min_overlap = min_overlap
        by_class: dict[str, list[Any]] = {}
        for feature in features:
            name = feature_class(feature)
            if name is None or (classes is not None and name not in classes):
                continue
            geometry = shape(feature["geometry"])
            if geometry.area > 0:
                by_class.setdefault(name, []).append(shapely.make_valid(geometry))
        self.classes = sorted(by_class)
        self._areas = [shapely.union_all(by_class[name]) for name in self.classes]
        self._tree = STRtree(self._areas) if self._areas else None

    def label(self, bounds: tuple[float, float, float, float]) -> str | None:
        if self._tree is None:
            return None
        patch = box(*bounds)
        best, best_area = None, 0.0
        for index in self._tree.query(patch):
            area = self._areas[int(index)].intersection(patch).area
            if area > best_area:
                best, best_area = self.classes[int(index)], area
        return best if best_area >= self.min_overlap * patch.area else None
