"""How a team organises its experiments: notes (Markdown, rendered by the page), tags, and
archiving (an archived experiment leaves the list unless asked for, see `listing`).

Like `writes`, every function takes the caller's `Session` and never commits. The API checks
the values (backend.api.page_schemas: sizes, the tag pattern); the store keeps what it is given.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from backend.store.models import Experiment, ExperimentTag, utcnow


def set_notes(session: Session, experiment: Experiment, notes: str) -> None:
    experiment.notes = notes
    session.flush()


def set_tags(session: Session, experiment: Experiment, tags: Iterable[str]) -> None:
    """Make the experiment's tags exactly `tags` (duplicates count once); the rows of tags it
    keeps are left alone, so no row is deleted and inserted again."""
    wanted = dict.fromkeys(tags)
    experiment.tag_rows = [row for row in experiment.tag_rows if row.tag in wanted]
    kept = {row.tag for row in experiment.tag_rows}
    experiment.tag_rows.extend(ExperimentTag(tag=tag) for tag in wanted if tag not in kept)
    experiment.tag_rows.sort(key=lambda row: row.tag)
    session.flush()


def set_archived(session: Session, experiment: Experiment, archived: bool) -> None:
    """Archive (keeping the first archiving time when asked twice) or unarchive."""
    if not archived:
        experiment.archived_at = None
    elif experiment.archived_at is None:
        experiment.archived_at = utcnow()
    session.flush()
