"""The catalog's own errors."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class of the catalog's own errors."""


class DuplicateSourceError(CatalogError):
    """The same source bytes are already in the catalog, as `slide_id`."""

    def __init__(self, slide_id: str) -> None:
        self.slide_id = slide_id
        super().__init__(f"this source is already ingested as slide {slide_id!r}")

    def __reduce__(self) -> tuple[type, tuple[str]]:  # crosses process boundaries (parallel bulk loads) intact
        return type(self), (self.slide_id,)


class SlideIdTakenError(CatalogError):
    """Another image already uses this slide id."""

    def __init__(self, slide_id: str) -> None:
        self.slide_id = slide_id
        super().__init__(f"slide id {slide_id!r} is already taken")

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.slide_id,)

