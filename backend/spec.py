"""The one run spec: what a run trains, with what, for how long and what it records.

A pydantic v2 model shared by the API (which validates requests with it and answers 422 with
field-level errors), the worker (which builds the run from it) and the CLI. It imports neither
torch nor FastAPI, so the API process stays light: everything it checks — model size, probe
size, step counts — is computed here from the layer shapes with plain arithmetic. The model
specs live in `backend.architectures`, the optimizer specs in `backend.optimizer_specs`, the
datasets in `backend.datasets`; all of them, and plugins' ones, reach the spec through the
registry (`backend.registry`, entry points), which builds `ModelSpec`, `OptimizerSpec` and the
dataset names here, so `backend.spec` stays the one place to import the spec from. A run's
batch schedule and step count follow `backend.run_length`, its snapshots' probe is
`backend.probe_spec` (re-exported here). An experiment's optimizer entries
may sweep their hyper-parameters (`backend.sweeps`). Presets live in `backend.presets`, which
imports this module (never the other way round).

Cross-field checks are field validators that read the fields declared before them
(`info.data`), so that every error names the field at fault (e.g. `runs.1.model`). The order of
the fields in `RunSpec` is therefore part of the design: dataset, then model, then optimizer
(`kfc`/`kfc_pre` need a conv net, `kfac_tridiag` refuses one), then the rest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backend import registry
from backend.architectures import Activation as Activation
from backend.architectures import AutoencoderSpec, LayerShape
from backend.architectures import ConvNetSpec as ConvNetSpec
from backend.architectures import MLPSpec as MLPSpec
from backend.architectures import parameter_count as parameter_count
from backend.datasets import DatasetInfo
from backend.optimizer_specs import AdamSpec as AdamSpec
from backend.optimizer_specs import KFACSpec, optimizer_model_error
from backend.optimizer_specs import KFACTridiagSpec as KFACTridiagSpec
from backend.optimizer_specs import KFCPreSpec as KFCPreSpec
from backend.optimizer_specs import KFCSpec as KFCSpec
from backend.optimizer_specs import SGDMomentumSpec as SGDMomentumSpec
from backend.optimizer_specs import SGDSpec as SGDSpec
from backend.probe_spec import ProbeSpec as ProbeSpec
from backend.run_length import (
    MAX_BATCH_SIZE,
    MAX_STEPS,
    ExponentialBatchSchedule,
    steps_for_epochs,
    total_steps_from,
)
from backend.spec_base import SpecModel, Text
from backend.sweeps import MAX_RUNS as MAX_RUNS
from backend.sweeps import SweepValue, SweptOptimizer, check_expansion_size, config_label

# ---- limits: a single request must not be able to exhaust a worker -------------------------
MAX_PARAMETERS = 20_000_000
MAX_LAYER_WIDTH = 8192  # K-FAC inverts (width+1)² factors
MAX_PROBE_PARAMETERS = 4096  # exact F over the probe is P × P
MAX_SNAPSHOTS = 200
MAX_PROCESSES = 16  # data-parallel ranks of one run on one worker
MAX_NODES = 16  # workers (machines) one run spans
MAX_WORLD_SIZE = 64  # all the ranks of one run: nodes × processes


# ---- the registry: every dataset, model and optimizer a spec may name -------------------------
DATASETS: dict[str, DatasetInfo] = {
    name: entry.value for name, entry in registry.entries("dataset").items()
}
ModelSpec = registry.spec_union("model")
OptimizerSpec = registry.spec_union("optimizer")


def _known_dataset(name: Any) -> Any:
    if isinstance(name, str) and name not in DATASETS:
        raise ValueError(registry.unknown("dataset", name))
    return name


DatasetName = Annotated[
    Literal[tuple(DATASETS)],  # an enum in the JSON schema, so the form offers them
    BeforeValidator(_known_dataset),
]


class DatasetSpec(SpecModel):
    name: DatasetName = "digits_offline"
    download: bool = Field(
        False,
        description="mnist, cifar10, svhn: fetch missing files from the mirror named by "
        "KFAC_MNIST_MIRROR, KFAC_CIFAR10_MIRROR or KFAC_SVHN_MIRROR (checksums verified)",
    )

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.name]


# ---- a run ----------------------------------------------------------------------------------
class RunSpec(SpecModel):
    """One training run. Field order matters: validators read the fields above them."""

    label: Text | None = Field(None, max_length=120)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    model: ModelSpec = Field(default_factory=AutoencoderSpec)
    optimizer: OptimizerSpec = Field(default_factory=KFACSpec)
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] | ExponentialBatchSchedule = 256
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="default 1000 (or epochs)")
    epochs: float | None = Field(None, gt=0, le=10_000)
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    metric_interval: int = Field(1, ge=1, le=10_000, description="train loss every k steps")
    eval_interval: int | None = Field(100, ge=1, description="test loss / accuracy; None: off")
    snapshot_interval: int | None = Field(None, ge=1, description="curvature snapshots; None: off")
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    checkpoint_interval: int | None = Field(500, ge=1, description="None: no checkpoints")
    iterate_averaging: float | None = Field(
        None, gt=0, lt=1, description="§13: evaluate θ̄ₖ = ξθ̄ₖ₋₁ + (1−ξ)θₖ, ξ = min(1 − 1/k, this)"
    )
    config: dict[Text, SweepValue] = Field(
        default_factory=dict,
        max_length=16,
        description="the swept hyper-parameters of this run's grid point (set by a sweep); "
        "labels and comparison groups read them from here",
        # Keys are published as `patternProperties`, which alone would let a key with NUL by.
        json_schema_extra={"additionalProperties": False},
    )
    queue_timeout_s: float | None = Field(
        None,
        gt=0,
        le=30 * 86400,
        description="If no worker consumes the run's queue this long after it was queued, "
        "apply on_queue_timeout; None: wait for a worker forever",
    )
    on_queue_timeout: Literal["fail", "cpu"] = Field(
        "fail", description="fail the run, or train it on the CPU queue instead"
    )
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="data-parallel ranks (torch.distributed) sharing each mini-batch; "
        "N ranks at batch B train as one process at B",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="workers (machines) the run spans, each running `processes` ranks; "
        f"nodes × processes at most {MAX_WORLD_SIZE} and at most the mini-batch",
    )

    @field_validator("dataset", mode="before", json_schema_input_type=DatasetSpec | DatasetName)
    @classmethod
    def _dataset_by_name(cls, value: Any) -> Any:
        """`"dataset": "mnist"` is short for `{"name": "mnist"}` (published as such)."""
        return {"name": value} if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _model_fits(cls, model: Any, info: ValidationInfo):
        dataset = info.data.get("dataset")
        if dataset is None:
            return model
        shapes = _layer_shapes(model, dataset.info)
        side = max(max(s.inputs + s.bias, s.outputs) for s in shapes)
        if side > MAX_LAYER_WIDTH:
            raise ValueError(f"a layer of {side} units (factor side) exceeds {MAX_LAYER_WIDTH}")
        count = model.parameter_count(*_shape_args(dataset.info))
        if count > MAX_PARAMETERS:
            raise ValueError(f"{count:,} parameters exceed the limit of {MAX_PARAMETERS:,}")
        return model

    @field_validator("optimizer")
    @classmethod
    def _optimizer_fits_model(cls, optimizer: Any, info: ValidationInfo):
        model = info.data.get("model")
        if model is not None and (error := optimizer_model_error(optimizer, model)):
            raise ValueError(error)
        return optimizer

    @field_validator("batch_size")
    @classmethod
    def _batch_fits(cls, batch: int | ExponentialBatchSchedule, info: ValidationInfo):
        dataset = info.data.get("dataset")
        if isinstance(batch, int) and dataset is not None and batch > dataset.info.n_train:
            raise ValueError(f"exceeds the {dataset.info.n_train} training examples")
        return batch

    @field_validator("processes")
    @classmethod
    def _every_rank_has_examples(cls, processes: int, info: ValidationInfo):
        if error := _too_few_examples(processes, info.data.get("batch_size")):
            raise ValueError(f"{processes} processes {error}")
        return processes

    @field_validator("nodes")
    @classmethod
    def _world_fits(cls, nodes: int, info: ValidationInfo):
        processes = info.data.get("processes")
        if processes is None:
            return nodes
        world = nodes * processes
        if world > MAX_WORLD_SIZE:
            raise ValueError(
                f"{nodes} nodes × {processes} processes = {world} ranks exceed {MAX_WORLD_SIZE}"
            )
        if error := _too_few_examples(world, info.data.get("batch_size")):
            raise ValueError(f"{nodes} nodes × {processes} processes = {world} ranks {error}")
        return nodes

    @field_validator("epochs")
    @classmethod
    def _steps_or_epochs(cls, epochs: float | None, info: ValidationInfo):
        if epochs is None:
            return None
        if info.data.get("steps") is not None:
            raise ValueError("give steps or epochs, not both")
        dataset, batch = info.data.get("dataset"), info.data.get("batch_size")
        if dataset is not None and batch is not None:
            steps = steps_for_epochs(epochs, batch, dataset.info.n_train)
            if steps > MAX_STEPS:
                raise ValueError(f"{epochs} epochs are more than {MAX_STEPS:,} steps")
        return epochs

    @field_validator("snapshot_interval")
    @classmethod
    def _snapshot_count(cls, interval: int | None, info: ValidationInfo):
        total = total_steps_from(info.data)
        if interval is not None and total is not None and total // interval > MAX_SNAPSHOTS:
            raise ValueError(f"{total // interval} snapshots exceed {MAX_SNAPSHOTS}")
        return interval

    @field_validator("probe")
    @classmethod
    def _probe_fits(cls, probe: ProbeSpec, info: ValidationInfo):
        dataset, model = info.data.get("dataset"), info.data.get("model")
        if dataset is None or model is None:
            return probe
        shapes = _layer_shapes(model, dataset.info)
        if probe.layers and max(probe.layers) >= len(shapes):
            raise ValueError(f"the model has K-FAC layers 0..{len(shapes) - 1}")
        if (count := probe.parameter_count(shapes)) > MAX_PROBE_PARAMETERS:
            raise ValueError(f"the probe covers {count} parameters > {MAX_PROBE_PARAMETERS}")
        return probe

    # -- derived values used by the worker --
    @property
    def loss(self) -> str:
        return self.model.loss

    def layer_dims(self) -> list[int]:
        """The widths of a stack of Linear layers (autoencoder, mlp; not convnet)."""
        return self.model.layer_dims(self.dataset.info.input_dim, self.dataset.info.n_classes)

    def layer_shapes(self) -> list[LayerShape]:
        """Every K-FAC layer (Linear, Conv2d) of the model in order, as W̄'s shape."""
        return _layer_shapes(self.model, self.dataset.info)

    def parameter_count(self) -> int:
        return self.model.parameter_count(*_shape_args(self.dataset.info))

    @property
    def world_size(self) -> int:
        """The ranks that train the run: `processes` on each of `nodes` workers."""
        return self.nodes * self.processes

    def total_steps(self) -> int:
        total = total_steps_from(dict(self))
        assert total is not None
        return total

    def display_label(self) -> str:
        """The run's label, by default "optimizer [swept values] · seed N"."""
        return self.label or f"{config_label(self.optimizer.name, self.config)} · seed {self.seed}"


