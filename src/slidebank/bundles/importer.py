"""`slidebank bundle import DIR`: a BIGPICTURE submission bundle into this node.

Nothing is stored before the whole bundle is checked: every XML file against its MetaFleX XSD, every
reference between objects, every listed file (inside the bundle, present, its SHA-256 as listed).
A refused bundle is answered with each problem's file, line and element. Then the dataset, its policy
and organisation are created; each image goes through the ingest pipeline (validation, conversion
with frames copied, encryption, catalog) with the bundle's own sample aliases, which are pseudonyms
already; observers, observations and annotations follow. If any image fails, everything this import
created is removed again (one transaction; unreferenced blobs go at the next recovery).

Coded attributes are taken by their meaning through Slidebank's vocabularies (what they do not know
is kept as text, without the code). A slide refers to one STAINING; its STAIN entries become the
slide's stainings, PROCEDURE_INFORMATION alone none (the export's `unstained`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml.etree import _Element as Element
from sqlalchemy import delete, select

from slidebank.access import version
from slidebank.access.principal import Principal
from slidebank.annotations.geojson import parse_document
from slidebank.bundles.schemas import FILE_SCHEMAS, Problem, parse, validate
from slidebank.catalog.changes import note_changed
from slidebank.catalog.files import dataset_blobs, note_pending
from slidebank.catalog.identifiers import SLIDE_ID_PATTERN
from slidebank.catalog.records import SlideDescription
from slidebank.catalog.vocabulary import (
    ANATOMICAL_SITES,
    BLOCK_PREPARATIONS,
    FIXATION_TYPES,
    SEX,
    SPECIES,
    SPECIMEN_TYPES,
    Vocabulary,
)
from slidebank.db.models import (
    Annotation,
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    Image,
    Observation,
    Observer,
    Organisation,
    Policy,
    Slide,
    Specimen,
    Staining,
)
from slidebank.ingest.pipeline import IngestRequest, new_slide_id
from slidebank.ingest.runner import IngestPlan, run_ingest
from slidebank.node import Node
from slidebank.slides.source import SourceSlide

# Each reference element, and the kinds of object it may name.
REFERENCES: dict[str, tuple[str, ...]] = {
    "BIOLOGICAL_BEING_REF": ("BIOLOGICAL_BEING",), "EXTRACTED_FROM_REF": ("BIOLOGICAL_BEING",),
    "PART_OF_CASE_REF": ("CASE",), "SAMPLED_FROM_REF": ("SPECIMEN",), "CREATED_FROM_REF": ("BLOCK",),
    "STAINING_INFORMATION_REF": ("STAINING",), "IMAGE_OF": ("SLIDE",), "IMAGE_REF": ("IMAGE",),
    "ANNOTATION_REF": ("ANNOTATION",), "OBSERVATION_REF": ("OBSERVATION",), "OBSERVER_REF": ("OBSERVER",),
    "DATASET_REF": ("DATASET",), "CASE_REF": ("CASE",), "SPECIMEN_REF": ("SPECIMEN",), "BLOCK_REF": ("BLOCK",),
    "SLIDE_REF": ("SLIDE",), "COMPLEMENTS_DATASET_REF": (),  # another dataset: not checked here
}
_OBSERVATION_TARGETS = {"BIOLOGICAL_BEING_REF": (BiologicalBeing, "biological_being_id"), "CASE_REF": (Case, "case_id"),
                        "SPECIMEN_REF": (Specimen, "specimen_id"), "BLOCK_REF": (Block, "block_id"),
                        "SLIDE_REF": (Slide, "glass_slide_id"), "IMAGE_REF": (Image, "image_id")}


class BundleInvalid(ValueError):
    """The bundle was refused; `problems` says where and why. Nothing of it was stored."""

    def __init__(self, problems: list[Problem]) -> None:
        shown = "".join(f"\n  {problem}" for problem in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"the bundle is refused ({len(problems)} problem(s)):{shown}{more}")
        self.problems = problems


@dataclass(frozen=True)
class Located:
    element: Element
    file: str


@dataclass
class Bundle:
    """A checked bundle: its folder and its objects by kind and alias."""

    root: Path
    objects: dict[str, dict[str, Located]] = field(default_factory=dict)

    def one(self, kind: str) -> Element:
        return next(iter(self.objects[kind].values())).element

    def each(self, kind: str) -> Iterator[Element]:
        for located in self.objects.get(kind, {}).values():
            yield located.element

    def get(self, kind: str, alias: str) -> Element:
        return self.objects[kind][alias].element


@dataclass(frozen=True)
class ImportReport:
    dataset: str
    images: int
    observations: int
    annotations: int


def check_bundle(folder: Path) -> Bundle:
    """The bundle's objects once everything is checked; BundleInvalid with every problem otherwise."""
    problems: list[Problem] = []
    bundle = Bundle(folder)
    if not (folder / "METADATA" / "dataset.xml").is_file():
        raise BundleInvalid([Problem("METADATA/dataset.xml", None, None, "missing: not a submission bundle")])
    documents = {}
    for relative in FILE_SCHEMAS:
        path = folder / relative
        if not path.is_file():
            continue
        if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()):
            problems.append(Problem(relative, None, None, "a link out of the bundle"))
            continue
        document, found = parse(path, relative)
        problems += found
        if document is not None:
            found = validate(document, relative)
            problems += found
            if not found:
                documents[relative] = document
    if problems:
        raise BundleInvalid(problems)
    for relative, document in documents.items():
        for element in document.getroot().iter():
            if element.get("alias") is not None and not element.tag.endswith(("_REF", "IMAGE_OF")):
                kind = bundle.objects.setdefault(element.tag, {})
                if element.get("alias") in kind:
                    problems.append(Problem(relative, element.sourceline, element.tag,
                                            f"alias {element.get('alias')!r} used twice"))
                kind[element.get("alias")] = Located(element, relative)
    if len(bundle.objects.get("DATASET", {})) != 1:
        problems.append(Problem("METADATA/dataset.xml", None, "DATASET", "a bundle holds exactly one dataset"))
    for relative, document in documents.items():
        for element in document.getroot().iter(*REFERENCES):
            kinds = REFERENCES[element.tag]
            if kinds and not any(element.get("alias") in bundle.objects.get(kind, {}) for kind in kinds):
                problems.append(Problem(relative, element.sourceline, element.tag,
                                        f"refers to {element.get('alias')!r}, which is no {'/'.join(kinds)} "
                                        "of the bundle"))
        for element in document.getroot().iter("FILE", "SAMPLE_IMAGE_FILE"):
            problems += _check_file(folder, relative, element)
        for element in document.getroot().iter("GROSS_IMAGE"):
            problems.append(Problem(relative, element.sourceline, "GROSS_IMAGE", "only whole slide images are stored"))
    if problems:
        raise BundleInvalid(problems)
    return bundle


