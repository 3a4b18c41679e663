"""Annotation tables: one row per feature (point, rectangle, polygon, multipolygon) and heatmaps.

A feature keeps its GeoJSON geometry and properties exactly as submitted (QuPath round trips
byte-for-value), plus the columns a viewport query needs: its bounding box and a *size class*
(`ceil(log2(max(width, height)))`). Features of one size class are at most 2^class pixels wide, so
"features meeting this viewport" becomes, per size class, one range scan of the
`(image_id, size_class, min_x, min_y)` B-tree bounded by the viewport widened by 2^class — the same
plan on SQLite and PostgreSQL, fast at hundreds of thousands of polygons per slide, and not spoilt
by one huge tissue outline (it sits alone in a high class).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from slidebank.db.models.base import NAME_LENGTH, Base, new_uuid, utcnow
from slidebank.db.models.jobs import Job

FeatureId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only


class AnnotationFeature(Base):
    """One annotated object on one image, by a person (`author`) or an algorithm run (`job_id`)."""

    __tablename__ = "annotation_features"
    __table_args__ = (
        Index("ix_annotation_features_viewport", "image_id", "size_class", "min_x", "min_y"),
        Index("ix_annotation_features_class", "image_id", "class_name"),
        UniqueConstraint("image_id", "uuid"),  # an id names a feature on its slide, and nowhere else
    )

    id: Mapped[int] = mapped_column(FeatureId, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    geometry_type: Mapped[str] = mapped_column(String(32))
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    class_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    color: Mapped[str | None] = mapped_column(String(9))  # "#rrggbb"
    min_x: Mapped[float] = mapped_column(Float)
    min_y: Mapped[float] = mapped_column(Float)
    max_x: Mapped[float] = mapped_column(Float)
    max_y: Mapped[float] = mapped_column(Float)
    size_class: Mapped[int] = mapped_column(Integer)
    author: Mapped[str] = mapped_column(String(NAME_LENGTH))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job | None] = relationship(lazy="joined")  # provenance: the run that wrote it


class Heatmap(Base):
    """A per-slide raster overlay (tissue mask, blur map, classifier scores): a small RGBA PNG,
    sealed to the node key and kept in the database (no blob to garbage-collect or race for)."""

    __tablename__ = "heatmaps"
    __table_args__ = (UniqueConstraint("image_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    sealed_png: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int] = mapped_column(Integer)  # raster cells; the raster spans the whole slide
    height: Mapped[int] = mapped_column(Integer)
    legend: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
