"""The self-contained HTML report: curves, heatmaps and the runs table in one offline file."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from backend.store.db import session_scope
from backend.store.results import write_snapshot
from tests.api.conftest import ADMIN
from tests.api.test_api_data import record


def test_report_embeds_plotly_curves_heatmaps_and_escaped_names(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    experiment = create({"preset": "smoke", "name": "<script>alert(1)</script>"})
    run_id = experiment["runs"][0]["id"]
    record(db_url, run_id, 50)
    matrix = np.diag(np.arange(1.0, 7.0))
    with session_scope(db_url) as session:
        write_snapshot(
            session, run_id, 10, {"exact": matrix, "kronecker": 0.5 * matrix}, [[0, 3], [3, 6]]
        )
    response = client.get(f"/api/experiments/{experiment['id']}/report", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "attachment" in response.headers["content-disposition"]
    page = response.text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "plotly" in page.lower() and len(page) > 1_000_000  # plotly.js is inside: offline
    assert "Loss curves" in page and "Curvature of" in page and '"type":"heatmap"' in page


def test_report_of_an_unknown_experiment_is_404(client: TestClient) -> None:
    assert client.get("/api/experiments/nope/report", headers=ADMIN).status_code == 404