def _check_file(folder: Path, relative: str, element: Element) -> list[Problem]:
    name = element.get("filename") or ""
    path = (folder / name)
    where = (relative, element.sourceline, element.tag)
    if name.startswith("/") or ".." in Path(name).parts or not path.resolve().is_relative_to(folder.resolve()):
        return [Problem(*where, f"{name!r} is not a path inside the bundle")]
    if not path.is_file():
        return [Problem(*where, f"{name} is missing")]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    if digest.hexdigest() != element.get("checksum"):
        return [Problem(*where, f"{name}: SHA-256 {digest.hexdigest()} is not the {element.get('checksum')} listed")]
    return []


# --- reading attributes ---------------------------------------------------------------------------------


def attributes(element: Element | None) -> dict[str, Any]:
    """Tag -> value of an AttributesType element: text, a number, or the MEANING of a code (first wins)."""
    values: dict[str, Any] = {}
    if element is None:
        return values
    for attribute in element:
        tag = attribute.findtext("TAG")
        if tag is None or tag in values:
            continue
        if attribute.tag == "CODE_ATTRIBUTE":
            values[tag] = attribute.findtext("VALUE/MEANING") or attribute.findtext("VALUE/CODE")
        elif attribute.tag in ("NUMERIC_ATTRIBUTE", "MEASUREMENT_ATTRIBUTE"):
            text = attribute.findtext("VALUE")
            values[tag] = float(text) if text else None
        elif attribute.tag == "STRING_ATTRIBUTE":
            values[tag] = attribute.findtext("VALUE")
    return values


def _codes(element: Element | None, tag: str) -> list[dict[str, str]]:
    return [{"code": a.findtext("VALUE/CODE") or "", "scheme": a.findtext("VALUE/SCHEME") or "",
             "meaning": a.findtext("VALUE/MEANING") or ""}
            for a in (element if element is not None else []) if a.tag == "CODE_ATTRIBUTE" and a.findtext("TAG") == tag]


def _ref(element: Element, name: str) -> str | None:
    found = element.find(name)
    return found.get("alias") if found is not None else None


# --- storing ----------------------------------------------------------------------------------------------


