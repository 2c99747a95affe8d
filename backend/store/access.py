"""Stored credentials: read-only share links and the embedded mode's admin token.

A share token is 128 random bits shown once to its creator; only its SHA-256 is stored, so a
leaked database does not leak working links (a fast hash is enough: the token is random, not
a password that could be guessed). Checking a token compares hashes in the database; comparing
a presented admin token with the real one (in constant time) is the API's job.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert
from backend.store.models import AppSecret, ShareLink, utcnow

ADMIN_TOKEN_KEY = "admin_token"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_share_link(session: Session, experiment_id: str) -> str:
    """Make a new read-only link to one experiment and return its token (shown only now)."""
    token = secrets.token_urlsafe(16)
    session.add(ShareLink(experiment_id=experiment_id, token_hash=hash_token(token)))
    session.flush()
    return token


def share_links(session: Session, experiment_id: str) -> list[ShareLink]:
    """An experiment's share links, live and revoked, newest first."""
    return list(
        session.scalars(
            select(ShareLink)
            .where(ShareLink.experiment_id == experiment_id)
            .order_by(ShareLink.created_at.desc(), ShareLink.id.desc())
        )
    )


def revoke_share_link(session: Session, experiment_id: str, link_id: int) -> bool:
    """Revoke one live link of an experiment; False if it has no such live link."""
    result = session.execute(
        update(ShareLink.__table__)
        .where(
            ShareLink.id == link_id,
            ShareLink.experiment_id == experiment_id,
            ShareLink.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class ShareUse:
    """What a presented share token is: the experiment it opens (None if it opens nothing),
    and whether it once did (a revoked link, as opposed to a token never issued)."""

    experiment_id: str | None
    revoked: bool = False


def use_share_token(session: Session, token: str) -> ShareUse:
    """Look a share token up for a request and note the use. `last_used_at` is written at most
    once a minute per link, so a page's requests do not each become a write."""
    link = session.scalar(select(ShareLink).where(ShareLink.token_hash == hash_token(token)))
    if link is None:
        return ShareUse(None)
    if link.revoked_at is not None:
        return ShareUse(None, revoked=True)
    now = utcnow()
    if link.last_used_at is None or now - link.last_used_at >= LAST_USED_RESOLUTION:
        link.last_used_at = now
    return ShareUse(link.experiment_id)


def revoke_share_links(session: Session, experiment_id: str) -> int:
    """Revoke every live share link of an experiment at once; returns how many there were."""
    result = session.execute(
        update(ShareLink.__table__)
        .where(ShareLink.experiment_id == experiment_id, ShareLink.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount


def shared_experiments(session: Session, tokens: Iterable[str]) -> dict[str, str]:
    """For each live share token of `tokens`, the experiment it opens (unknown and revoked
    tokens are left out); one query, however many tokens (the live feed re-checks the tokens
    of every open stream this way)."""
    by_hash = {hash_token(token): token for token in tokens}
    if not by_hash:
        return {}
    rows = session.execute(
        select(ShareLink.token_hash, ShareLink.experiment_id).where(
            ShareLink.token_hash.in_(by_hash), ShareLink.revoked_at.is_(None)
        )
    )
    return {by_hash[token_hash]: experiment_id for token_hash, experiment_id in rows}


def get_or_create_admin_token(session: Session) -> str:
    """The admin token stored with the data, generated (128 bits) on first use.

    Safe when several processes start together: the first insert wins and every process
    reads that one.
    """
    session.execute(
        dialect_insert(session, AppSecret.__table__)
        .values(key=ADMIN_TOKEN_KEY, value=secrets.token_urlsafe(16))
        .on_conflict_do_nothing()
    )
    return session.scalar(select(AppSecret.value).where(AppSecret.key == ADMIN_TOKEN_KEY))