def _too_few_examples(ranks: int, batch: int | ExponentialBatchSchedule | None) -> str | None:
    """Why `ranks` ranks cannot share the (first) mini-batch, or None: each needs an example."""
    smallest = batch.initial if isinstance(batch, ExponentialBatchSchedule) else batch
    if smallest is not None and smallest < ranks:
        return f"need a mini-batch of at least {ranks}"
    return None


def _shape_args(info: DatasetInfo) -> tuple[int, int, tuple[int, int, int] | None]:
    return info.input_dim, info.n_classes, info.image_shape


def _layer_shapes(model: Any, info: DatasetInfo) -> list[LayerShape]:
    return model.layer_shapes(*_shape_args(info))


def queue_for(spec: RunSpec) -> Literal["gpu", "cpu"]:
    """The Celery queue of a run: `gpu` when it asks for CUDA; `auto` runs go to `cpu`, which
    GPU workers may also consume (they then use their GPU)."""
    return queue_for_device(spec.device)


def queue_for_device(device: str) -> Literal["gpu", "cpu"]:
    return "gpu" if device == "cuda" else "cpu"


# ---- an experiment --------------------------------------------------------------------------
# `_runs_from_comparison`'s rule in the published JSON schema, so that the OpenAPI document
# refuses what the server refuses (e.g. `{}`): a `base` run, or `runs` and nothing to expand.
_RUNS_OR_BASE = {
    "anyOf": [
        {"required": ["base"], "properties": {"base": {"type": "object"}}},
        {
            "required": ["runs"],
            "properties": {
                "runs": {"minItems": 1},
                "optimizers": {"maxItems": 0},
                "seeds": {"maxItems": 0},
            },
        },
    ]
}


