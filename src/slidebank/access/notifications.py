"""Notices to people: a request to decide, a decision on one's request, a flagged slide."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from slidebank.access.principal import Principal
from slidebank.db import UnitOfWork
from slidebank.db.models import Dataset, DatasetSteward, Notification, User
from slidebank.db.models.base import iso_utc


def notify(session: Session, user_id: int, message: str) -> None:
    """A notice, in the caller's transaction (it exists exactly when what it announces does)."""
    session.add(Notification(user_id=user_id, message=message))


class Notifications:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def notify_stewards(self, session: Session, dataset: str, message: str) -> int:
        """A notice to each data steward of a dataset (or, with none, each administrator)."""
        users = list(session.scalars(
            select(DatasetSteward.user_id).join(Dataset, Dataset.id == DatasetSteward.dataset_id)
            .where(Dataset.alias == dataset)))
        if not users:
            users = list(session.scalars(select(User.id).where(User.role == "administrator")))
        for user_id in users:
            notify(session, user_id, message)
        return len(users)

    def of(self, principal: Principal) -> list[dict[str, Any]]:
        with self._uow.read() as session:
            rows = session.scalars(select(Notification).where(Notification.user_id == principal.user_id)
                                   .order_by(Notification.id))
            return [{"message": n.message, "at": iso_utc(n.created_at)} for n in rows]
