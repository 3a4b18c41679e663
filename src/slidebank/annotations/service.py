"""Annotations of stored slides: bulk import/export, viewport queries, density, edits.

Who may read a slide is decided by the caller (the API's gatekeeper, the CLI's operator); this
service enforces the rules that need the rows: a feature id names one feature *on its slide*, a
create never touches an existing feature it may not change, and only the author of a feature or
someone who moderates the slide's dataset changes or deletes it. Each change commits with its
audit entry; large imports commit in batches so no request waits long for the write lock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from slidebank.access.principal import Principal
from slidebank.annotations.geojson import (
    MAX_COORDINATE,
    AnnotationError,
    ParsedFeature,
    parse_feature,
    size_class,
    with_class,
)
from slidebank.audit import AuditLog
from slidebank.db import UnitOfWork
from slidebank.db.models import AnnotationFeature, Dataset, Heatmap, Image, Job, new_uuid, utcnow
from slidebank.db.models.base import iso_utc

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
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise AnnotationError("bbox takes finite numbers")
        if not (x1 > x0 and y1 > y0):
            raise AnnotationError("bbox needs x1 > x0 and y1 > y0")
        return cls(x0, y0, x1, y1)


class Annotations:
    def __init__(self, uow: UnitOfWork, audit: AuditLog) -> None:
        self._uow = uow
        self._audit = audit

    # --- writing ----------------------------------------------------------------------------------

    def add(self, slide_id: str, features: Sequence[ParsedFeature], actor: Principal,
            author: str | None = None) -> list[str]:
        """Store features on a slide as `actor` (drawn by `author`, by default the actor); returns
        their ids, in order.

        A feature keeps its id unless the id is already used on this slide: then it is the same
        feature again (a re-import), replaced if the actor may change it (its author, a steward of the
        dataset, an administrator) and refused otherwise. Ids on other slides are unrelated. Features
        commit in batches of INSERT_CHUNK, each with its audit entry; re-running an interrupted import
        replaces what the first run stored.
        """
        ids: list[str] = []
        seen: set[str] = set()
        for start in range(0, len(features), INSERT_CHUNK):
            batch = features[start:start + INSERT_CHUNK]
            with self._uow.write() as session:
                image_id, dataset = self._image(session, slide_id)
                given = [f.uuid for f in batch if f.uuid and f.uuid not in seen]
                existing = {row.uuid: row for row in session.scalars(
                    select(AnnotationFeature).where(AnnotationFeature.image_id == image_id,
                                                    AnnotationFeature.uuid.in_(given)))} if given else {}
                now, pending, replaced = utcnow(), [], 0
                for feature in batch:
                    row = existing.get(feature.uuid) if feature.uuid and feature.uuid not in seen else None
                    if row is not None:
                        if row.author != (author or actor.name) and not actor.moderates(dataset):
                            raise NotAuthor(f"feature {row.uuid} exists on this slide and is not yours to change")
                        self._assign(row, feature)
                        row.updated_at, replaced = now, replaced + 1
                        identifier = row.uuid
                    else:
                        identifier = feature.uuid if feature.uuid and feature.uuid not in seen else new_uuid()
                        pending.append({**self._columns(feature), "uuid": identifier, "image_id": image_id,
                                        "author": author or actor.name, "job_id": None, "created_at": now,
                                        "updated_at": now})
                    seen.add(identifier)  # the same id twice in one document: the second gets a new one
                    ids.append(identifier)
                if pending:
                    session.execute(insert(AnnotationFeature), pending)
                self._audit.append(session, actor.name, "annotations.create", dataset=dataset, slide_id=slide_id,
                                   grant=actor.grants.get(dataset),
                                   detail={"features": len(pending), "replaced": replaced,
                                           **({"author": author} if author else {})})
        return ids

    def update(self, slide_id: str, feature_id: str, change: dict[str, Any], actor: Principal) -> dict[str, Any]:
        """Replace a feature's geometry, properties and/or class; only its author or a moderator."""
        with self._uow.write() as session:
            row, dataset = self._feature(session, slide_id, feature_id)
            if row.author != actor.name and not actor.moderates(dataset):
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
            self._audit.append(session, actor.name, "annotations.update", dataset=dataset, slide_id=slide_id,
                               detail={"feature": feature_id})
            return self._json(row)

    def delete(self, slide_id: str, feature_id: str, actor: Principal) -> None:
        with self._uow.write() as session:
            row, dataset = self._feature(session, slide_id, feature_id)
            if row.author != actor.name and not actor.moderates(dataset):
                raise NotAuthor("only the author of an annotation or a data steward may delete it")
            session.delete(row)
            self._audit.append(session, actor.name, "annotations.delete", dataset=dataset, slide_id=slide_id,
                               detail={"feature": feature_id})

    def replace_algorithm_results(
        self, session: Session, slide_id: str, algorithm: str, author: str, features: Sequence[ParsedFeature],
        job_id: int,
    ) -> int:
        """In the caller's transaction: the features earlier runs of an algorithm wrote on a slide go,
        this run's come — its latest run (or a retried attempt) replaces them, as it replaces the
        slide's facts and heatmaps, all at once or not at all."""
        image_id, _ = self._image(session, slide_id)
        session.execute(delete(AnnotationFeature).where(
            AnnotationFeature.image_id == image_id, AnnotationFeature.job_id.is_not(None),
            AnnotationFeature.author.startswith(f"{algorithm}@", autoescape=True),
        ))
        now = utcnow()
        rows = [{**self._columns(f), "uuid": new_uuid(), "image_id": image_id, "author": author, "job_id": job_id,
                 "created_at": now, "updated_at": now} for f in features]
        for start in range(0, len(rows), INSERT_CHUNK):
            session.execute(insert(AnnotationFeature), rows[start:start + INSERT_CHUNK])
        return len(rows)

    def set_heatmap(
        self, session: Session, slide_id: str, name: str, sealed_png: bytes, shape: tuple[int, int],
        legend: dict[str, Any], job_id: int | None,
    ) -> None:
        """In the caller's transaction: store (or replace) a slide's heatmap `name`; `shape` is
        (rows, columns) of the raster."""
        image_id, _ = self._image(session, slide_id)
        session.execute(delete(Heatmap).where(Heatmap.image_id == image_id, Heatmap.name == name))
        session.add(Heatmap(image_id=image_id, name=name, sealed_png=sealed_png, height=shape[0],
                            width=shape[1], legend=legend, job_id=job_id))

    # --- reading ----------------------------------------------------------------------------------

    def classes(self, slide_id: str) -> list[dict[str, Any]]:
        """Each class on the slide with its colour and count (None: unclassified)."""
        with self._uow.read() as session:
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
        with self._uow.read() as session:
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
        with self._uow.read() as session:
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
        with self._uow.read() as session:
            size = session.execute(select(Image.width, Image.height).where(Image.slide_id == slide_id)).first()
        if size is None:
            raise AnnotationNotFound(f"no slide {slide_id!r}")
        return Viewport(0, 0, size.width, size.height)

    def export(self, slide_id: str, actor: Principal) -> list[dict[str, Any]]:
        """Every feature of a slide as QuPath reads it; the read is audited."""
        features = list(self.iter_export(slide_id))
        with self._uow.read() as session:
            _, dataset = self._image(session, slide_id)
        self._audit.record(actor.name, "annotations.export", dataset=dataset, slide_id=slide_id,
                           grant=actor.grants.get(dataset), detail={"features": len(features)})
        return features

    def iter_export(self, slide_id: str) -> Iterator[dict[str, Any]]:
        """Every feature as QuPath reads it, in insertion order, streamed in chunks."""
        with self._uow.read() as session:
            image_id = self._image_id(session, slide_id)
        last = 0
        while True:
            with self._uow.read() as session:
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

    def heatmaps(self, slide_id: str) -> list[dict[str, Any]]:
        with self._uow.read() as session:
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
        with self._uow.read() as session:
            image_id = self._image_id(session, slide_id)
            sealed = session.scalar(select(Heatmap.sealed_png).where(Heatmap.image_id == image_id, Heatmap.name == name))
        if sealed is None:
            raise AnnotationNotFound(f"no heatmap {name!r} on slide {slide_id!r}")
        return sealed

    def get(self, slide_id: str, feature_id: str) -> dict[str, Any]:
        with self._uow.read() as session:
            return self._json(self._feature(session, slide_id, feature_id)[0])

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
        return Annotations._image(session, slide_id)[0]

    @staticmethod
    def _image(session: Session, slide_id: str) -> tuple[int, str]:
        """The image id and dataset of a slide."""
        row = session.execute(select(Image.id, Dataset.alias).join(Dataset, Dataset.id == Image.dataset_id)
                              .where(Image.slide_id == slide_id)).first()
        if row is None:
            raise AnnotationNotFound(f"no slide {slide_id!r}")
        return row[0], row[1]

    def _feature(self, session: Session, slide_id: str, feature_id: str) -> tuple[AnnotationFeature, str]:
        image_id, dataset = self._image(session, slide_id)
        row = session.scalar(
            select(AnnotationFeature).where(AnnotationFeature.uuid == feature_id, AnnotationFeature.image_id == image_id)
        )
        if row is None:
            raise AnnotationNotFound(f"no annotation {feature_id!r} on slide {slide_id!r}")
        return row, dataset

