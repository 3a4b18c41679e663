"""Rows the access services look up by the names people type, with the errors people can act on."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from slidebank.access.errors import AccessError, NotAllowed
from slidebank.access.principal import Principal
from slidebank.db.models import Dataset, User


def user_named(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AccessError(f"no user {name!r}")
    return user


def dataset_named(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.alias == name))
    if dataset is None:
        raise AccessError(f"no dataset {name!r}")
    return dataset


def require_administrator(actor: Principal, what: str) -> None:
    """NotAllowed unless the actor administers the node (the command line does)."""
    if not actor.is_administrator:
        raise NotAllowed(f"only an administrator may {what}")
