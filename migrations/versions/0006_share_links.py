"""share links: when each was last used, so that the owner can tell them apart and revoke one

Revision ID: 0006_share_links
Revises: 0005_run_logs
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_share_links"
down_revision: str | None = "0005_run_logs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("share_links") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("share_links") as batch:
        batch.drop_column("last_used_at")
