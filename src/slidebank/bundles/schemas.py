"""The MetaFleX 2.0 XSDs and validation of a bundle's XML files against them.

The schemas are BIGPICTURE's (imi-bigpicture/bigpicture-metaflex, Apache-2.0) and are not shipped
with Slidebank: SLIDEBANK_METAFLEX_XSD names their folder (a checkout of that repository); in a
source checkout the default is `../shared/bigpicture-metaflex` beside it. Errors name the file, the
line and the element, as lxml reports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lxml import etree

# Which schema each bundle file is validated against (paths inside DATASET_<alias>/).
FILE_SCHEMAS = {
    "METADATA/dataset.xml": "BP.dataset.xsd",
    "METADATA/policy.xml": "BP.policy.xsd",
    "METADATA/sample.xml": "BP.sample.xsd",
    "METADATA/staining.xml": "BP.staining.xsd",
    "METADATA/image.xml": "BP.image.xsd",
    "METADATA/annotation.xml": "BP.annotation.xsd",
    "METADATA/observation.xml": "BP.observation.xsd",
    "METADATA/observer.xml": "BP.observer.xsd",
    "LANDING_PAGE/landing_page.xml": "BP.landing_page.xsd",
    "PRIVATE/organisation.xml": "BP.organisation.xsd",
    "PRIVATE/rems.xml": "BP.rems.xsd",
}
MAX_XML_BYTES = 256 * 2**20  # a metadata file larger than this is refused before parsing


class SchemasMissing(RuntimeError):
    """The MetaFleX XSDs are not where SLIDEBANK_METAFLEX_XSD (or the default) says."""


@dataclass(frozen=True)
class Problem:
    """One reason a bundle is refused: where, and what."""

    file: str
    line: int | None
    element: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "") + (f" <{self.element}>" if self.element else "")
        return f"{where}: {self.message}"


def schemas_folder() -> Path:
    configured = os.environ.get("SLIDEBANK_METAFLEX_XSD")
    folder = Path(configured) if configured else Path(__file__).resolve().parents[4] / "shared" / "bigpicture-metaflex"
    if not (folder / "BP.common.xsd").is_file():
        raise SchemasMissing(f"the MetaFleX XSDs are not in {folder}: set SLIDEBANK_METAFLEX_XSD to a checkout of "
                             "imi-bigpicture/bigpicture-metaflex")
    return folder


@cache
def _schema(folder: Path, name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(folder / name), _parser()))


def _parser() -> etree.XMLParser:
    """No entities, no network, no DTDs: an XML file is data, not instructions."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse(path: Path, relative: str) -> tuple[etree._ElementTree | None, list[Problem]]:
    """The parsed file, or the reason it cannot be parsed."""
    if path.stat().st_size > MAX_XML_BYTES:
        return None, [Problem(relative, None, None, f"larger than {MAX_XML_BYTES} bytes")]
    try:
        return etree.parse(str(path), _parser()), []
    except etree.XMLSyntaxError as error:
        return None, [Problem(relative, error.lineno, None, f"not well-formed XML: {error.msg}")]


def validate(document: etree._ElementTree, relative: str) -> list[Problem]:
    """Problems of one bundle file against its schema (FILE_SCHEMAS)."""
    schema = _schema(schemas_folder(), FILE_SCHEMAS[relative])
    if schema.validate(document):
        return []
    return [Problem(relative, error.line, _element(error.path), error.message) for error in schema.error_log]


def _element(path: str | None) -> str | None:
    """The last step of an lxml error path (/SAMPLE_SET/SPECIMEN[2]/EXTRACTED_FROM_REF)."""
    return path.rsplit("/", 1)[-1] if path else None
