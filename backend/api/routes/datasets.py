"""The registered datasets and whether a run can use one now, for the new-comparison form.

The answer comes from the rules that decide at create (backend.datafiles): a dataset that
declares no files is built in (generated, or shipped with an installed package); one that
does has them in the API's KFAC_DATA_DIR or not, and a run naming it without `download` is
then refused with `message`. With KFAC_CHECK_DATA=false the API does not share the workers'
disk and cannot tell: `unchecked`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from backend import datafiles, registry
from backend.api.deps import AdminDep, SettingsDep
from backend.api.errors import documented

router = APIRouter(tags=["datasets"], responses=documented(401, 403, 503))


class DatasetOut(BaseModel):
    name: str
    description: str
    package: str = Field(description="The installed package that provides it")
    availability: Literal["built_in", "present", "missing", "unchecked"] = Field(
        description="built_in: no files to fetch (generated or shipped); present / missing: "
        "its files in the lab's data directory; unchecked: KFAC_CHECK_DATA is off"
    )
    files: list[str] = Field(description="The files it reads from the data directory")
    missing: list[str] = Field(description="Those the data directory lacks")
    message: str | None = Field(
        description="For a missing dataset: why a run of it is refused and what to do"
    )


@router.get("/datasets")
def datasets(settings: SettingsDep, _: AdminDep) -> list[DatasetOut]:
    """Every installed dataset, with whether the lab has its files (admin only, like the
    presets: a share link reads its one experiment and nothing else)."""
    out = []
    for name, entry in registry.entries("dataset").items():
        info, data_dir = entry.value, settings.data_dir
        state = datafiles.availability(info, data_dir)
        if state != "built_in" and not settings.check_data:
            state = "unchecked"
        lacking = datafiles.missing(info, data_dir) if state == "missing" else []
        out.append(
            DatasetOut(
                name=name,
                description=info.description,
                package=entry.distribution,
                availability=state,
                files=[file.name for file in info.files],
                missing=lacking,
                message=datafiles.missing_message(name, info, lacking, data_dir)
                if lacking
                else None,
            )
        )
    return out
