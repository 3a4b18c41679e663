"""`slidebank bundle export DATASET --to DIR`: a dataset as a BIGPICTURE submission bundle.

    DATASET_<alias>/
      METADATA/      dataset.xml policy.xml sample.xml staining.xml image.xml
                     annotation.xml observation.xml observer.xml
      IMAGES/IMAGE_<alias>/*.dcm        the canonical (de-identified) DICOM files, decrypted
      ANNOTATIONS/<image alias>.geojson every annotation of an image, as QuPath reads it
      LANDING_PAGE/  landing_page.xml THUMBNAILS/*.jpg
      PRIVATE/       organisation.xml

Every file is listed with its SHA-256 (XML FILE elements, and CHECKSUMS.sha256 for all of them);
every XML file is validated against the MetaFleX XSDs before the export is reported done. A file set
(METADATA/annotation.xml, observation.xml, observer.xml) with nothing in it is left out: MetaFleX sets
hold at least one object. The export is written into a temporary folder beside the target and
renamed into place, so a failed export leaves no half bundle.

Stainings: MetaFleX gives a slide exactly one STAINING_INFORMATION_REF, Slidebank a slide any number
of stainings; each distinct combination is one STAINING object holding one STAIN per staining
(alias `A+B`), and a slide with none refers to `unstained`, a STAINING with PROCEDURE_INFORMATION only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from slidebank.access.principal import Principal
from slidebank.bundles import metaflex as mx
from slidebank.bundles.schemas import FILE_SCHEMAS, Problem, parse, validate
from slidebank.catalog.records import StoredFile
from slidebank.db.models import (
    BiologicalBeing,
    Block,
    Case,
    Dataset,
    Image,
    Observation,
    Observer,
    Slide,
    Specimen,
    Staining,
)
from slidebank.db.models.catalog import OBSERVATION_TARGETS
from slidebank.node import Node

UNSTAINED = "unstained"
MAX_LANDING_THUMBNAILS = 5  # MetaFleX: at most five sample images
_TARGET_ELEMENTS = {
    "biological_being_id": ("BIOLOGICAL_BEING_REF", BiologicalBeing), "case_id": ("CASE_REF", Case),
    "specimen_id": ("SPECIMEN_REF", Specimen), "block_id": ("BLOCK_REF", Block),
    "glass_slide_id": ("SLIDE_REF", Slide), "image_id": ("IMAGE_REF", Image),
}


class BundleError(RuntimeError):
    """The export could not be made, or its XML does not validate (each problem listed)."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message + "".join(f"\n  {p}" for p in (problems or [])[:20]))
        self.problems = problems or []


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    images: int
    files: int
    bytes: int


def staining_alias(stainings: list[Staining]) -> str:
    return "+".join(sorted(s.alias for s in stainings)) or UNSTAINED


def export_bundle(node: Node, dataset: str, destination: Path, actor: Principal) -> ExportReport:
    """Write the bundle of `dataset` into `destination/DATASET_<alias>`; audited as `dataset.export`."""
    target = destination / f"DATASET_{dataset}"
    if target.exists():
        raise BundleError(f"{target} exists: choose another folder")
    destination.mkdir(parents=True, exist_ok=True)
    partial = destination / f".DATASET_{dataset}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with node.uow.read() as session:
            found = session.scalar(select(Dataset).where(Dataset.alias == dataset)
                                   .options(selectinload(Dataset.policy), selectinload(Dataset.organisation)))
            if found is None or not actor.can_read(dataset):
                raise BundleError(f"no dataset {dataset!r}")
            writer = _Writer(node, session, found, partial)
            writer.write_all()
        problems = [problem for relative in FILE_SCHEMAS if (partial / relative).is_file()
                    for problem in _checked(partial / relative, relative)]
        if problems:
            raise BundleError("the export does not validate against the MetaFleX XSDs", problems)
        (partial / "CHECKSUMS.sha256").write_text("".join(f"{digest}  {name}\n" for name, digest in
                                                         sorted(writer.checksums.items())))
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    node.audit.record(actor.name, "dataset.export", dataset=dataset, grant=actor.grants.get(dataset),
                      detail={"to": str(target), "images": writer.images, "files": len(writer.checksums)})
    return ExportReport(target, writer.images, len(writer.checksums), writer.bytes)


def _checked(path: Path, relative: str) -> list[Problem]:
    document, problems = parse(path, relative)
    return problems if document is None else validate(document, relative)


