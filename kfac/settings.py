"""The hyper-parameters of `kfac.KFAC`, validated in one place.

`KFAC(model, loss, **options)` builds a `KFACSettings(**options)`; the numbers that can change
during a run or must round-trip with `state_dict()` (λ above all) go into the optimizer's param
group, the rest stay on the settings.  backend/optimizer_specs.py mirrors the defaults for
the API process, which never imports torch (tests/worker/test_models.py checks they agree).

Why λ₀ = 1, |μ| <= 1 and an ℓ2 term over the first 100 steps only (issue 16, docs/benchmarks.md
§16): from PyTorch's default initialisation a sigmoid autoencoder sits on a flat region, where
the steps' components along directions the loss does not see (tiny curvature) drift freely and
can push whole hidden layers into saturation, after which no signal passes. With λ₀ = 150 K-FAC
stayed on the mean-image plateau on 2 seeds of 3; λ₀ = 1 (KFC's already) and |μ| <= 1
(kfac.quadratic) take the race's autoencoder (width ¼) off it on most seeds, not all: which
seeds leave is decided by rounding (another CPU, or an exact refactor, changes them), and 11 of
12 leave within 300 steps (docs/benchmarks.md "16, fourth pass"; open in issue 16). The ℓ2
term η₁ = 1e-5 (the paper's autoencoders' value, §13) is for the smaller nets: its
natural-gradient step F̆⁻¹η₁θ is largest exactly along the drifting directions; of seeds 0–7 of
the 196-50-25-12-3 autoencoder of tests/kfac/test_defaults.py, 6 leave the flat start without
saturating a layer with it over the first 100 steps, 2 without it. Past the
flat start (`weight_decay_steps`; None keeps η throughout) η = 0, so the wide layers
precondition per example: η > 0 costs 0.85–0.95 of an SGD-m step at batch 256 on the full MNIST
autoencoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kfac.enums import FisherType, InverseStructure, ProductPrecision, QuadraticSampling

SETTINGS_BEFORE_THEY_EXISTED = {
    "weight_decay_steps": None,
    "quadratic_sampling": "first",
    "adapt_quadratic_rows": False,
}
"""The param-group entries a state dict saved before they existed lacks: the values it was
trained with (ℓ2 throughout, the batch's first share, of a fixed size), so that it resumes as
it was trained."""

_FIXED = ("structure", "fisher", "layers", "seed", "precision")
"""The settings that are not param-group entries."""


@dataclass(frozen=True)
class KFACSettings:
    """See the Args of `kfac.KFAC` for the meaning and paper section of each field."""

    structure: InverseStructure | str = InverseStructure.BLOCK_DIAGONAL
    fisher: FisherType | str = FisherType.TRUE
    lr: float | None = None
    momentum: float = 0.9
    damping: float = 1.0
    weight_decay: float = 1e-5
    weight_decay_steps: int | None = 100
    adapt_damping: bool = True
    damping_interval: int = 5
    damping_decay: float = 19 / 20
    gamma_search: bool = False
    gamma_interval: int = 20
    stats_interval: int = 10
    inverse_interval: int = 20
    factor_decay: float = 0.95
    stats_fraction: float = 1.0
    quadratic_fraction: float = 0.25
    quadratic_sampling: QuadraticSampling | str = QuadraticSampling.AUTO
    adapt_quadratic_rows: bool = True
    kl_clip: float | None = None
    layers: list[str] | None = None
    seed: int = 0
    precision: ProductPrecision | str = ProductPrecision.EXACT

    def __post_init__(self) -> None:
        object.__setattr__(self, "structure", InverseStructure(self.structure))
        object.__setattr__(self, "fisher", FisherType(self.fisher))
        object.__setattr__(self, "precision", ProductPrecision(self.precision))
        object.__setattr__(self, "quadratic_sampling", QuadraticSampling(self.quadratic_sampling))
        for name in ("damping_interval", "gamma_interval", "stats_interval", "inverse_interval"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        steps = self.weight_decay_steps
        if steps is not None and (int(steps) != steps or steps < 0):
            raise ValueError(f"weight_decay_steps must be None or an integer >= 0, got {steps!r}")
        for name in ("stats_fraction", "factor_decay", "quadratic_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
        if self.damping < 0 or self.weight_decay < 0:
            raise ValueError("damping and weight_decay must be non-negative")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive or None (quadratic model), got {self.lr!r}")
        if (
            self.precision is not ProductPrecision.EXACT
            and self.structure is not InverseStructure.BLOCK_DIAGONAL
        ):
            raise ValueError(
                f"precision {self.precision.value!r} is for the block-diagonal structure"
            )
        if self.gamma_search and self.gamma_interval % self.inverse_interval:
            raise ValueError("gamma_interval must be a multiple of inverse_interval")

    def group_defaults(self) -> dict:
        """The param-group entries: every setting but the structure, the Fisher type, the
        layers, the seed and the products' precision."""
        group = {k: v for k, v in asdict(self).items() if k not in _FIXED}
        group["quadratic_sampling"] = self.quadratic_sampling.value  # weights-only checkpoints
        return group
