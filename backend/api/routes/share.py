"""Share links: read-only links to one experiment; listing them and revoking one or all."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request

from backend.api.deps import AdminDep, SessionDep, base_url, load_experiment
from backend.api.errors import WRITE_ERRORS
from backend.api.schemas import RevokedOut, ShareLinkInfo, ShareLinkOut, experiment_url
from backend.store.access import (
    create_share_link,
    revoke_share_link,
    revoke_share_links,
    share_links,
)

router = APIRouter(prefix="/experiments", tags=["share"], responses=WRITE_ERRORS)

ExperimentId = Annotated[str, Path(max_length=64)]


@router.post("/{experiment_id}/share", status_code=201)
def share(
    experiment_id: ExperimentId, request: Request, session: SessionDep, principal: AdminDep
) -> ShareLinkOut:
    """A new read-only link (128 random bits, stored hashed) that opens the experiment's page
    and its read endpoints, and nothing else. The token is in the link's fragment
    (`#share=`), which browsers never send to a server, so it reaches no log."""
    experiment = load_experiment(session, principal, experiment_id)
    token = create_share_link(session, experiment.id)
    session.commit()
    url = f"{experiment_url(base_url(request), experiment.id)}#share={token}"
    return ShareLinkOut(token=token, url=url)


@router.get("/{experiment_id}/share")
def links(
    experiment_id: ExperimentId, session: SessionDep, principal: AdminDep
) -> list[ShareLinkInfo]:
    """The experiment's links, newest first: when each was made, last opened, revoked."""
    experiment = load_experiment(session, principal, experiment_id)
    return [
        ShareLinkInfo.model_validate(link, from_attributes=True)
        for link in share_links(session, experiment.id)
    ]


@router.delete("/{experiment_id}/share")
def revoke(experiment_id: ExperimentId, session: SessionDep, principal: AdminDep) -> RevokedOut:
    """Revoke every link to the experiment, at once (open pages lose their stream too)."""
    experiment = load_experiment(session, principal, experiment_id)
    revoked = revoke_share_links(session, experiment.id)
    session.commit()
    return RevokedOut(revoked=revoked)


@router.delete("/{experiment_id}/share/{link_id}")
def revoke_one(
    experiment_id: ExperimentId, link_id: int, session: SessionDep, principal: AdminDep
) -> RevokedOut:
    """Revoke one link (404 if the experiment has no such live link)."""
    experiment = load_experiment(session, principal, experiment_id)
    if not revoke_share_link(session, experiment.id, link_id):
        raise HTTPException(404, f"No live share link {link_id} on this experiment.")
    session.commit()
    return RevokedOut(revoked=1)
