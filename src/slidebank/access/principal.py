"""Who is asking: a principal and what it may read, decided once per request.

Every decision the front ends make goes through `Principal.can_read(dataset)`. A principal is
resolved by `Identities` from a token, a browser session, a password or an OIDC identity, with the
datasets it may read worked out once (open policies, live grants, stewarded datasets; everything
for an administrator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

OPERATOR = "operator"  # the node's own command line acts as this administrator
ANONYMOUS = "anonymous"
RESERVED_NAMES = frozenset({OPERATOR, ANONYMOUS, "system", "admin@cli"})
"""Names no account may take: the audit must always tell the node's operator from a user."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str | None = None
    user_id: int | None = None
    readable: frozenset[str] | None = frozenset()  # dataset aliases; None means every dataset
    grants: dict[str, str] = field(default_factory=dict)  # dataset alias -> grant uuid (for the audit)
    committees: frozenset[str] = frozenset()
    stewarded: frozenset[str] = frozenset()
    valid_until: datetime | None = None  # when the first grant, token or session behind it expires

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None or self.is_operator

    @property
    def is_operator(self) -> bool:
        return self.name == OPERATOR and self.user_id is None and self.role == "administrator"

    @property
    def is_administrator(self) -> bool:
        return self.role == "administrator"

    def can_read(self, dataset: str | None) -> bool:
        return dataset is not None and (self.readable is None or dataset in self.readable)

    def decides_for(self, dataset: str) -> bool:
        return self.is_administrator or dataset in self.committees

    def moderates(self, dataset: str) -> bool:
        """Whether it may change or delete what others wrote in this dataset (annotations)."""
        return self.is_administrator or dataset in self.stewarded


def operator() -> Principal:
    """The node's command line: an administrator that is no user and reads everything."""
    return Principal(OPERATOR, "administrator", None, None)


def anonymous(open_datasets: frozenset[str]) -> Principal:
    return Principal(ANONYMOUS, readable=open_datasets)
