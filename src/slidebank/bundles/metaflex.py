"""Writing MetaFleX XML: objects, references, attribute sets (string, numeric, coded), files.

MetaFleX elements are unqualified (only the common types have a namespace), and every object's
ATTRIBUTES is required but may be nil: an object with no attributes says `xsi:nil="true"`.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from lxml import etree
from lxml.etree import _Element as Element

XSI = "http://www.w3.org/2001/XMLSchema-instance"
NIL = f"{{{XSI}}}nil"


def root(name: str) -> Element:
    return etree.Element(name, nsmap={"xsi": XSI})


def child(parent: Element, name: str) -> Element:
    return etree.SubElement(parent, name)


def obj(parent: Element, name: str, alias: str, accession: str | None = None) -> Element:
    element = etree.SubElement(parent, name, alias=alias)
    if accession:
        element.set("accession", accession)
    return element


def text(parent: Element, name: str, value: object) -> Element:
    element = etree.SubElement(parent, name)
    element.text = str(value)
    return element


def ref(parent: Element, name: str, alias: str, accession: str | None = None) -> Element:
    return obj(parent, name, alias, accession)


def code(parent: Element, name: str, value: str, scheme: str, meaning: str) -> Element:
    element = etree.SubElement(parent, name)
    text(element, "CODE", value)
    text(element, "SCHEME", scheme)
    text(element, "MEANING", meaning)
    etree.SubElement(element, "SCHEME_VERSION").set(NIL, "true")
    return element


class Attributes:
    """An ATTRIBUTES (or any AttributesType) element being filled; nil if nothing is added."""

    def __init__(self, parent: Element, name: str = "ATTRIBUTES") -> None:
        self.element = etree.SubElement(parent, name)

    def string(self, tag: str, value: str | None) -> None:
        if value not in (None, ""):
            attribute = etree.SubElement(self.element, "STRING_ATTRIBUTE")
            text(attribute, "TAG", tag)
            text(attribute, "VALUE", value)

    def number(self, tag: str, value: float | int | None, units: str | None = None) -> None:
        if value is None:
            return
        attribute = etree.SubElement(self.element, "MEASUREMENT_ATTRIBUTE" if units else "NUMERIC_ATTRIBUTE")
        text(attribute, "TAG", tag)
        text(attribute, "VALUE", Decimal(repr(float(value))) if isinstance(value, float) else value)
        if units:
            text(attribute, "UNITS", units)

    def coded(self, tag: str, name: str | None, value: str | None, scheme: str | None, meaning: str | None) -> None:
        """A coded value where there is a code; the display text as a string otherwise."""
        if value and scheme:
            attribute = etree.SubElement(self.element, "CODE_ATTRIBUTE")
            text(attribute, "TAG", tag)
            code(attribute, "VALUE", value, scheme, meaning or name or value)
        else:
            self.string(tag, name)

    def close(self) -> None:
        if len(self.element) == 0:
            self.element.set(NIL, "true")


def empty_attributes(parent: Element, name: str = "ATTRIBUTES") -> None:
    Attributes(parent, name).close()


def file(parent: Element, filename: str, checksum: str, filetype: str, name: str = "FILE") -> Element:
    return etree.SubElement(parent, name, filename=filename, filetype=filetype, checksum_method="SHA256",
                            checksum=checksum)


def write(document: Element, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    etree.ElementTree(document).write(str(path), xml_declaration=True, encoding="UTF-8", pretty_print=True)


def refs(parent: Element, name: str, aliases: Iterable[str]) -> None:
    for alias in aliases:
        ref(parent, name, alias)
