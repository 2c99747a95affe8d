"""The example plugin (docs/example-plugin) installed from a temporary copy: its package and a
`.dist-info` with its entry points (read from its pyproject.toml) in a directory that goes on
`sys.path` / `PYTHONPATH`, which is all `importlib.metadata` needs to find a plugin."""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "example-plugin"


def install_example(site: Path) -> Path:
    """Copy the example plugin into `site` as an installed distribution; returns `site`."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "kfac_lab_example", site / "kfac_lab_example")
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    sections = [
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()
    ]
    (dist_info / "entry_points.txt").write_text("\n".join(sections))
    return site


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example(tmp_path_factory.mktemp("plugin-site"))


@pytest.fixture
def plugin_on_path(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin visible to this process's registry (the spec module, built at import, is not
    rebuilt: end-to-end tests use processes of their own)."""
    monkeypatch.syspath_prepend(str(plugin_site))
    registry.entries.cache_clear()
    yield plugin_site
    monkeypatch.undo()
    registry.entries.cache_clear()
