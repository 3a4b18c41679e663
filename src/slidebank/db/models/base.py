"""The one declarative base every table of the node hangs on, and what all tables share.

One MetaData (with a naming convention, so Alembic names constraints the same on SQLite and
PostgreSQL) keeps the catalog, governance, audit, annotations and jobs in one schema history:
grants point at datasets, annotations and jobs at images, and one database keeps "who may read
what" and "what exists" consistent.
"""

from __future__ import annotations

import secrets
import uuid as uuid_module
from base64 import b32encode
from datetime import UTC, datetime
from functools import partial
from typing import ClassVar

from sqlalchemy import DateTime, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ALIAS_LENGTH = 255
NAME_LENGTH = 255
CODE_LENGTH = 64
SCHEME_LENGTH = 32
SHA256_LENGTH = 64
MANY_DEFAULTS = "many_defaults"  # Column.info key: makes `count` default values at once (db.rows.insert_rows)
ACCESSION_RANDOM_CHARS = 13  # 65 random bits: collisions negligible even at 10^8 objects per type


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid_module.uuid4())


def new_uuids(count: int) -> list[str]:
    """`count` version-4 UUIDs at once: a bulk load of a million images needs millions, and one
    random read plus string slicing is ~5× faster than `uuid4()` each."""
    raw = bytearray(secrets.token_bytes(16 * count))
    raw[6::16] = bytes((byte & 0x0F) | 0x40 for byte in raw[6::16])  # version 4
    raw[8::16] = bytes((byte & 0x3F) | 0x80 for byte in raw[8::16])  # RFC 4122 variant
    digits = raw.hex()
    return [f"{digits[i:i + 8]}-{digits[i + 8:i + 12]}-{digits[i + 12:i + 16]}-{digits[i + 16:i + 20]}-"
            f"{digits[i + 20:i + 32]}" for i in range(0, 32 * count, 32)]


def new_accession(prefix: str) -> str:
    """Archive accession, e.g. "SBI" + 13 base32 characters.

    Random rather than a counter so that several ingest processes can create objects concurrently
    without a sequence or a lock; the unique constraint still guards against the impossible clash.
    """
    return prefix + b32encode(secrets.token_bytes(9)).decode("ascii")[:ACCESSION_RANDOM_CHARS]


def new_accessions(prefix: str, count: int) -> list[str]:
    """`count` accessions at once (bulk loads): 13 characters of each 10 random bytes, the same 65 bits."""
    characters = b32encode(secrets.token_bytes(10 * count)).decode("ascii")
    return [prefix + characters[i : i + ACCESSION_RANDOM_CHARS] for i in range(0, 16 * count, 16)]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CatalogObject:
    """Identity every MetaFleX object carries: id, uuid, alias, accession, and when it was created.

    Where an alias is unique within a dataset, the (dataset_id, alias) unique index also serves
    lookups by dataset, so `dataset_id` gets no index of its own.
    """

    accession_prefix: ClassVar[str] = "SB"

    # sort_order puts the identity columns first and created_at last in CREATE TABLE.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-4)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid, sort_order=-3,
                                      info={MANY_DEFAULTS: new_uuids})
    alias: Mapped[str] = mapped_column(String(ALIAS_LENGTH), sort_order=-1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, sort_order=1)

    @declared_attr
    def accession(cls) -> Mapped[str]:
        return mapped_column(
            String(24), unique=True, default=partial(new_accession, cls.accession_prefix), sort_order=-2,
            info={MANY_DEFAULTS: partial(new_accessions, cls.accession_prefix)},
        )

    def identity(self) -> dict[str, str]:
        """How other systems (and MetaFleX exports) refer to this object."""
        return {"alias": self.alias, "accession": self.accession, "uuid": self.uuid}


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; everything is stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return None if moment is None else aware(moment).isoformat()
