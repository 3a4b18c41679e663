"""The catalog: slides described as BIGPICTURE MetaFleX objects, registered, indexed and searched."""

from slidebank.catalog.errors import CatalogError, DuplicateSourceError, SlideIdTakenError
from slidebank.catalog.identifiers import SLIDE_ID_PATTERN, SLIDE_ID_REGEX
from slidebank.catalog.query import FACETS, FactCondition, SearchQuery, SearchResult
from slidebank.catalog.service import Catalog

__all__ = [
    "FACETS", "SLIDE_ID_PATTERN", "SLIDE_ID_REGEX", "Catalog", "CatalogError", "DuplicateSourceError",
    "FactCondition", "SearchQuery", "SearchResult", "SlideIdTakenError",
]