class _Writer:
    """One export: reads the dataset's graph in one session, writes files, remembers checksums."""

    def __init__(self, node: Node, session: Session, dataset: Dataset, folder: Path) -> None:
        self.node, self.session, self.dataset, self.folder = node, session, dataset, folder
        self.checksums: dict[str, str] = {}
        self.images = 0
        self.bytes = 0

    def _all(self, model: Any, *options: Any) -> list[Any]:
        return list(self.session.scalars(select(model).where(model.dataset_id == self.dataset.id)
                                          .options(*options).order_by(model.id)))

    def write_all(self) -> None:
        images = self._all(Image, selectinload(Image.files), selectinload(Image.glass_slide))
        annotated = self._annotations(images)
        observations = self._all(Observation)
        self._dataset(images, annotated, observations)
        self._policy()
        stainings = self._samples()
        self._stainings(stainings)
        self._images(images)
        self._observations(observations)
        self._landing_page(images)
        self._organisation()

    # --- files ------------------------------------------------------------------------------------

    def _copy(self, stored: StoredFile, relative: str) -> str:
        """Decrypt a stored file into the bundle; its SHA-256."""
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        blob = self.node.open_blob(stored)
        try:
            with blob.stream() as source, open(path, "wb") as out:
                while chunk := source.read(4 * 1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
        finally:
            blob.close()
        return self._remember(relative, digest.hexdigest(), path.stat().st_size)

    def _bytes(self, content: bytes, relative: str) -> str:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return self._remember(relative, hashlib.sha256(content).hexdigest(), len(content))

    def _remember(self, relative: str, digest: str, size: int) -> str:
        self.checksums[relative] = digest
        self.bytes += size
        return digest

    def _xml(self, document: mx.Element, relative: str) -> None:
        mx.write(document, self.folder / relative)
        self._remember(relative, hashlib.sha256((self.folder / relative).read_bytes()).hexdigest(),
                       (self.folder / relative).stat().st_size)

    # --- METADATA ---------------------------------------------------------------------------------

    def _dataset(self, images: list[Image], annotated: list[str], observations: list[Observation]) -> None:
        d = self.dataset
        document = mx.root("DATASET_SET")
        element = mx.obj(document, "DATASET", d.alias, d.accession)
        mx.text(element, "TITLE", d.title)
        mx.text(element, "SHORT_NAME", d.short_name)
        if d.description:
            mx.text(element, "DESCRIPTION", d.description)
        mx.text(element, "VERSION", d.version)
        mx.text(element, "METADATA_STANDARD", d.metadata_standard if d.metadata_standard.startswith("2.0.")
                else "2.0.0")
        if d.owner_contact_email:
            mx.text(element, "DATASET_OWNER_CONTACT_EMAIL", d.owner_contact_email)
        mx.text(element, "DATASET_TYPE", "Whole slide imaging")
        mx.refs(element, "IMAGE_REF", [image.alias for image in images])
        mx.refs(element, "ANNOTATION_REF", annotated)
        mx.refs(element, "OBSERVATION_REF", [o.alias for o in observations])
        attributes = mx.Attributes(element)
        attributes.string("uuid", d.uuid)
        attributes.close()
        self._xml(document, "METADATA/dataset.xml")

    def _policy(self) -> None:
        policy = self.dataset.policy
        document = mx.root("POLICY_SET")
        element = mx.obj(document, "POLICY", policy.alias, policy.accession)
        mx.ref(element, "DATASET_REF", self.dataset.alias, self.dataset.accession)
        attributes = mx.Attributes(element)
        attributes.string("name", policy.name)
        attributes.string("description", policy.description)
        for term in policy.data_use or []:
            known = term if isinstance(term, dict) else {"code": str(term)}
            if known.get("code"):
                attributes.coded("data_use", known["code"], known["code"], known.get("scheme") or "DUO",
                                 known.get("meaning") or known["code"])
        attributes.number("max_grant_days", policy.max_grant_days)
        attributes.close()
        self._xml(document, "METADATA/policy.xml")

    def _samples(self) -> dict[str, list[Staining]]:
        document = mx.root("SAMPLE_SET")
        for being in self._all(BiologicalBeing):
            element = mx.obj(document, "BIOLOGICAL_BEING", being.alias, being.accession)
            attributes = mx.Attributes(element)
            attributes.coded("animal_species", being.species, being.species_code, being.species_scheme,
                             being.species_meaning)
            attributes.coded("sex", being.sex, being.sex_code, being.sex_scheme, being.sex_meaning)
            attributes.close()
        for case in self._all(Case, selectinload(Case.biological_being)):
            element = mx.obj(document, "CASE", case.alias, case.accession)
            mx.ref(element, "BIOLOGICAL_BEING_REF", case.biological_being.alias)
            mx.empty_attributes(element)
        for specimen in self._all(Specimen, selectinload(Specimen.biological_being), selectinload(Specimen.case)):
            element = mx.obj(document, "SPECIMEN", specimen.alias, specimen.accession)
            mx.ref(element, "EXTRACTED_FROM_REF", specimen.biological_being.alias)
            if specimen.case is not None:
                mx.ref(element, "PART_OF_CASE_REF", specimen.case.alias)
            attributes = mx.Attributes(element)
            attributes.string("age_at_extraction", specimen.age_at_extraction)
            for name in ("anatomical_site", "specimen_type", "fixation_type", "extraction_method"):
                attributes.coded(name, *(getattr(specimen, name + suffix) for suffix in ("", "_code", "_scheme",
                                                                                         "_meaning")))
            attributes.close()
        for block in self._all(Block, selectinload(Block.specimens)):
            element = mx.obj(document, "BLOCK", block.alias, block.accession)
            mx.refs(element, "SAMPLED_FROM_REF", sorted(s.alias for s in block.specimens))
            attributes = mx.Attributes(element)
            attributes.coded("block_preparation", block.block_preparation, block.block_preparation_code,
                             block.block_preparation_scheme, block.block_preparation_meaning)
            attributes.close()
        combinations: dict[str, list[Staining]] = {}
        for slide in self._all(Slide, selectinload(Slide.block), selectinload(Slide.stainings)):
            element = mx.obj(document, "SLIDE", slide.alias, slide.accession)
            mx.ref(element, "CREATED_FROM_REF", slide.block.alias)
            combination = staining_alias(slide.stainings)
            combinations[combination] = sorted(slide.stainings, key=lambda s: s.alias)
            mx.ref(element, "STAINING_INFORMATION_REF", combination)
            mx.empty_attributes(element)
        self._xml(document, "METADATA/sample.xml")
        return combinations

    def _stainings(self, combinations: dict[str, list[Staining]]) -> None:
        document = mx.root("STAINING_SET")
        for alias, stainings in sorted(combinations.items()):
            element = mx.obj(document, "STAINING", alias)
            if not stainings:
                procedure = mx.Attributes(element, "PROCEDURE_INFORMATION")
                procedure.string("procedure", "no staining recorded")
                procedure.close()
            for staining in stainings:
                stain = mx.Attributes(element, "STAIN")
                stain.string("staining_alias", staining.alias)
                stain.string("name", staining.name)
                stain.string("kind", staining.kind)
                stain.coded("staining_procedure", staining.name, staining.procedure_code, staining.procedure_scheme,
                            staining.procedure_meaning)
                for substance in staining.substances or []:
                    if isinstance(substance, dict):
                        stain.coded("staining_substance", substance.get("meaning"), substance.get("code"),
                                    substance.get("scheme"), substance.get("meaning"))
                stain.close()
            mx.empty_attributes(element)
        if combinations:
            self._xml(document, "METADATA/staining.xml")

    def _images(self, images: list[Image]) -> None:
        if not images:
            return
        document = mx.root("IMAGE_SET")
        for image in images:
            element = mx.obj(document, "IMAGE", image.alias, image.accession)
            mx.ref(element, "IMAGE_OF", image.glass_slide.alias)
            mx.child(mx.child(element, "IMAGE_TYPE"), "WSI_IMAGE")
            files = mx.child(element, "FILES")
            volumes = sorted((f for f in image.files if f.role == "volume"), key=lambda f: (f.level or 0, f.sha256))
            for index, row in enumerate(volumes):
                relative = f"IMAGES/IMAGE_{image.alias}/level-{row.level or 0}-{index}.dcm"
                stored = StoredFile(row.role, row.sha256, row.size, row.level, row.media_type, row.key_header)
                mx.file(files, relative, self._copy(stored, relative), "dcm")
            attributes = mx.Attributes(element)
            attributes.number("width", image.width, "pixels")
            attributes.number("height", image.height, "pixels")
            attributes.number("mpp_x", image.mpp_x, "um")
            attributes.number("mpp_y", image.mpp_y, "um")
            attributes.number("objective_power", image.objective_power)
            attributes.string("scanner_manufacturer", image.scanner_manufacturer)
            attributes.string("scanner_model", image.scanner_model)
            attributes.string("original_format", image.original_format)
            attributes.close()
            self.images += 1
        self._xml(document, "METADATA/image.xml")

    def _annotations(self, images: list[Image]) -> list[str]:
        """ANNOTATIONS/<image>.geojson per annotated image and METADATA/annotation.xml; their aliases."""
        document = mx.root("ANNOTATION_SET")
        aliases = []
        for image in images:
            features = list(self.node.annotations.iter_export(image.slide_id))
            if not features:
                continue
            relative = f"ANNOTATIONS/{image.alias}.geojson"
            content = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")).encode()
            digest = self._bytes(content, relative)
            alias = f"{image.alias}/annotations"
            element = mx.obj(document, "ANNOTATION", alias)
            mx.ref(element, "IMAGE_REF", image.alias)
            mx.file(mx.child(element, "FILES"), relative, digest, "json")
            attributes = mx.Attributes(element)
            attributes.number("features", len(features))
            attributes.close()
            aliases.append(alias)
        if aliases:
            self._xml(document, "METADATA/annotation.xml")
        return aliases

    def _observations(self, observations: list[Observation]) -> None:
        if not observations:
            return
        observers: dict[int, Observer] = {}
        document = mx.root("OBSERVATION_SET")
        for observation in observations:
            element = mx.obj(document, "OBSERVATION", observation.alias, observation.accession)
            column = next(c for c in OBSERVATION_TARGETS if getattr(observation, c) is not None)
            if column == "annotation_id":
                raise BundleError(f"observation {observation.alias} is about a DICOM annotation object, "
                                  "which bundles do not carry yet")
            name, model = _TARGET_ELEMENTS[column]
            target: Any = self.session.get(model, getattr(observation, column))
            mx.ref(element, name, target.alias)
            if observation.observer is not None:
                observers[observation.observer.id] = observation.observer
                mx.ref(element, "OBSERVER_REF", observation.observer.alias)
            statement = mx.child(element, "STATEMENT")
            mx.text(statement, "STATEMENT_TYPE", observation.statement_type)
            mx.text(statement, "STATEMENT_STATUS", observation.statement_status or "Distinct")
            codes = mx.Attributes(statement, "CODE_ATTRIBUTES")
            if observation.code and observation.scheme:
                codes.coded("diagnosis" if observation.statement_type == "Diagnosis" else "finding",
                            observation.meaning, observation.code, observation.scheme, observation.meaning)
            codes.close()
            mx.empty_attributes(statement, "CUSTOM_ATTRIBUTES")
            freetext = mx.child(statement, "FREETEXT")
            if observation.free_text:
                freetext.text = observation.free_text
            else:
                freetext.set(mx.NIL, "true")
            mx.empty_attributes(statement)
            mx.empty_attributes(element)
        self._xml(document, "METADATA/observation.xml")
        if observers:
            document = mx.root("OBSERVER_SET")
            for observer in observers.values():
                element = mx.obj(document, "OBSERVER", observer.alias, observer.accession)
                mx.text(element, "OBSERVER_TYPE", observer.observer_type)
                attributes = mx.Attributes(element)
                attributes.string("name", observer.name)
                attributes.close()
            self._xml(document, "METADATA/observer.xml")

    # --- LANDING_PAGE and PRIVATE -----------------------------------------------------------------

    def _landing_page(self, images: list[Image]) -> None:
        document = mx.root("LANDING_PAGE_SET")
        element = mx.obj(document, "LANDING_PAGE", f"{self.dataset.alias}/landing-page")
        mx.ref(element, "DATASET_REF", self.dataset.alias, self.dataset.accession)
        shown = [image for image in images if any(f.role == "thumbnail" for f in image.files)][:MAX_LANDING_THUMBNAILS]
        if shown:
            samples = mx.child(element, "SAMPLE_IMAGE_FILES")
            for image in shown:
                row = next(f for f in image.files if f.role == "thumbnail")
                relative = f"LANDING_PAGE/THUMBNAILS/{image.alias}.jpg"
                stored = StoredFile(row.role, row.sha256, row.size, None, row.media_type, row.key_header)
                mx.file(samples, relative, self._copy(stored, relative), "jpg", "SAMPLE_IMAGE_FILE")
        attributes = mx.Attributes(element)
        attributes.string("title", self.dataset.title)
        attributes.string("description", self.dataset.description)
        attributes.close()
        self._xml(document, "LANDING_PAGE/landing_page.xml")

    def _organisation(self) -> None:
        organisation = self.dataset.organisation
        document = mx.root("ORGANISATION_SET")
        element = mx.obj(document, "ORGANISATION", organisation.alias, organisation.accession)
        mx.text(element, "NAME", organisation.name)
        mx.text(element, "PIC_CODE", organisation.pic_code or 0)  # required by MetaFleX; 0: none known
        mx.text(element, "DATAMANAGER_PERUN_GROUP", organisation.datamanager_group or "")
        mx.ref(element, "DATASET_REF", self.dataset.alias, self.dataset.accession)
        mx.empty_attributes(element)
        self._xml(document, "PRIVATE/organisation.xml")
