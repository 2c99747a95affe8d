"""What an experiment would be, before it is launched: the network each run trains (its
layers as they will be built, widths after `width_scale`), its parameter count and its
estimated memory and time (backend/estimate.py), so that the form can show them as they are
edited. The same validation and resource rules as a launch apply (one rule for both)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from backend.api.schemas import RunEstimate
from backend.estimate import estimate
from backend.settings import Settings
from backend.spec import ExperimentSpec


class LayerOut(BaseModel):
    inputs: int = Field(description="in_features (a Conv2d: in_channels·kh·kw)")
    outputs: int = Field(description="out_features / out_channels")


class RunPreview(BaseModel):
    label: str
    layers: list[LayerOut] = Field(description="Every K-FAC layer (Linear, Conv2d) in order")
    parameters: int = Field(description="All the model's parameters")
    total_steps: int
    estimate: RunEstimate


class ExperimentPreview(BaseModel):
    name: str
    runs: list[RunPreview]


def preview(settings: Settings, spec: ExperimentSpec) -> ExperimentPreview:
    return ExperimentPreview(
        name=spec.name,
        runs=[
            RunPreview(
                label=run.display_label(),
                layers=[LayerOut(inputs=s.inputs, outputs=s.outputs) for s in run.layer_shapes()],
                parameters=run.parameter_count(),
                total_steps=run.total_steps(),
                estimate=RunEstimate(**estimate(run, settings.worker_flops).as_json()),
            )
            for run in spec.runs
        ],
    )
