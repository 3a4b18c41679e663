"""Datasets as the public sees them: name, title, policy, owner, size."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from slidebank.db.models import Dataset, Image, Organisation, Policy
from slidebank.db.models.base import iso_utc


def datasets(session: Session) -> list[dict[str, Any]]:
    """Every dataset with its policy, owner and number of images."""
    counts = select(Image.dataset_id, func.count().label("images")).group_by(Image.dataset_id).subquery()
    statement = (
        select(Dataset, Policy, Organisation.alias, func.coalesce(counts.c.images, 0))
        .join(Policy, Policy.id == Dataset.policy_id)
        .join(Organisation, Organisation.id == Dataset.organisation_id)
        .outerjoin(counts, counts.c.dataset_id == Dataset.id)
        .order_by(Dataset.alias)
    )
    return [
        {
            "name": dataset.alias,
            "title": dataset.title,
            "accession": dataset.accession,
            "uuid": dataset.uuid,
            "policy": policy.alias,
            "terms": policy.description,
            "data_use": policy.codes,
            "organisation": organisation,
            "images": int(images),
            "created_at": iso_utc(dataset.created_at),
        }
        for dataset, policy, organisation, images in session.execute(statement)
    ]
