"""Search at scale: the catalog version and change log that keep each process's search index current.

Nodes upgraded to this revision start at version 0 with no changes recorded: each process builds
its index from the catalog at its first search.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('catalog_changes',
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('version', 'image_id', name=op.f('pk_catalog_changes'))
    )
    state = op.create_table('search_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('rebuild_below', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_search_state'))
    )
    op.bulk_insert(state, [{"id": 1, "version": 0, "rebuild_below": 0}])


def downgrade() -> None:
    op.drop_table('search_state')
    op.drop_table('catalog_changes')
