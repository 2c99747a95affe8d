"""Share links: a read-only link to one experiment, and revoking it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from backend.api.deps import AdminDep, SessionDep, base_url, load_experiment
from backend.api.errors import WRITE_ERRORS
from backend.api.schemas import RevokedOut, ShareLinkOut, experiment_url
from backend.store.access import create_share_link, revoke_share_links

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


@router.delete("/{experiment_id}/share")
def revoke(experiment_id: ExperimentId, session: SessionDep, principal: AdminDep) -> RevokedOut:
    """Revoke every link to the experiment, at once (open pages lose their stream too)."""
    experiment = load_experiment(session, principal, experiment_id)
    revoked = revoke_share_links(session, experiment.id)
    session.commit()
    return RevokedOut(revoked=revoked)
