"""Dataset files on demand: what a data directory lacks, and fetching it from a mirror.

A dataset declares its files in its `DatasetInfo` (`files`, `mirror_variable`; see
backend/datasets.py). Three places read the declaration through this module, which needs no
torch:

* the API refuses, at create, a run whose dataset has files missing in *its* KFAC_DATA_DIR
  (unless the run sets `dataset.download`; `KFAC_CHECK_DATA=false` turns the check off where the
  API does not share the workers' disk), and `kfac-lab run` refuses it likewise: `spec_errors`;
* `kfac-lab data list` / `kfac-lab data fetch NAME`, and `GET /api/datasets` (which the
  new-comparison form reads to mark the datasets it offers): `availability`, `missing`,
  `size_bytes`, `fetch`;
* a worker's loader, before reading the files: `ensure` (fetches on `dataset.download`, unpacks
  an archive that is there but not yet unpacked, or raises the same message as the API).

A download goes to `NAME.part` and is moved into place only after its MD5 matches, so a failed
or corrupt download never leaves a file that would count as present.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from backend.datasets import DataFile, DatasetInfo

if TYPE_CHECKING:  # backend.spec imports the registry; this module stays light
    from backend.spec import ExperimentSpec

DOWNLOAD_TIMEOUT_S = 60.0


class DataUnavailable(FileNotFoundError):
    """A file could not be fetched: no mirror configured, the mirror unreachable, or a bad
    checksum. The message says which and what to do."""


def present(file: DataFile, data_dir: Path) -> bool:
    """`file` itself is in `data_dir`, or everything that stands for it once in place."""
    if (data_dir / file.name).is_file():
        return True
    return bool(file.in_place) and all((data_dir / p).is_file() for p in file.in_place)


def missing(info: DatasetInfo, data_dir: Path) -> list[str]:
    """The names of `info`'s files that `data_dir` lacks (none for built-in datasets)."""
    return [file.name for file in info.files if not present(file, data_dir)]


def availability(info: DatasetInfo, data_dir: Path) -> Literal["built_in", "present", "missing"]:
    """`built_in`: `info` declares no files (generated, or shipped with an installed package),
    so it is always there; else whether `data_dir` holds them all (`present`) or not."""
    if not info.files:
        return "built_in"
    return "missing" if missing(info, data_dir) else "present"


def missing_message(name: str, info: DatasetInfo, files: list[str], data_dir: Path) -> str:
    """The one error for a dataset whose files are missing (API 422 and worker)."""
    return (
        f"{name}: files missing in DATA_DIR {data_dir} (KFAC_DATA_DIR): {', '.join(files)}; "
        f"run `kfac-lab data fetch {name}` or set download=true (fetches from "
        f"{info.mirror_variable or 'its mirror'})"
    )


def spec_errors(spec: ExperimentSpec, data_dir: Path) -> list[tuple[tuple, str]]:
    """(`("runs", N, "dataset")` or `("base", "dataset")`, message) for each place in the
    request that names a dataset whose files `data_dir` lacks, for runs that do not ask for a
    download: they would fail at once on a worker reading that directory."""
    problems: dict[tuple, str] = {}  # the runs of one `base` share one error
    for run, loc in zip(spec.runs, spec.run_sources(), strict=True):
        lacking = [] if run.dataset.download else missing(run.dataset.info, data_dir)
        if lacking:
            place = ("base",) if loc[0] == "optimizers" else loc
            problems[(*place, "dataset")] = missing_message(
                run.dataset.name, run.dataset.info, lacking, data_dir
            )
    return list(problems.items())


def size_bytes(info: DatasetInfo, data_dir: Path) -> int:
    """Bytes on disk of `info`'s files that are present (an archive's members, when unpacked,
    count as well as the archive)."""
    paths = {data_dir / p for file in info.files for p in (file.name, *file.in_place)}
    return sum(path.stat().st_size for path in paths if path.is_file())


def mirror_url(name: str, info: DatasetInfo, mirror: str | None = None) -> str:
    """The base URL to fetch `name`'s files from: `mirror`, else the dataset's variable."""
    if mirror:
        return mirror
    variable = info.mirror_variable
    if variable and os.environ.get(variable):
        return os.environ[variable]
    where = f"set {variable} or pass" if variable else "pass"
    raise DataUnavailable(
        f"no mirror is configured for {name}: {where} `kfac-lab data fetch {name} --mirror URL`, "
        f"a base URL (https:// or file://) holding {', '.join(f.name for f in info.files)}"
    )


def fetch(name: str, info: DatasetInfo, data_dir: Path, mirror: str | None = None) -> list[str]:
    """Download `info`'s missing files from the mirror into `data_dir`, verify their MD5 and
    unpack archives; returns the names fetched."""
    base = mirror_url(name, info, mirror) if missing(info, data_dir) else ""
    fetched = []
    for file in info.files:
        if not present(file, data_dir):
            download(file, base, data_dir)
            fetched.append(file.name)
        unpack_if_needed(file, data_dir)
    return fetched


def ensure(name: str, info: DatasetInfo, data_dir: Path, download_missing: bool) -> None:
    """Make `info`'s files ready in `data_dir` for a loader, or raise FileNotFoundError."""
    lacking = missing(info, data_dir)
    if lacking and download_missing:
        fetch(name, info, data_dir)
    elif lacking:
        raise FileNotFoundError(missing_message(name, info, lacking, data_dir))
    for file in info.files:
        unpack_if_needed(file, data_dir)


def download(file: DataFile, base_url: str, data_dir: Path) -> Path:
    """Fetch `file` from `base_url`, check its MD5, then move it into `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / file.name
    partial = target.with_name(f"{target.name}.part")
    url = f"{base_url.rstrip('/')}/{file.name}"
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            open(partial, "wb") as f,
        ):
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise DataUnavailable(
            f"cannot download {url}: {reason} (is the mirror reachable from this machine? "
            f"without a network, copy {file.name} into {data_dir} by hand)"
        ) from error
    digest = md5_of(partial)
    if digest != file.md5:
        partial.unlink()
        raise DataUnavailable(f"{file.name}: MD5 {digest} != expected {file.md5}")
    partial.replace(target)
    return target


def unpack_if_needed(file: DataFile, data_dir: Path) -> None:
    """Unpack an archive that is present while its members are not (safe members only)."""
    archive = data_dir / file.name
    if not file.unpack or not archive.is_file():
        return
    if all((data_dir / p).is_file() for p in file.in_place):
        return
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir, filter="data")


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
