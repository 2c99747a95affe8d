"""`kfac-lab`: the command line. `serve` comes from backend.cli; the commands that train are
here, because they import torch and the worker, which the backend never does.

* `kfac-lab serve` — the whole lab on one machine (see backend.cli).
* `kfac-lab worker` — a Celery worker that trains runs from the queue(s).
* `kfac-lab run SPEC.json | --preset NAME` — one experiment in the foreground, no server.
* `kfac-lab data list | fetch NAME` — datasets' files in KFAC_DATA_DIR (backend.data_cli).

torch and the Celery app are imported inside the commands, so `kfac-lab serve` (which runs
this module too) starts fast and its API process never loads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from backend import data_cli
from backend.cli import app, console, errors

app.add_typer(data_cli.app, name="data")

# --- worker ---------------------------------------------------------------------------------


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues to take runs from. Default: cpu, and gpu first when "
            "this machine has a CUDA GPU."
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Runs trained at once (one process each).")
    ] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start a worker that trains the runs sent to its queues."""
    from worker.celery_app import app as celery  # imports torch through the task

    argv = [
        "worker",
        f"--queues={queues or _default_queues()}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname=kfac-{os.getpid()}@%h",
        "--without-mingle",  # revoked ids need no sync: a cancelled run is final in the store
        "--without-gossip",
    ]
    celery.worker_main(argv)


def _default_queues() -> str:
    """`gpu,cpu` when CUDA works here, else `cpu`. Asked of a short-lived subprocess, so this
    process (the worker's parent, which forks the pool) never creates a CUDA context."""
    import torch

    if not torch.backends.cuda.is_built():
        return "cpu"
    probe = "import torch; print(torch.cuda.device_count())"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    has_gpu = result.returncode == 0 and result.stdout.strip() not in ("", "0")
    return "gpu,cpu" if has_gpu else "cpu"


# --- run ------------------------------------------------------------------------------------


@app.command()
def run(
    spec: Annotated[
        Path | None,
        typer.Argument(
            help='An experiment spec (JSON): a full spec, or {"preset": NAME, "overrides": {}}.'
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Run a named preset instead of a spec file.")
    ] = None,
    override: Annotated[
        str | None,
        typer.Option(
            help='JSON object applied to the preset, as the API\'s "overrides": run fields go '
            "into every run (e.g. '{\"steps\": 50}'); name, description, optimizers and seeds "
            "replace the experiment's."
        ),
    ] = None,
    record: Annotated[
        bool,
        typer.Option(
            help="Record the runs for the dashboard: in this machine's store, or on the server "
            "at KFAC_LAB_URL (token KFAC_LAB_TOKEN) when it is set."
        ),
    ] = True,
) -> None:
    """Run one experiment here in the foreground, with a progress bar; no server needed."""
    experiment = _load_experiment(spec, preset, override)
    _refuse_unaffordable(experiment)
    from worker.foreground import run_experiment

    raise typer.Exit(run_experiment(experiment, console, record=record))


def _load_experiment(spec: Path | None, preset: str | None, override: str | None) -> Any:
    """The validated ExperimentSpec; any error is printed and exits with code 2."""
    from backend.presets import PRESETS, expand_preset
    from backend.spec import ExperimentSpec

    if (spec is None) == (preset is None):
        _usage_error("give a spec file or --preset NAME (one of them)")
    if override is not None and preset is None:
        _usage_error("--override applies to --preset")
    try:
        if spec is not None:
            data = json.loads(spec.read_text())
            if isinstance(data, dict) and "preset" in data:
                preset, overrides = data.pop("preset"), data.pop("overrides", None) or {}
                return expand_preset(preset, {**data, **overrides})
            return ExperimentSpec.model_validate(data)
        overrides = json.loads(override) if override else None
        if overrides is not None and not isinstance(overrides, dict):
            _usage_error("--override must be a JSON object")
        return expand_preset(preset, overrides)
    except KeyError:
        _usage_error(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    except OSError as error:
        _usage_error(f"cannot read {spec}: {error.strerror}")
    except json.JSONDecodeError as error:
        _usage_error(f"invalid JSON: {error}")
    except ValidationError as error:
        table = Table("field", "error", title="Invalid experiment spec", title_justify="left")
        for problem in error.errors():
            table.add_row(".".join(map(str, problem["loc"])) or "(spec)", problem["msg"])
        errors.print(table)
        raise typer.Exit(2) from None


def _refuse_unaffordable(experiment: Any) -> None:
    """Exit 2 naming every run that exceeds this machine's memory budget or the time limit,
    or whose dataset's files are missing in KFAC_DATA_DIR, as the API refuses them
    (backend/estimate.py, backend/datafiles.py)."""
    from backend.datafiles import spec_errors
    from backend.estimate import resource_errors
    from backend.settings import get_settings

    settings = get_settings()
    problems = resource_errors(
        experiment, settings.worker_memory_bytes, settings.run_time_limit_s, settings.worker_flops
    ) + spec_errors(experiment, settings.data_dir)
    if problems:
        table = Table("run", "error", title="Cannot run here", title_justify="left")
        for location, message in problems:
            table.add_row(".".join(map(str, location)), message)
        errors.print(table)
        raise typer.Exit(2)


def _usage_error(message: str) -> None:
    errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


if __name__ == "__main__":
    app()