def import_bundle(node: Node, folder: Path, actor: Principal, rename: str | None = None) -> ImportReport:
    """Check, then store, a bundle; BundleInvalid (nothing stored) or the report."""
    bundle = check_bundle(folder)
    dataset_element = bundle.one("DATASET")
    dataset = rename or dataset_element.get("alias")
    with node.uow.read() as session:
        if session.scalar(select(Dataset.id).where(Dataset.alias == dataset)) is not None:
            raise BundleInvalid([Problem("METADATA/dataset.xml", dataset_element.sourceline, "DATASET",
                                         f"dataset {dataset!r} exists on this node (import it under another name)")])
    requests = {alias: _request(bundle, image, dataset) for alias, image in
                ((e.get("alias"), e) for e in bundle.each("IMAGE"))}
    _create_dataset(node, bundle, dataset, actor)
    try:
        plan = IngestPlan(tuple(request for request, _ in requests.values()), ())
        outcomes = run_ingest(node, plan, actor=actor)
        refused = [o for o in outcomes if o.status != "ingested"]
        if refused:
            raise BundleInvalid([Problem("METADATA/image.xml", None, "IMAGE",
                                         f"{o.path}: {o.status}{': ' + o.error if o.error else ''}") for o in refused])
        observations = _observations(node, bundle, dataset, {alias: slide_id for alias, (_, slide_id) in requests.items()})
        annotations = _annotations(node, bundle, {alias: slide_id for alias, (_, slide_id) in requests.items()}, actor)
    except BaseException:
        _discard(node, dataset, actor)
        raise
    node.audit.record(actor.name, "dataset.import", dataset=dataset,
                      detail={"from": str(folder), "images": len(requests), "observations": observations,
                              "annotations": annotations})
    return ImportReport(dataset, len(requests), observations, annotations)


def _request(bundle: Bundle, image: Element, dataset: str) -> tuple[IngestRequest, str]:
    """The ingest request of one IMAGE, with the sample chain the bundle gives it."""
    slide = bundle.get("SLIDE", _ref(image, "IMAGE_OF") or "")
    block = bundle.get("BLOCK", _ref(slide, "CREATED_FROM_REF") or "")
    specimen = bundle.get("SPECIMEN", _ref(block, "SAMPLED_FROM_REF") or "")
    being = bundle.get("BIOLOGICAL_BEING", _ref(specimen, "EXTRACTED_FROM_REF") or "")
    case_alias = _ref(specimen, "PART_OF_CASE_REF") or f"case:{image.get('alias')}"
    staining = bundle.get("STAINING", _ref(slide, "STAINING_INFORMATION_REF") or "")
    stains = [attributes(stain).get("name") for stain in staining.findall("STAIN")]
    being_values, specimen_values = attributes(being.find("ATTRIBUTES")), attributes(specimen.find("ATTRIBUTES"))
    alias = image.get("alias")
    slide_id = alias if SLIDE_ID_PATTERN.fullmatch(alias) else new_slide_id()
    description = SlideDescription(
        dataset=dataset, subject=being.get("alias"), species=_named(SPECIES, being_values.get("animal_species")),
        sex=_named(SEX, being_values.get("sex")), age_at_extraction=specimen_values.get("age_at_extraction"),
        anatomical_site=_named(ANATOMICAL_SITES, specimen_values.get("anatomical_site")),
        specimen_type=_named(SPECIMEN_TYPES, specimen_values.get("specimen_type")),
        fixation_type=_named(FIXATION_TYPES, specimen_values.get("fixation_type")),
        block_preparation=_named(BLOCK_PREPARATIONS, attributes(block.find("ATTRIBUTES")).get("block_preparation")),
        stain=";".join(s for s in stains if s) or None, slide_id=slide_id,
        sample_aliases=(being.get("alias"), case_alias, specimen.get("alias"), block.get("alias"), slide.get("alias")),
    )
    files = tuple(sorted(bundle.root / f.get("filename") for f in image.iter("FILE")))
    return IngestRequest(SourceSlide(files[0], files, "dicom"), description), slide_id


def _named(vocabulary: Vocabulary, meaning: str | None) -> str | None:
    """The vocabulary's name of a coded value given by its meaning (what ingest derives more from,
    e.g. the extraction method from the specimen type); the meaning itself where it is unknown."""
    term = vocabulary.normalise(meaning) if meaning else None
    return term.name if term is not None else meaning


