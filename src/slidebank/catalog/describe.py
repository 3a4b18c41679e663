"""One slide in full: the image, its MetaFleX chain, codes, observations, files, facts, provenance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from slidebank.catalog.facts import facts_of
from slidebank.catalog.search import summaries, summary_select
from slidebank.db.models import Block, Dataset, Image, Observation, Slide, Specimen


def _code(code: str | None, scheme: str | None, meaning: str | None) -> dict[str, str] | None:
    if code is None:
        return None
    return {"code": code, "scheme": scheme or "", "meaning": meaning or ""}


def _term(obj: Any, attribute: str) -> dict[str, Any] | None:
    """A coded attribute as {name, code, scheme, meaning}; None when unset."""
    name = getattr(obj, attribute, None) if obj is not None else None
    if name is None:
        return None
    return {
        "name": name,
        "code": getattr(obj, f"{attribute}_code"),
        "scheme": getattr(obj, f"{attribute}_scheme"),
        "meaning": getattr(obj, f"{attribute}_meaning"),
    }


def describe_slide(session: Session, slide_id: str) -> dict[str, Any] | None:
    """Everything the catalog knows about one image, its sample graph and its observations."""
    image = session.scalar(
        select(Image)
        .where(Image.slide_id == slide_id)
        .options(
            selectinload(Image.levels),
            selectinload(Image.files),
            selectinload(Image.dataset).selectinload(Dataset.policy),
            selectinload(Image.dataset).selectinload(Dataset.organisation),
            selectinload(Image.glass_slide).selectinload(Slide.stainings),
            selectinload(Image.glass_slide)
            .selectinload(Slide.block)
            .selectinload(Block.specimens)
            .selectinload(Specimen.biological_being),
            selectinload(Image.glass_slide)
            .selectinload(Slide.block)
            .selectinload(Block.specimens)
            .selectinload(Specimen.case),
        )
    )
    if image is None:
        return None
    facts = facts_of(session, Image.id == image.id)  # in the same read
    summary = summaries(
        session, session.execute(summary_select().where(Image.id == image.id)).all()
    )[0]
    glass = image.glass_slide
    block = glass.block
    specimens = sorted(block.specimens, key=lambda s: s.id)
    specimen = specimens[0] if specimens else None
    being = specimen.biological_being if specimen else None
    case = specimen.case if specimen else None
    observations = _observations(session, image, glass, block, specimens)
    stainings = sorted(glass.stainings, key=lambda s: s.name)
    dataset = image.dataset

    return {
        **summary,
        "uuid": image.uuid,
        "accession": image.accession,
        "alias": image.alias,
        "image_type": image.image_type,
        "tile_width": image.tile_width,
        "tile_height": image.tile_height,
        "level_count": image.level_count,
        "levels": [
            {"level": lvl.level, "width": lvl.width, "height": lvl.height, "downsample": lvl.downsample}
            for lvl in image.levels
        ],
        "mpp_x": image.mpp_x,  # µm per level-0 pixel; None when the scan did not say and nobody supplied it
        "mpp_y": image.mpp_y,
        "pixel_size_known": image.mpp_x is not None and image.mpp_y is not None,
        "objective_power": image.objective_power,
        "original_format": image.original_format,
        "scanner": {"manufacturer": image.scanner_manufacturer, "model": image.scanner_model},
        "source_sha256": image.source_sha256,
        "source_size": image.source_size,
        "source_name_pseudonym": image.source_name_pseudonym,
        "canonical_size": image.canonical_size,
        "transfer_syntax": image.transfer_syntax,
        "source_associated_images": list(image.source_associated_images or []),
        "associated_images_stored": [],  # de-identification drops label and macro images
        "provenance": image.provenance or {},
        "files": [
            {"role": f.role, "sha256": f.sha256, "size": f.size, "level": f.level, "media_type": f.media_type}
            for f in image.files
        ],
        "thumbnail_sha256": image.thumbnail_sha256,
        "qc": facts.get("qc", {}),
        "facts": facts,
        # Biological context, as plain values…
        "subject": being.alias if being else None,
        "samples": {  # the MetaFleX chain above this image, by alias
            "case": case.alias if case else None,
            "specimen": specimen.alias if specimen else None,
            "block": block.alias,
            "slide": glass.alias,
        },
        "sex": being.sex if being else None,
        "age_at_extraction": specimen.age_at_extraction if specimen else None,
        "anatomical_site": specimen.anatomical_site if specimen else None,
        "specimen_type": specimen.specimen_type if specimen else None,
        "fixation_type": specimen.fixation_type if specimen else None,
        "block_preparation": block.block_preparation,
        # …and with their codes where the vocabulary knows them.
        "coded": {
            "species": _term(being, "species"),
            "sex": _term(being, "sex"),
            "anatomical_site": _term(specimen, "anatomical_site"),
            "specimen_type": _term(specimen, "specimen_type"),
            "fixation_type": _term(specimen, "fixation_type"),
            "extraction_method": _term(specimen, "extraction_method"),
            "block_preparation": _term(block, "block_preparation"),
            "stains": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "procedure": _code(s.procedure_code, s.procedure_scheme, s.procedure_meaning),
                    "substances": list(s.substances or []),
                }
                for s in stainings
            ],
            "diagnoses": [
                {
                    "text": o["text"],
                    "code": o["code"],
                    "on": o["on"],
                }
                for o in observations
                if o["statement_type"] == "Diagnosis"
            ],
        },
        "objects": {
            "dataset": {
                **dataset.identity(),
                "policy": dataset.policy.alias,
                "organisation": dataset.organisation.alias,
            },
            "biological_being": being.identity() if being else None,
            "case": case.identity() if case else None,
            "specimens": [s.identity() for s in specimens],
            "block": block.identity(),
            "slide": glass.identity(),
            "stainings": [s.identity() for s in stainings],
            "observations": observations,
        },
    }


def _observations(
    session: Session, image: Image, glass: Slide, block: Block, specimens: Sequence[Specimen]
) -> list[dict[str, Any]]:
    """Observations on the image and on every object upstream of it."""
    targets: list[tuple[str, ColumnElement[bool]]] = [
        ("image", Observation.image_id == image.id),
        ("slide", Observation.glass_slide_id == glass.id),
        ("block", Observation.block_id == block.id),
    ]
    if specimens:
        targets += [
            ("specimen", Observation.specimen_id.in_([s.id for s in specimens])),
            ("case", Observation.case_id.in_([s.case_id for s in specimens if s.case_id is not None])),
            ("biological_being", Observation.biological_being_id.in_({s.biological_being_id for s in specimens})),
        ]
    found: list[dict[str, Any]] = []
    for target, condition in targets:
        for observation in session.scalars(select(Observation).where(condition).order_by(Observation.id)):
            found.append(
                {
                    **observation.identity(),
                    "on": target,
                    "statement_type": observation.statement_type,
                    "statement_status": observation.statement_status,
                    "code": _code(observation.code, observation.scheme, observation.meaning),
                    "text": observation.display,
                }
            )
    return found
