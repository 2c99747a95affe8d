"""The optimizer part of the run spec: SGD, Adam, K-FAC and KFC with their hyper-parameters.

`kfac`, `kfac_tridiag`, `kfc` and `kfc_pre` are all `kfac.KFAC`, built from `kfac_kwargs()`;
the others are torch.optim optimizers. Each is registered as an entry point of the group
`kfac_lab.optimizers` (pyproject.toml; see backend/registry.py), as a plugin's optimizer is,
and names its worker-side `builder` (worker/builders.py). `optimizer_model_error` says which
pairs of optimizer and model make sense. Re-exported by `backend.spec`; imports neither torch
nor FastAPI.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from backend import registry
from backend.architectures import ConvNetSpec
from backend.spec_base import TaggedSpec

# ---- optimizers -----------------------------------------------------------------------------


class _TorchOptimizer(TaggedSpec):
    builder: ClassVar[str] = "worker.builders:build_sgd"
    lr: float = Field(0.01, gt=0, le=100)
    weight_decay: float = Field(0.0, ge=0, le=1)


class SGDSpec(_TorchOptimizer):
    name: Literal["sgd"] = "sgd"


class SGDMomentumSpec(_TorchOptimizer):
    name: Literal["sgd_momentum"] = "sgd_momentum"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class AdamSpec(_TorchOptimizer):
    builder: ClassVar[str] = "worker.builders:build_adam"
    name: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)


KFAC_BUILDER = "worker.builders:build_kfac"


def is_kfac(name: str) -> bool:
    """Whether the optimizer named `name` trains with `kfac.KFAC` (K-FAC, KFC, KFC-pre, or a
    plugin's spec built the same way): said once, by its builder in the registry."""
    entry = registry.entries("optimizer").get(name)
    return entry is not None and entry.builder == KFAC_BUILDER


class _KFACBase(TaggedSpec):
    """The hyper-parameters of `kfac.KFAC`; the structure of the inverse comes from the name."""

    builder: ClassVar[str] = KFAC_BUILDER

    fisher: Literal["true", "empirical"] = "true"
    lr: float | None = Field(
        None, gt=0, le=100, description="None: α and μ from the exact quadratic model (§7)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="used only with a fixed lr")
    damping: float = Field(1.0, gt=0, le=1e8, description="initial λ (§6)")
    weight_decay: float = Field(1e-5, ge=0, le=1, description="η, the ℓ2 coefficient (§6.1)")
    weight_decay_steps: int | None = Field(
        100, ge=0, le=10_000_000, description="η applies over these first steps; None: always"
    )
    adapt_damping: bool = True
    damping_interval: int = Field(5, ge=1, le=10_000, description="T1 (§6.5)")
    stats_interval: int = Field(10, ge=1, le=10_000)
    inverse_interval: int = Field(20, ge=1, le=10_000, description="T3 (§8)")
    factor_decay: float = Field(0.95, gt=0, le=1, description="ε of the moving averages (§5)")
    stats_fraction: float = Field(1.0, gt=0, le=1)
    quadratic_fraction: float = Field(0.25, gt=0, le=1, description="of the batch, for α, μ")
    quadratic_sampling: Literal["auto", "curvature", "first"] = Field(
        "auto",
        description="that share: the most curved half + a weighted draw (auto: for"
        " cross-entropy), or the first examples",
    )
    adapt_quadratic_rows: bool = Field(
        True, description="fewer of that share when the examples' Fisher varies little"
    )
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
        """Keyword arguments of `kfac.KFAC` (all but model, loss and seed); `kfc` and `kfc_pre`
        are block-diagonal (KFAC refuses the tridiagonal structure for conv layers)."""
        structure = "block_tridiagonal" if self.name == "kfac_tridiag" else "block_diagonal"
        return {"structure": structure, **self.model_dump(exclude={"name"})}


class KFACSpec(_KFACBase):
    name: Literal["kfac"] = "kfac"


class KFACTridiagSpec(_KFACBase):
    name: Literal["kfac_tridiag"] = "kfac_tridiag"


class KFCSpec(_KFACBase):
    """KFC (Grosse & Martens 2016): K-FAC with Ω ⊗ Γ blocks for the conv layers, block-diagonal
    inverse, α and μ from the exact quadratic model, Levenberg–Marquardt λ (from λ₀ = 1, as
    K-FAC's: on the offline conv task (bench/kfc_vs_sgd.py) λ₀ = 150 spent its first ~100
    steps shrinking λ, while λ₀ ∈ {0.1, 1} trained alike). α and μ use the whole mini-batch:
    with a quarter of it (K-FAC's default) the 2×2 quadratic model was noisy enough there that
    μ reached 15, then −90, and the run diverged at step ~196. η = 0: KFC's figures in
    docs/benchmarks.md were measured without the ℓ2 term that K-FAC's defaults carry over their
    first 100 steps."""

    name: Literal["kfc"] = "kfc"
    weight_decay: float = Field(0.0, ge=0, le=1, description="η, the ℓ2 coefficient (§6.1)")
    quadratic_fraction: float = Field(1.0, gt=0, le=1, description="of the batch, for α, μ")


class KFCPreSpec(_KFACBase):
    """KFC-pre (Grosse & Martens 2016, §6): the KFC direction as a preconditioner inside SGD
    with momentum — fixed learning rate, momentum 0.9 and fixed damping λ.

    The defaults were measured on the offline conv task (bench/kfc_vs_sgd.py, 100–150 steps
    each): without a trust region every lr in [0.01, 0.3] with λ ∈ {0.01, 0.1} diverged or
    stalled in the first steps (the natural-gradient step is huge along directions of small
    curvature), and λ = 1 was stable but no faster than SGD. KL clipping (`kl_clip` κ: the step
    is scaled so that lr²·Δᵀ∇h <= κ) fixes it: with λ = 0.01, κ = 1e-3 reached 2% training
    error in about 120 steps against about 300–375 for the best SGD-momentum (κ = 3e-3 or 1e-2
    were noisier, λ = 1e-3 slower). With κ binding, lr only caps the step size.

    Factor statistics every 20 steps (with the inverses) rather than 10: one statistics update
    (a second backward pass with sampled targets, the patches, Ω and Γ) costs about three SGD
    steps and was most of KFC-pre's overhead (amortised step 1.44–1.53× SGD-momentum's on 2
    idle cores). On the same task every 20 reached 2% training error in 110 steps against 120
    for every 10 (one thread, identical seeds), while statistics from a quarter of the batch
    every 10 steps took 110 or 145 depending on lr (docs/bench/kfc_vs_sgd.md).

    Statistics from half the batch (paper §5): a factor update costs 40 ms instead of 112 ms
    and the amortised step 1.23× SGD-momentum's instead of 1.54× (2 idle cores, side by
    side), for 120 steps to 2% training error instead of 110; the time to the target,
    steps × step time, is 12% shorter."""

    name: Literal["kfc_pre"] = "kfc_pre"
    lr: float = Field(0.3, gt=0, le=100, description="fixed learning rate")
    damping: float = Field(0.01, gt=0, le=1e8, description="fixed λ")
    weight_decay: float = Field(0.0, ge=0, le=1, description="η (measured without, as KFC)")
    adapt_damping: bool = False
    stats_interval: int = Field(20, ge=1, le=10_000, description="amortised factor statistics")
    stats_fraction: float = Field(0.5, gt=0, le=1, description="of the batch, for the factors")
    kl_clip: float | None = Field(1e-3, gt=0, description="κ; None: no KL clipping")


def optimizer_model_error(optimizer: Any, model: Any) -> str | None:
    """Why `optimizer` cannot train `model`, or None: KFC and KFC-pre are for conv nets, and the
    block-tridiagonal inverse is for Linear layers only (kfac.KFAC refuses conv layers)."""
    conv = isinstance(model, ConvNetSpec)
    if optimizer.name in ("kfc", "kfc_pre") and not conv:
        return f"{optimizer.name} is for conv nets (model convnet); use kfac for {model.name}"
    if optimizer.name == "kfac_tridiag" and conv:
        return "the block-tridiagonal inverse supports Linear layers only; use kfc for convnet"
    return None
