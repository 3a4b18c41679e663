"""Encryption at rest: each image file's crypt4gh key header (NULL for blobs stored in clear), and
the optional pseudonym map, whose identifiers are sealed to the node key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_header", sa.LargeBinary(), nullable=True))
    op.create_table(
        "pseudonym_map",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pseudonym", sa.String(length=255), nullable=False),
        sa.Column("sealed_identifier", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pseudonym_map")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_pseudonym_map_pseudonym")),
    )


def downgrade() -> None:
    op.drop_table("pseudonym_map")
    with op.batch_alter_table("image_files", schema=None) as batch_op:
        batch_op.drop_column("key_header")
