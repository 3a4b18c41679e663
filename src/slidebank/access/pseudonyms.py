"""The optional way back from pseudonyms: submitters' identifiers, sealed to the node key."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from slidebank.access.errors import AccessError
from slidebank.access.principal import Principal
from slidebank.audit import AuditLog
from slidebank.db import UnitOfWork
from slidebank.db.models import PseudonymEntry
from slidebank.storage.crypt import NodeKeys, seal, unseal


class Pseudonyms:
    def __init__(self, uow: UnitOfWork, audit: AuditLog, keys: NodeKeys) -> None:
        self._uow = uow
        self._audit = audit
        self._keys = keys

    def remember(self, session: Session, pseudonym: str, identifier: str) -> None:
        """Keep `identifier` sealed to the node key (only where the node is configured to)."""
        if session.scalar(select(PseudonymEntry.id).where(PseudonymEntry.pseudonym == pseudonym)) is None:
            session.add(PseudonymEntry(pseudonym=pseudonym, sealed_identifier=seal(identifier.encode(), self._keys)))

    def reveal(self, actor: Principal, pseudonym: str) -> str:
        if not actor.is_administrator:
            raise AccessError("only the node's operator or an administrator may re-identify")
        with self._uow.write() as session:
            sealed = session.scalar(select(PseudonymEntry.sealed_identifier)
                                    .where(PseudonymEntry.pseudonym == pseudonym))
            if sealed is None:
                raise AccessError(f"no way back is kept for {pseudonym!r}")
            self._audit.append(session, actor.name, "pseudonym.reveal", detail={"pseudonym": pseudonym})
        return unseal(sealed, self._keys).decode()

    @staticmethod
    def forget(session: Session, pseudonym: str) -> None:
        session.execute(delete(PseudonymEntry).where(PseudonymEntry.pseudonym == pseudonym))
