"""Annotations of stored slides: bulk import/export, viewport queries, density, edits.

Who may do what is decided by the caller (the API's gatekeeper, the CLI's operator); this service
enforces the one rule that needs the rows: only the author of a feature, or someone allowed to
moderate the slide's dataset, changes or deletes it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from slidebank.annotations.geojson import (
    MAX_COORDINATE,
    AnnotationError,
    ParsedFeature,
    parse_feature,
    size_class,
    with_class,
)
from slidebank.annotations.models import AnnotationFeature, Heatmap
from slidebank.catalog.database import WRITE_OPTIONS, iso_utc, session_factory
from slidebank.catalog.models import Image, new_uuid, utcnow
from slidebank.jobs.models import Job

INSERT_CHUNK = 2000
MAX_SIZE_CLASS = size_class((0.0, 0.0, 2 * MAX_COORDINATE, 2 * MAX_COORDINATE))
MAX_DENSITY_CELLS = 256 * 256


class AnnotationNotFound(LookupError):
    pass


class NotAuthor(PermissionError):
    pass


@dataclass(frozen=True)
class Viewport:
    """A level-0 pixel rectangle: x0 <= x < x1, y0 <= y < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def parse(cls, text: str) -> Viewport:
        try:
            x0, y0, x1, y1 = (float(part) for part in text.split(","))
        except ValueError:
            raise AnnotationError("bbox is four numbers: x0,y0,x1,y1 (level-0 pixels)") from None
        if not (x1 > x0 and y1 > y0):
            raise AnnotationError("bbox needs x1 > x0 and y1 > y0")
        return cls(x0, y0, x1, y1)


