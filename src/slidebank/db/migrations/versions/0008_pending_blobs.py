"""The pending-blob log: recovery after a crashed ingest checks the blobs it published, not the whole store.

Nodes upgraded to this revision start with an empty log; leftovers of crashes before it stay until a
full sweep (`BlobStore.collect_garbage`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pending_blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('noted_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_pending_blobs'))
    )


def downgrade() -> None:
    op.drop_table('pending_blobs')
