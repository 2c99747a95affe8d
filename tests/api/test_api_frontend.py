"""Serving the frontend: pages at hash-free paths with their module graph preloaded, files at
versioned URLs kept for good, static files that revalidate, and the vendored plotly.js,
hinted and compressed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.frontend import COMPILE_HINT, FRONTEND_DIR, IMMUTABLE, PLOTLY_BUNDLE
from backend.api.main import create_app
from backend.api.pages import frontend_version, module_graph
from backend.settings import Settings

EXPERIMENT_PAGE = """<!doctype html><title>experiment</title>
<link rel="stylesheet" href="/static/css/app.css">
<script async id="plotly-js" src="/static/vendor/plotly-cartesian.min.js"></script>
<script type="module" src="/static/js/page.js"></script>
"""
MODULES = {
    # a multi-line import, a re-export, a bare import, a parent path, a cycle, a dynamic
    # import (not preloaded) and an import-like string inside a function (not an import)
    "page.js": 'import {\n  a,\n  b,\n} from "./lib/a.js";\nexport { c } from "./c.js";\n'
    'import "./app.js";\nconst later = () => import("./lazy.js");\n',
    "lib/a.js": 'import { c } from "../c.js";\nexport const a = 1, b = 2;\n',
    "c.js": 'import { a } from "./lib/a.js";\nexport function c(x) {\n'
    '  return `import x from "./nowhere.js"`;\n}\n',
    "app.js": "export const x = 1;\n",
    "lazy.js": "export const y = 1;\n",
}
PRELOADS = re.compile(r'<link rel="modulepreload" href="([^"]+)">')


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "frontend"
    for name, source in MODULES.items():
        (root / "js" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "js" / name).write_text(source)
    (root / "css").mkdir()
    (root / "css" / "app.css").write_text("body { margin: 0; }\n")
    (root / "vendor").mkdir()
    shutil.copy(FRONTEND_DIR / PLOTLY_BUNDLE, root / PLOTLY_BUNDLE)
    (root / "index.html").write_text("<!doctype html><title>shell</title>")
    (root / "experiment.html").write_text(EXPERIMENT_PAGE)
    return root


@pytest.fixture
def site(sqlite_url: str, tmp_path: Path, root: Path) -> TestClient:
    settings = Settings(home=tmp_path, database_url=sqlite_url, admin_token="t")
    with TestClient(create_app(settings, frontend_dir=root)) as client:
        yield client


def test_pages_are_served_at_their_paths(site: TestClient) -> None:
    index = site.get("/?token=abc")
    assert index.status_code == 200 and "shell" in index.text
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache" and index.headers["etag"]
    assert "shell" in site.get("/new").text  # no new.html: the SPA shell
    assert "experiment" in site.get(f"/experiments/{'a' * 32}?share=t").text
    again = site.get("/", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_module_graph_is_every_static_import_once(root: Path) -> None:
    assert module_graph(root, "js/page.js") == ["js/page.js", "js/lib/a.js", "js/c.js", "js/app.js"]


def test_a_page_preloads_its_graph_and_names_every_file_under_its_version(
    site: TestClient, root: Path
) -> None:
    version = frontend_version(root)
    page = site.get("/experiments/x").text
    prefix = f"/assets/{version}/"
    assert PRELOADS.findall(page) == [
        f"{prefix}js/{name}" for name in ("page.js", "lib/a.js", "c.js", "app.js")
    ]
    assert f'href="{prefix}css/app.css"' in page
    assert f'src="{prefix}vendor/plotly-cartesian.min.js"' in page
    assert f'<script type="module" src="{prefix}js/page.js">' in page
    assert "/static/" not in page
    # The preloads come before the module script that needs them.
    assert page.index(PRELOADS.findall(page)[-1]) < page.index('<script type="module"')


def test_a_changed_file_changes_the_version_and_the_page(site: TestClient, root: Path) -> None:
    before = site.get("/experiments/x")
    (root / "js" / "lib" / "a.js").write_text('import { y } from "../lazy.js";\n')
    after = site.get("/experiments/x", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert frontend_version(root) in after.text and frontend_version(root) not in before.text
    assert [url.split("/js/")[1] for url in PRELOADS.findall(after.text)] == [
        "page.js",
        "lib/a.js",
        "c.js",
        "app.js",
        "lazy.js",
    ]


def test_versioned_files_are_kept_for_good_only_at_the_current_version(
    site: TestClient, root: Path
) -> None:
    version = frontend_version(root)
    current = site.get(f"/assets/{version}/js/app.js")
    assert current.status_code == 200 and current.text == MODULES["app.js"]
    assert current.headers["cache-control"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert current.headers["content-type"].startswith("text/javascript")
    stale = site.get("/assets/0123456789abcdef/js/app.js")
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    assert site.get(f"/assets/{version}/js/missing.js").status_code == 404
    assert site.get(f"/assets/{version}/../index.html").status_code == 404
    assert site.get(f"/assets/{version}").status_code == 404


def test_static_files_revalidate(site: TestClient) -> None:
    script = site.get("/static/js/app.js")
    assert script.status_code == 200 and "export" in script.text
    assert script.headers["cache-control"] == "no-cache"
    assert script.headers["content-type"].startswith("text/javascript")
    cached = site.get("/static/js/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert cached.status_code == 304
    assert site.get("/static/js/missing.js").status_code == 404
    assert site.get("/static/../index.html").status_code == 404


def test_plotly_is_the_vendored_cartesian_bundle_hinted_and_compressed(
    site: TestClient, root: Path
) -> None:
    bundle = (root / PLOTLY_BUNDLE).read_bytes()
    assert bundle.startswith(b"/**\n* plotly.js (cartesian - minified)")
    url = f"/assets/{frontend_version(root)}/vendor/plotly-cartesian.min.js"
    plain = site.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and plain.content == COMPILE_HINT + bundle
    assert plain.headers["cache-control"] == IMMUTABLE
    compressed = site.get(url, headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.content == plain.content  # httpx decodes it
    assert compressed.headers["etag"] != plain.headers["etag"]
    assert int(compressed.headers["content-length"]) < len(bundle) / 2
    not_modified = site.get(
        url, headers={"Accept-Encoding": "gzip", "If-None-Match": compressed.headers["etag"]}
    )
    assert not_modified.status_code == 304
    revalidated = site.get("/static/vendor/plotly-cartesian.min.js")
    assert revalidated.content == plain.content
    assert revalidated.headers["cache-control"] == "no-cache"
    stale = site.get("/assets/0123456789abcdef/vendor/plotly-cartesian.min.js")
    assert stale.headers["cache-control"] == "no-cache"


def test_without_a_frontend_pages_are_404(client: TestClient) -> None:
    missing = client.get("/")
    assert missing.status_code == 404 and "frontend" in missing.json()["detail"]
