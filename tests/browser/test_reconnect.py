"""A page whose event stream is refused (a 503 while the database is down) opens it again by
itself and picks up where it left off: EventSource alone would give up for good."""

from __future__ import annotations

from playwright.sync_api import BrowserContext, Route, expect

from backend.store.db import session_scope
from backend.store.results import write_metrics
from backend.store.writes import claim_run, create_experiment, set_status
from tests.browser.support import Server, sign_in

POINTS_JS = "document.getElementById('chart-train_loss')?.data?.[0]?.x.length ?? 0"


def test_a_refused_stream_is_opened_again_and_resumes(context: BrowserContext, server: Server):
    with session_scope(server.database_url) as session:
        runs = [{"label": "sgd", "optimizer": {"name": "sgd"}, "seed": 0, "spec": {}}]
        experiment = create_experiment(session, name="reconnect", spec={}, runs=runs)
        experiment_id, run_id = experiment.id, experiment.runs[0].id
        claim_run(session, run_id, "reconnect-test")
        write_metrics(session, run_id, [("train_loss", 1, 0.1, 2.0)])
    refused = []

    def refuse_once(route: Route) -> None:
        if refused:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.fulfill(status=503, json={"detail": "database unavailable"})

    try:
        sign_in(context, server)
        page = context.new_page()
        page.route(lambda url: "/events" in url, refuse_once)
        page.goto(f"/experiments/{experiment_id}")
        expect(page.locator("#live-text")).to_have_text("live", timeout=30_000)
        assert len(refused) == 1
        page.wait_for_function(f"() => ({POINTS_JS}) === 1")

        with session_scope(server.database_url) as session:
            write_metrics(session, run_id, [("train_loss", 2, 0.2, 1.5)])
        page.wait_for_function(f"() => ({POINTS_JS}) === 2", timeout=30_000)
    finally:
        with session_scope(server.database_url) as session:
            set_status(session, run_id, "succeeded", step=2)
