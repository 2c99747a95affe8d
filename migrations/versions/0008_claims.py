"""claims: a new id at each claim of a run, which the invitations of its other nodes carry

A run handed back (its worker shut down) is claimed again under the same attempt number, so
the number alone let a node's invitation left over from the earlier claim try to join the
later one (worker/nodes.py).

Revision ID: 0008_claims
Revises: 0007_pages
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_claims"
down_revision: str | None = "0007_pages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("claim_id", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("claim_id")
