"""The named experiment presets (`{"preset": NAME}` in a create request)."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from backend.api.deps import AdminDep
from backend.api.errors import documented
from backend.api.schemas import PresetOut

router = APIRouter(tags=["presets"], responses=documented(401, 403, 503))


@lru_cache(maxsize=1)
def _presets() -> tuple[PresetOut, ...]:
    """The presets, each validated once (to count its runs): they are constants."""
    from backend.presets import PRESETS, expand_preset

    return tuple(
        PresetOut(
            name=name,
            description=preset.description,
            experiment=preset.experiment,
            runs=len(expand_preset(name).runs),
        )
        for name, preset in PRESETS.items()
    )


@router.get("/presets")
def presets(_: AdminDep) -> list[PresetOut]:
    """The named presets, for creating experiments (admin only: a share link reads its one
    experiment and nothing else)."""
    return list(_presets())