class Annotations:
    def __init__(self, engine: Engine) -> None:
        self._read = session_factory(engine)
        self._write = session_factory(engine.execution_options(**WRITE_OPTIONS))

    # --- writing ----------------------------------------------------------------------------------

    def add(
        self, slide_id: str, features: Sequence[ParsedFeature], author: str, job_id: int | None = None
    ) -> list[str]:
        """Store features; a feature whose id already exists on this slide replaces it (re-import is
        idempotent). One transaction: all features or none. Returns their ids, in order."""
        ids: list[str] = []
        with self._write.begin() as session:
            image_id = self._image_id(session, slide_id)
            given = [f.uuid for f in features if f.uuid]
            existing: dict[str, AnnotationFeature] = {}
            taken: set[str] = set()  # ids used on other slides: such a feature gets a new id here
            for start in range(0, len(given), INSERT_CHUNK):
                chunk = given[start:start + INSERT_CHUNK]
                for row in session.scalars(select(AnnotationFeature).where(AnnotationFeature.uuid.in_(chunk))):
                    if row.image_id == image_id:
                        existing[row.uuid] = row
                    else:
                        taken.add(row.uuid)
            now = utcnow()
            pending: list[dict[str, Any]] = []
            for feature in features:
                if feature.uuid in existing:
                    self._assign(existing[feature.uuid], feature)
                    existing[feature.uuid].updated_at = now
                    ids.append(feature.uuid)  # type: ignore[arg-type]
                    continue
                identifier = feature.uuid if feature.uuid and feature.uuid not in taken else new_uuid()
                taken.add(identifier)  # the same id twice in one document: the second gets a new one
                ids.append(identifier)
                pending.append({
                    **self._columns(feature), "uuid": identifier, "image_id": image_id, "author": author,
                    "job_id": job_id, "created_at": now, "updated_at": now,
                })
                if len(pending) >= INSERT_CHUNK:
                    session.execute(insert(AnnotationFeature), pending)
                    pending.clear()
            if pending:
                session.execute(insert(AnnotationFeature), pending)
        return ids

    def update(self, slide_id: str, feature_id: str, change: dict[str, Any], editor: str, moderator: bool) -> dict:
        """Replace a feature's geometry, properties and/or class; only its author or a moderator."""
        with self._write.begin() as session:
            row = self._feature(session, slide_id, feature_id)
            if row.author != editor and not moderator:
                raise NotAuthor("only the author of an annotation or a data steward may change it")
            geometry = change.get("geometry", row.geometry)
            properties = change.get("properties", row.properties)
            if "class_name" in change or "color" in change:
                properties = with_class(
                    properties or {}, change.get("class_name", row.class_name), change.get("color", row.color)
                )
            parsed = parse_feature({"type": "Feature", "geometry": geometry, "properties": properties})
            self._assign(row, parsed)
            row.updated_at = utcnow()
            session.flush()
            return self._json(row)

    def delete(self, slide_id: str, feature_id: str, editor: str, moderator: bool) -> None:
        with self._write.begin() as session:
            row = self._feature(session, slide_id, feature_id)
            if row.author != editor and not moderator:
                raise NotAuthor("only the author of an annotation or a data steward may delete it")
            session.delete(row)

    def delete_algorithm_results(self, slide_id: str, algorithm: str) -> int:
        """Drop the features earlier runs of an algorithm wrote on a slide: its latest run (or a
        retried attempt) replaces them, as it replaces the slide's facts and heatmaps."""
        with self._write.begin() as session:
            image_id = self._image_id(session, slide_id)
            result = session.execute(delete(AnnotationFeature).where(
                AnnotationFeature.image_id == image_id, AnnotationFeature.job_id.is_not(None),
                AnnotationFeature.author.startswith(f"{algorithm}@", autoescape=True),
            ))
            return int(result.rowcount or 0)

    # --- reading ----------------------------------------------------------------------------------

    def classes(self, slide_id: str) -> list[dict[str, Any]]:
        """Each class on the slide with its colour and count (None: unclassified)."""
        with self._read() as session:
            image_id = self._image_id(session, slide_id)
            rows = session.execute(
                select(AnnotationFeature.class_name, func.max(AnnotationFeature.color), func.count())
                .where(AnnotationFeature.image_id == image_id)
                .group_by(AnnotationFeature.class_name).order_by(AnnotationFeature.class_name)
            ).all()
        return [{"name": name, "color": color, "count": int(count)} for name, color, count in rows]

    def query(
        self, slide_id: str, viewport: Viewport | None = None, classes: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> tuple[list[dict[str, Any]], int]:
        """Features meeting the viewport (all when None), at most `limit`, and how many there are."""
        with self._read() as session:
            image_id = self._image_id(session, slide_id)
            conditions = self._conditions(image_id, viewport, classes)
            total = int(session.scalar(select(func.count()).select_from(AnnotationFeature).where(*conditions)) or 0)
            rows = session.scalars(
                select(AnnotationFeature).where(*conditions).order_by(AnnotationFeature.id).limit(limit)
            )
            return [self._json(row) for row in rows], total

    def density(
        self, slide_id: str, viewport: Viewport, columns: int, rows: int, classes: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Feature centres counted on a columns x rows grid over the viewport, per class: what the
        viewer draws instead of every polygon when it is zoomed out."""
        if columns < 1 or rows < 1 or columns * rows > MAX_DENSITY_CELLS:
            raise AnnotationError(f"a density grid has 1 to {MAX_DENSITY_CELLS} cells")
        cell_w = (viewport.x1 - viewport.x0) / columns
        cell_h = (viewport.y1 - viewport.y0) / rows
        with self._read() as session:
            image_id = self._image_id(session, slide_id)
            conditions = self._conditions(image_id, viewport, classes)
            center_x = (AnnotationFeature.min_x + AnnotationFeature.max_x) / 2
            center_y = (AnnotationFeature.min_y + AnnotationFeature.max_y) / 2
            column = func.floor((center_x - viewport.x0) / cell_w)
            row = func.floor((center_y - viewport.y0) / cell_h)
            statement = (
                select(column, row, AnnotationFeature.class_name, func.count())
                .where(*conditions)
                .group_by(column, row, AnnotationFeature.class_name)
            )
            grids: dict[str | None, list[list[int]]] = defaultdict(lambda: [[0] * columns for _ in range(rows)])
            for cx, cy, name, count in session.execute(statement):
                cx, cy = int(cx), int(cy)
                if 0 <= cx < columns and 0 <= cy < rows:
                    grids[name][cy][cx] += int(count)
        return {
            "bbox": [viewport.x0, viewport.y0, viewport.x1, viewport.y1],
            "columns": columns,
            "rows": rows,
            "classes": [{"name": name, "counts": grid} for name, grid in sorted(grids.items(), key=lambda i: str(i[0]))],
        }

    def slide_extent(self, slide_id: str) -> Viewport:
        """The whole slide, in level-0 pixels."""
        with self._read() as session:
            size = session.execute(select(Image.width, Image.height).where(Image.slide_id == slide_id)).first()
        if size is None:
            raise AnnotationNotFound(f"no slide {slide_id!r}")
        return Viewport(0, 0, size.width, size.height)

    def iter_export(self, slide_id: str) -> Iterator[dict[str, Any]]:
        """Every feature as QuPath reads it, in insertion order, streamed in chunks."""
        with self._read() as session:
            image_id = self._image_id(session, slide_id)
        last = 0
        while True:
            with self._read() as session:
                rows = list(session.scalars(
                    select(AnnotationFeature)
                    .where(AnnotationFeature.image_id == image_id, AnnotationFeature.id > last)
                    .order_by(AnnotationFeature.id).limit(INSERT_CHUNK)
                ))
            if not rows:
                return
            for row in rows:
                yield self.geojson(row)
            last = rows[-1].id

    # --- heatmaps ---------------------------------------------------------------------------------

    def set_heatmap(
        self, slide_id: str, name: str, sealed_png: bytes, shape: tuple[int, int], legend: dict[str, Any],
        job_id: int | None,
    ) -> None:
        """Store (or replace) a slide's heatmap `name`; `shape` is (rows, columns) of the raster."""
        with self._write.begin() as session:
            image_id = self._image_id(session, slide_id)
            session.execute(delete(Heatmap).where(Heatmap.image_id == image_id, Heatmap.name == name))
            session.add(Heatmap(image_id=image_id, name=name, sealed_png=sealed_png, height=shape[0],
                                width=shape[1], legend=legend, job_id=job_id))

    def heatmaps(self, slide_id: str) -> list[dict[str, Any]]:
        with self._read() as session:
            image_id = self._image_id(session, slide_id)
            rows = session.execute(
                select(Heatmap.name, Heatmap.width, Heatmap.height, Heatmap.legend, Job.uuid.label("job"),
                       Heatmap.created_at)
                .outerjoin(Job, Job.id == Heatmap.job_id).where(Heatmap.image_id == image_id).order_by(Heatmap.name)
            ).all()
        return [{"name": r.name, "columns": r.width, "rows": r.height, "legend": r.legend,
                 "extent": r.legend.get("extent"), "job": r.job,
                 "created_at": iso_utc(r.created_at)} for r in rows]

    def sealed_heatmap(self, slide_id: str, name: str) -> bytes:
        with self._read() as session:
            image_id = self._image_id(session, slide_id)
            sealed = session.scalar(select(Heatmap.sealed_png).where(Heatmap.image_id == image_id, Heatmap.name == name))
        if sealed is None:
            raise AnnotationNotFound(f"no heatmap {name!r} on slide {slide_id!r}")
        return sealed

    def get(self, slide_id: str, feature_id: str) -> dict[str, Any]:
        with self._read() as session:
            return self._json(self._feature(session, slide_id, feature_id))

    # --- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def geojson(row: AnnotationFeature) -> dict[str, Any]:
        return {"type": "Feature", "id": row.uuid, "geometry": row.geometry, "properties": row.properties}

    def _json(self, row: AnnotationFeature) -> dict[str, Any]:
        """GeoJSON plus Slidebank's own fields (who made it, by which job) under `slidebank`."""
        return {
            **self.geojson(row),
            "slidebank": {
                "class": row.class_name, "color": row.color, "author": row.author,
                "job": row.job.uuid if row.job else None, "bbox": [row.min_x, row.min_y, row.max_x, row.max_y],
                "updated_at": iso_utc(row.updated_at),
            },
        }

    @staticmethod
    def _columns(feature: ParsedFeature) -> dict[str, Any]:
        min_x, min_y, max_x, max_y = feature.bounds
        return {
            "geometry_type": feature.geometry["type"], "geometry": feature.geometry,
            "properties": feature.properties, "class_name": feature.class_name, "color": feature.color,
            "min_x": min_x, "min_y": min_y, "max_x": max_x, "max_y": max_y, "size_class": feature.size_class,
        }

    def _assign(self, row: AnnotationFeature, feature: ParsedFeature) -> None:
        for name, value in self._columns(feature).items():
            setattr(row, name, value)

    @staticmethod
    def _conditions(image_id: int, viewport: Viewport | None, classes: Sequence[str] | None) -> list:
        # With a viewport the image is named inside each size-class branch instead (see below).
        conditions: list[Any] = [] if viewport is not None else [AnnotationFeature.image_id == image_id]
        if classes is not None:
            named = [c for c in classes if c]
            wanted = [AnnotationFeature.class_name.in_(named)] if named else []
            if "" in classes:  # the empty name selects unclassified features
                wanted.append(AnnotationFeature.class_name.is_(None))
            conditions.append(or_(*wanted) if wanted else AnnotationFeature.id.is_(None))
        if viewport is not None:
            # One bounded range per size class; absent classes cost one index seek each, which is
            # cheaper than asking which classes are present (a scan of the slide's index entries).
            # Each branch repeats the image: SQLite then runs the OR as one index range per branch.
            per_class = [
                and_(
                    AnnotationFeature.image_id == image_id,
                    AnnotationFeature.size_class == size,
                    AnnotationFeature.min_x.between(viewport.x0 - 2.0**size, viewport.x1),
                    AnnotationFeature.min_y.between(viewport.y0 - 2.0**size, viewport.y1),
                )
                for size in range(MAX_SIZE_CLASS + 1)
            ]
            conditions += [or_(*per_class), AnnotationFeature.max_x >= viewport.x0,
                           AnnotationFeature.max_y >= viewport.y0]
        return conditions

    @staticmethod
    def _image_id(session: Session, slide_id: str) -> int:
        image_id = session.scalar(select(Image.id).where(Image.slide_id == slide_id))
        if image_id is None:
            raise AnnotationNotFound(f"no slide {slide_id!r}")
        return image_id

    def _feature(self, session: Session, slide_id: str, feature_id: str) -> AnnotationFeature:
        image_id = self._image_id(session, slide_id)
        row = session.scalar(
            select(AnnotationFeature).where(AnnotationFeature.uuid == feature_id, AnnotationFeature.image_id == image_id)
        )
        if row is None:
            raise AnnotationNotFound(f"no annotation {feature_id!r} on slide {slide_id!r}")
        return row