class ExperimentSpec(SpecModel):
    """A set of runs. Either listed in `runs`, or in the compact comparison form: `base` (a run
    spec) × `optimizers` (each maybe with a `sweep`) × `seeds`, which validation expands into
    `runs` (then cleared): every optimizer, every point of its grid, every seed, in that order.
    Each expanded run keeps its grid point in `config`."""

    model_config = ConfigDict(json_schema_extra=_RUNS_OR_BASE)

    name: Text = Field("experiment", min_length=1, max_length=120)
    description: Text = Field("", max_length=2000)
    runs: list[RunSpec] = Field(default_factory=list, max_length=MAX_RUNS)
    base: RunSpec | None = None
    optimizers: list[SweptOptimizer] = Field(default_factory=list, max_length=MAX_RUNS)
    seeds: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(
        default_factory=list, max_length=MAX_RUNS
    )
    _sources: list[tuple[str | int, ...]] | None = PrivateAttr(None)

    def run_sources(self) -> list[tuple[str | int, ...]]:
        """Where each run came from in the request: `("runs", i)`, or `("optimizers", k)` /
        `("base",)` for the runs expanded from the comparison form, so that an error found
        after validation (e.g. a resource limit) names the field the client wrote."""
        return self._sources or [("runs", i) for i in range(len(self.runs))]

    def __eq__(self, other: object) -> bool:
        """Specs with equal fields are equal: where the runs came from is not part of the
        value (the canonical form, runs expanded, equals the comparison form it came from)."""
        if not isinstance(other, ExperimentSpec):
            return NotImplemented
        return dict(self) == dict(other)

    @field_validator("optimizers")
    @classmethod
    def _optimizers_fit_base(cls, optimizers: list[Any], info: ValidationInfo) -> list[Any]:
        """The expansion copies `base` without re-validating it, so check here what RunSpec
        checks between optimizer and model."""
        base = info.data.get("base")
        for i, entry in enumerate(optimizers if base is not None else []):
            if error := optimizer_model_error(entry.optimizer, base.model):
                raise ValueError(f"optimizers[{i}]: {error}")
        return optimizers

    @model_validator(mode="after")
    def _runs_from_comparison(self) -> ExperimentSpec:
        if self.base is None and (self.optimizers or self.seeds):
            raise ValueError("`optimizers` and `seeds` expand a `base` run, which is missing")
        if not self.runs and self.base is None:
            raise ValueError("an experiment needs `runs` or a `base` to compare optimizers on")
        if self.base is not None:
            # The base run's own optimizer, read as an entry is (the keyword form would hand
            # the optimizer union a dict without its name).
            entries = self.optimizers or [SweptOptimizer.model_validate(self.base.optimizer)]
            seeds = self.seeds or [self.base.seed]
            sizes = [len(entry.grid()) for entry in entries]
            check_expansion_size(len(self.runs), sizes, len(seeds))
            expanded = [
                self.base.model_copy(
                    update={"optimizer": optimizer, "config": config, "seed": seed, "label": None}
                )
                for entry in entries
                for optimizer, config in entry.points()
                for seed in seeds
            ]
            self._sources = [
                *(("runs", i) for i in range(len(self.runs))),
                *(
                    ("optimizers", k) if self.optimizers else ("base",)
                    for k, size in enumerate(sizes)
                    for _ in range(size * len(seeds))
                ),
            ]
            object.__setattr__(self, "runs", [*self.runs, *expanded])
            for field, empty in (("base", None), ("optimizers", []), ("seeds", [])):
                object.__setattr__(self, field, empty)
        return self