def _create_dataset(node: Node, bundle: Bundle, dataset: str, actor: Principal) -> None:
    element = bundle.one("DATASET")
    policy_element = next(bundle.each("POLICY"), None)
    policy_values = attributes(policy_element.find("ATTRIBUTES")) if policy_element is not None else {}
    organisation_element = next(bundle.each("ORGANISATION"), None)
    with node.uow.write() as session:
        organisation_alias = organisation_element.get("alias") if organisation_element is not None else "local"
        organisation = session.scalar(select(Organisation).where(Organisation.alias == organisation_alias))
        if organisation is None:
            organisation = Organisation(alias=organisation_alias, name=organisation_alias)
            if organisation_element is not None:
                organisation.name = organisation_element.findtext("NAME") or organisation_alias
                organisation.pic_code = int(organisation_element.findtext("PIC_CODE") or 0) or None
                organisation.datamanager_group = organisation_element.findtext("DATAMANAGER_PERUN_GROUP") or None
        policy_alias = policy_element.get("alias") if policy_element is not None else f"{dataset}-policy"
        if session.scalar(select(Policy.id).where(Policy.alias == policy_alias)) is not None:
            policy_alias = f"{dataset}-policy"
        max_days = policy_values.get("max_grant_days")
        policy = Policy(alias=policy_alias, name=policy_values.get("name") or f"Policy of {dataset}",
                        description=policy_values.get("description"),
                        data_use=_codes(policy_element.find("ATTRIBUTES") if policy_element is not None else None,
                                        "data_use"),
                        max_grant_days=int(max_days) if max_days else None)
        session.add(Dataset(alias=dataset, title=element.findtext("TITLE") or dataset,
                            short_name=(element.findtext("SHORT_NAME") or dataset)[:64],
                            description=element.findtext("DESCRIPTION"), version=element.findtext("VERSION") or "1",
                            metadata_standard=element.findtext("METADATA_STANDARD") or "2.0.0",
                            owner_contact_email=element.findtext("DATASET_OWNER_CONTACT_EMAIL"),
                            policy=policy, organisation=organisation))
        session.flush()
        version.bump(session)
        node.audit.append(session, actor.name, "dataset.create", dataset=dataset,
                          detail={"from": "bundle", "duo": [c["code"] for c in policy.data_use]})


def _observations(node: Node, bundle: Bundle, dataset: str, slides: dict[str, str]) -> int:
    count = 0
    with node.uow.write() as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.alias == dataset))
        observers: dict[str, Observer] = {}
        for element in bundle.each("OBSERVER"):
            alias = element.get("alias")
            found = session.scalar(select(Observer).where(Observer.alias == alias))
            if found is None:
                found = Observer(alias=alias, observer_type=element.findtext("OBSERVER_TYPE"),
                                 name=attributes(element.find("ATTRIBUTES")).get("name"))
                session.add(found)
            observers[alias] = found
        session.flush()
        for element in bundle.each("OBSERVATION"):
            target_tag, (model, column) = next((tag, target) for tag, target in _OBSERVATION_TARGETS.items()
                                               if element.find(tag) is not None)
            alias = element.find(target_tag).get("alias")
            if model is Image:
                alias = slides[alias]
            table: Any = model
            target = session.scalar(select(table.id).where(table.dataset_id == dataset_id, table.alias == alias))
            statement = element.find("STATEMENT")
            codes = _codes(statement.find("CODE_ATTRIBUTES"), "diagnosis") or _codes(
                statement.find("CODE_ATTRIBUTES"), "finding")
            coded = codes[0] if codes else None
            observer = _ref(element, "OBSERVER_REF")
            session.add(Observation(
                alias=element.get("alias"), dataset_id=dataset_id, statement_type=statement.findtext("STATEMENT_TYPE"),
                statement_status=statement.findtext("STATEMENT_STATUS"), free_text=statement.findtext("FREETEXT") or None,
                code=coded["code"] if coded else None, scheme=coded["scheme"] if coded else None,
                meaning=coded["meaning"] if coded else None,
                observer_id=observers[observer].id if observer else None, **{column: target}))
            count += 1
    if count:
        node.catalog.refresh_facets(list(slides.values()))  # diagnoses are a search facet
    return count


def _annotations(node: Node, bundle: Bundle, slides: dict[str, str], actor: Principal) -> int:
    count = 0
    for element in bundle.each("ANNOTATION"):
        slide_id = slides[_ref(element, "IMAGE_REF") or ""]
        for file in element.iter("FILE"):
            if file.get("filetype") != "json":
                continue
            document = json.loads((bundle.root / file.get("filename")).read_text())
            node.annotations.add(slide_id, parse_document(document), actor)
            count += 1
    return count


def _discard(node: Node, dataset: str, actor: Principal) -> None:
    """Remove everything an import created in `dataset` (a failed import leaves nothing)."""
    with node.ingest_lock():
        with node.uow.write() as session:
            dataset_id = session.scalar(select(Dataset.id).where(Dataset.alias == dataset))
            if dataset_id is None:
                return
            policy_id = session.scalar(select(Dataset.policy_id).where(Dataset.id == dataset_id))
            note_changed(session, list(session.scalars(select(Image.id).where(Image.dataset_id == dataset_id))))
            note_pending(session, dataset_blobs(session, dataset_id))  # they go at the recovery below
            for model in (Observation, Annotation, Image, Slide, Staining, Block, Specimen, Case, BiologicalBeing):
                session.execute(delete(model).where(model.dataset_id == dataset_id))
            session.execute(delete(Dataset).where(Dataset.id == dataset_id))
            session.execute(delete(Policy).where(Policy.id == policy_id))
            version.bump(session)
            node.audit.append(session, actor.name, "dataset.import_failed", dataset=dataset, detail={})
        node.recover()  # the blobs of the images it had stored
