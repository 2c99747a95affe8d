"""pages a team lives in: notes, tags and archiving of experiments; indexes for the list

The list searches by name, tag and optimizer and sorts by every column in the database:
`experiment_tags` (indexed by tag), `runs.optimizer_name` (copied out of the run's optimizer
JSON, indexed with the experiment id), `runs.final_train_loss` (out of its final metrics) in an
index with the experiment id, step and total steps that covers the sorts by the runs' figures,
and indexes on `experiments.preset` and on `archived_at` with each column the list sorts by.

Revision ID: 0007_pages
Revises: 0006_share_links
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_pages"
down_revision: str | None = "0006_share_links"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SORTED = ("created_at", "name", "status", "preset")  # the list's sorts by experiment columns


def upgrade() -> None:
    op.add_column("experiments", sa.Column("notes", sa.Text(), nullable=False, server_default=""))
    op.add_column("experiments", sa.Column("archived_at", sa.DateTime(timezone=True)))
    for column in SORTED:
        op.create_index(
            f"ix_experiments_archived_at_{column}", "experiments", ["archived_at", column]
        )
    op.create_index(op.f("ix_experiments_preset"), "experiments", ["preset"])

    op.add_column("runs", sa.Column("optimizer_name", sa.String(64)))
    runs = sa.table("runs", sa.column("optimizer", sa.JSON), sa.column("optimizer_name"))
    op.execute(runs.update().values(optimizer_name=runs.c.optimizer["name"].as_string()))
    op.create_index(
        "ix_runs_optimizer_name_experiment_id", "runs", ["optimizer_name", "experiment_id"]
    )
    op.add_column("runs", sa.Column("final_train_loss", sa.Float()))
    runs = sa.table("runs", sa.column("final_metrics", sa.JSON), sa.column("final_train_loss"))
    op.execute(runs.update().values(final_train_loss=runs.c.final_metrics["train_loss"].as_float()))
    op.create_index(
        "ix_runs_experiment_id_figures",
        "runs",
        ["experiment_id", "step", "total_steps", "final_train_loss"],
    )

    op.create_table(
        "experiment_tags",
        sa.Column("experiment_id", sa.String(32), nullable=False),
        sa.Column("tag", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_tags_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "tag", name=op.f("pk_experiment_tags")),
    )
    op.create_index(
        "ix_experiment_tags_tag_experiment_id", "experiment_tags", ["tag", "experiment_id"]
    )


def downgrade() -> None:
    op.drop_table("experiment_tags")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_experiment_id_figures")
        batch.drop_column("final_train_loss")
        batch.drop_index("ix_runs_optimizer_name_experiment_id")
        batch.drop_column("optimizer_name")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_index(op.f("ix_experiments_preset"))
        for column in SORTED:
            batch.drop_index(f"ix_experiments_archived_at_{column}")
        batch.drop_column("archived_at")
        batch.drop_column("notes")
