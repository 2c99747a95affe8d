"""Provenance: the git commit of a checkout (marked when dirty), none elsewhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kfac_lab.provenance import git_commit, provenance


def git(directory: Path, *arguments: str) -> str:
    command = ["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(
        [*command, *arguments], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_the_commit_of_a_checkout_and_its_local_changes(tmp_path: Path):
    assert git_commit(tmp_path) is None  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}+dirty"


def test_provenance_names_the_device_and_versions():
    facts = provenance("cuda:0")
    assert facts["device"] == "cuda:0" and facts["python"].count(".") == 2
    assert isinstance(facts["plugins"], dict)
