"""`kfac-lab data list` / `kfac-lab data fetch NAME`: the registered datasets' files in the
data directory (KFAC_DATA_DIR, see backend/settings.py), and fetching them from a mirror.

The same declaration (backend/datasets.py) and the same checks (backend.datafiles) serve the
API's refusal at create and a worker's loader, so what `list` calls present is exactly what
a run would find.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from backend import datafiles, registry
from backend.cli import console, errors
from backend.settings import get_settings

app = typer.Typer(
    help="Datasets' files in KFAC_DATA_DIR: list them, fetch them.", no_args_is_help=True
)


@app.command("list")
def list_datasets() -> None:
    """Every registered dataset with its files: present or missing in KFAC_DATA_DIR, size."""
    data_dir = get_settings().data_dir
    table = Table(title=f"datasets in {data_dir}")
    for column in ("name", "files", "status", "size"):
        table.add_column(column)
    for name, entry in registry.entries("dataset").items():
        info = entry.value
        lacking = datafiles.missing(info, data_dir)
        files = "\n".join(
            f"{f.name}{' (missing)' if f.name in lacking else ''}" for f in info.files
        )
        status = datafiles.availability(info, data_dir).replace("_", " ")
        size = _size(datafiles.size_bytes(info, data_dir))
        table.add_row(name, files or "(built in)", status, size)
    console.print(table)


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="the dataset, e.g. mnist")],
    mirror: Annotated[
        str | None,
        typer.Option(help="base URL holding the files (default: the dataset's mirror variable)"),
    ] = None,
) -> None:
    """Download NAME's missing files from its mirror into KFAC_DATA_DIR and verify them."""
    entries = registry.entries("dataset")
    if name not in entries:
        errors.print(registry.unknown("dataset", name))
        raise typer.Exit(2)
    data_dir = get_settings().data_dir
    try:
        fetched = datafiles.fetch(name, entries[name].value, data_dir, mirror)
    except datafiles.DataUnavailable as error:
        errors.print(f"{name}: {error}")
        raise typer.Exit(1) from None
    if fetched:
        console.print(f"{name}: fetched and verified {', '.join(fetched)} into {data_dir}")
    else:
        console.print(f"{name}: every file is present in {data_dir}")


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB"):  # noqa: B007 - the unit reached is the answer
        n /= 1024
        if n < 1024:
            break
    return f"{n:.1f} {unit}"
