"""`kfac-lab data list` / `fetch`: the declared files of each dataset in KFAC_DATA_DIR, fetched
from a mirror (here a local directory as a file:// URL, and an HTTP server on loopback) and
verified against their MD5; a clear error without a mirror or a reachable network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend import datafiles
from backend.datasets import SVHN
from tests.worker.labs import kfac_environment
from worker.cli import app

runner = CliRunner()


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    """Two generated "SVHN" files in a mirror directory, declared with their own MD5s."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    files = []
    for file in SVHN.files:
        (folder / file.name).write_bytes(file.name.encode() * 1000)
        md5 = hashlib.md5((folder / file.name).read_bytes()).hexdigest()
        files.append(file.model_copy(update={"md5": md5}))
    monkeypatch.setattr(SVHN, "files", tuple(files))
    return folder


def invoke(args: list[str], data_dir: Path, **env: str):
    with kfac_environment({"KFAC_DATA_DIR": str(data_dir), "KFAC_SVHN_MIRROR": "", **env}):
        return runner.invoke(app, ["data", *args], env={"COLUMNS": "200"})


def test_list_then_fetch_from_a_file_mirror(mirror, tmp_path):
    data_dir = tmp_path / "data"
    listed = invoke(["list"], data_dir)
    assert listed.exit_code == 0, listed.output
    svhn = next(line for line in listed.output.splitlines() if "svhn" in line)
    assert "train_32x32.mat (missing)" in svhn and "missing" in svhn
    assert "(built in)" in listed.output and "digits_offline" in listed.output

    fetched = invoke(["fetch", "svhn"], data_dir, KFAC_SVHN_MIRROR=mirror.as_uri())
    assert fetched.exit_code == 0, fetched.output
    assert "fetched and verified train_32x32.mat, test_32x32.mat" in fetched.output
    assert datafiles.missing(SVHN, data_dir) == []
    listed = invoke(["list"], data_dir)
    svhn = next(line for line in listed.output.splitlines() if "svhn" in line)
    assert "present" in svhn and "28.3 KB" in svhn  # 15,000 + 14,000 bytes
    again = invoke(["fetch", "svhn"], data_dir)  # nothing to fetch: no mirror needed
    assert again.exit_code == 0 and "every file is present" in again.output


def test_fetch_over_http_and_a_corrupt_file(mirror, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (mirror / "test_32x32.mat").write_bytes(b"not what was declared")
        bad = invoke(["fetch", "svhn", "--mirror", url], tmp_path / "data")
        assert bad.exit_code == 1 and "test_32x32.mat: MD5" in bad.output
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train_32x32.mat"]
    finally:
        server.shutdown()
        server.server_close()


def test_clear_errors_without_a_mirror_or_a_network(mirror, tmp_path):
    data_dir = tmp_path / "data"
    result = invoke(["fetch", "svhn"], data_dir)
    assert result.exit_code == 1 and "set KFAC_SVHN_MIRROR" in result.output
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = invoke(["fetch", "svhn", "--mirror", f"http://127.0.0.1:{port}"], data_dir)
    assert result.exit_code == 1 and "cannot download" in result.output
    assert "is the mirror reachable" in result.output
    assert not data_dir.exists() or not any(data_dir.iterdir())
    result = invoke(["fetch", "nope"], data_dir)
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output


def test_kfac_lab_run_refuses_a_dataset_whose_files_are_missing(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "name": "needs mnist",
                "base": {"dataset": "mnist", "model": {"name": "mlp", "hidden": [8]}, "steps": 5},
                "optimizers": [{"name": "sgd"}],
            }
        )
    )
    with kfac_environment({"KFAC_HOME": str(tmp_path), "KFAC_DATA_DIR": str(tmp_path / "d")}):
        result = runner.invoke(app, ["run", str(spec), "--no-record"], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "base.dataset" in result.output and "kfac-lab data fetch mnist" in result.output
