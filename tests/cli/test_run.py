"""`kfac-lab run`: an experiment in the foreground, its final table, and bad specs (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tests.worker.labs import REPO, TINY_RUN, WORKER_WAIT_S, kfac_environment
from worker.cli import app

runner = CliRunner()


@pytest.fixture
def home(tmp_path) -> Iterator[str]:
    with kfac_environment({"KFAC_HOME": str(tmp_path)}):
        yield str(tmp_path)


def test_a_spec_file_with_a_sweep_runs_to_the_comparison_table(home, tmp_path):
    spec = {
        "name": "tiny",
        "base": {**TINY_RUN, "steps": 10},
        "optimizers": [{"name": "adam"}, {"name": "sgd", "sweep": {"lr": [0.01, 0.1]}}],
        "seeds": [0, 1],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    result = runner.invoke(app, ["run", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tiny: 6 runs" in result.output and "train loss" in result.output
    assert result.output.count("succeeded") >= 6 and "sgd lr=0.1 · seed 1" in result.output
    comparison = result.output[result.output.index("best of its optimizer") :]
    rows = [line for line in comparison.splitlines() if "adam" in line or "sgd" in line]
    assert [row.split("│")[1].strip("■ ★") for row in rows] == ["adam", "sgd lr=0.01", "sgd lr=0.1"]
    assert sum("★" in row for row in rows) == 2  # adam's only setting, and one of sgd's
    assert all(" 2/2 " in row for row in rows)  # both seeds of every setting ended


@pytest.mark.slow
def test_a_preset_with_overrides_runs_from_the_console_script(tmp_path):
    """The installed entry point, as a user types it (torch is loaded only in `run`)."""
    overrides = {"steps": 3, "eval_interval": 3, "model": {"width_scale": 0.05}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFAC_")}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--preset", "smoke",
         "--override", json.dumps(overrides)],
        cwd=REPO, env={**env, "KFAC_HOME": str(tmp_path), "COLUMNS": "160"},
        capture_output=True, text=True, timeout=WORKER_WAIT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: 2 runs" in result.stdout
    table = result.stdout[result.stdout.index("train loss") :]
    assert table.count("succeeded") == 2 and "kfac · seed 0" in table


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--preset", "smoke", "--override", '{"steps": -1}'], "base.steps"),
        (["--preset", "smoke", "--override", '{"optimizers": [{"name": "x"}]}'], "optimizers.0"),
        (["--preset", "smoke", "--override", "[1]"], "must be a JSON object"),
        (["--preset", "no-such-preset"], "unknown preset 'no-such-preset'; presets: smoke"),
        ([], "give a spec file or --preset NAME"),
    ],
)
def test_bad_input_names_the_problem_and_exits_2(home, arguments, message):
    result = runner.invoke(app, ["run", *arguments])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())  # rich may wrap lines


def test_a_bad_spec_file_names_the_field(home, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"runs": [{**TINY_RUN, "batch_size": 0}]}))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "runs.0.batch_size" in result.output
    path.write_text("{not json")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "invalid JSON" in result.output


def test_a_run_over_the_machine_s_limits_is_refused(tmp_path):
    """The limits of the API (backend/estimate.py), from the same settings."""
    wide = {"name": "mlp", "hidden": [4000]}  # K-FAC inverts 4001² factors
    long_run = {**TINY_RUN, "model": wide, "optimizer": {"name": "kfac"}, "steps": 100_000}
    spec = {"runs": [TINY_RUN, long_run]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    limits = {"KFAC_HOME": str(tmp_path), "KFAC_RUN_TIME_LIMIT_S": "60"}
    with kfac_environment(limits):
        result = runner.invoke(app, ["run", str(path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "runs.1" in output and "runs.0" not in output
    assert "100,000 steps" in output and "KFAC_RUN_TIME_LIMIT_S" in output
    with kfac_environment({**limits, "KFAC_WORKER_MEMORY_BYTES": "1000"}):
        result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "KFAC_WORKER_MEMORY_BYTES" in result.output


def test_a_model_without_its_name_is_named_in_words(home, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"base": {"model": {"width_scale": 0.25}}}))
    result = runner.invoke(app, ["run", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "base.model" in result.output and "a model needs its name: one of" in result.output
    assert "discriminator" not in result.output
