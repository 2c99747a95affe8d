"""tracked runs (runs reported by users' own scripts through the tracking client) and the
provenance of every run

`experiments.tracking_name` makes get-or-create by name safe when several scripts start at
once (unique; NULL for experiments launched through the API). `runs.tracked` marks runs that
no worker trains, so stale-run recovery never re-queues them. `runs.provenance` holds where a
run ran (versions, git commit, host, device; kfac_lab/provenance.py).

Revision ID: 0003_tracking
Revises: 0002_workers
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_tracking"
down_revision: str | None = "0002_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("tracking_name", sa.String(200), nullable=True))
        batch.create_unique_constraint(
            op.f("uq_experiments_tracking_name"), ["tracking_name"]
        )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("tracked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("provenance")
        batch.drop_column("tracked")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint(op.f("uq_experiments_tracking_name"), type_="unique")
        batch.drop_column("tracking_name")
