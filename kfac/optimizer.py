"""K-FAC (Martens & Grosse 2015) as a torch.optim.Optimizer.

One call of `step(inputs, targets)` is one iteration of the paper's algorithm:

1. forward; on statistics steps (every `stats_interval`) the layers' inputs ā and outputs s are
   kept, targets are sampled from the model (true Fisher, §5) and g = Ds comes from a separate
   autograd call, so the real gradient is untouched;
2. the Kronecker factors are updated as running averages (§5, kfac.statistics);
3. every `inverse_interval` steps the damped factors are inverted (§4.2, §4.3, §6.3) at γ
   (kfac.gamma);
4. the proposal Δ = −F̆⁻¹∇h is formed layer by layer, ∇h including the ℓ2 term ηθ (§6.1;
   kfac.natural_gradient);
5. δ = αΔ + μδ₀ with α, μ minimising the exact quadratic model (§7), or δ = −lr·Δ' + m·δ₀
   with a fixed learning rate and momentum (optionally KL-clipped);
6. every `damping_interval` steps λ moves by the Levenberg–Marquardt rule (§6.5).

Parameters outside nn.Linear layers get the damped identity as their curvature.

Data parallelism: with a `kfac.distributed.ProcessGroupCommunicator` each rank calls `step`
with its shard of the global batch (`communicator.shard`) and the optimizer reduces the batch
means, shares the inverse work and keeps every rank's state identical (see kfac.distributed).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from kfac.capture import ActivationCapture
from kfac.damping import DampingController
from kfac.distributed import Communicator
from kfac.enums import InverseStructure, LossFamily
from kfac.gamma import gamma_search_due, search_gamma, tied_gamma
from kfac.inverses import Notes
from kfac.layers import find_blocks
from kfac.losses import negative_log_likelihood
from kfac.natural_gradient import NaturalGradient
from kfac.preconditioner import KroneckerPreconditioner
from kfac.quadratic import (
    QuadraticModel,
    StepCoefficients,
    model_change,
    running_statistics_frozen,
    solve_step_coefficients,
)
from kfac.settings import SETTINGS_BEFORE_THEY_EXISTED, KFACSettings
from kfac.statistics import FactorStatistics
from kfac.step_cost import in_model_rows, step_costs
from kfac.vectors import combine, dot, objective_gradient, objective_value


class KFAC(torch.optim.Optimizer):
    """K-FAC for networks of nn.Linear layers and KFC for nn.Conv2d layers, each called once per
    forward pass; with a fixed `lr` on a conv net this is KFC-pre (KFC inside SGD with momentum).

    Args:
        model: the network; its K-FAC layers are found by module type, in model order.
        loss: the predictive distribution, a `LossFamily` ("cross_entropy", "bce", "mse").

    Options (keywords, `kfac.settings.KFACSettings` holds their defaults and checks them):
        structure: block-diagonal (§4.2) or block-tridiagonal (§4.3) inverse.
        fisher: "true" samples the statistics' targets from the model; "empirical" uses y.
        lr: None chooses α, μ from the quadratic model each step (§7); a number gives a fixed
            learning rate with `momentum`.
        damping: initial λ (the paper starts at 150; 1 here, see `kfac.settings`).
        weight_decay, weight_decay_steps: η of the ℓ2 term ½η‖θ‖² in h (§6.1) over the first
            `weight_decay_steps` steps (None: throughout), then η = 0; by default 1e-5 (the
            paper's autoencoders', §13) over 100 steps: it keeps directions of tiny curvature
            from drifting into saturated units while the net leaves a flat start, and η = 0
            afterwards lets wide layers use the cheaper per-example product (kfac.settings).
        adapt_damping: Levenberg–Marquardt adaptation of λ every `damping_interval` steps with
            ω₁ = damping_decay ** damping_interval (§6.5), the decrease compounded over a run
            of successes (`kfac.damping.levenberg_marquardt`).
        gamma_search: choose γ among {γω₂, γ, γ/ω₂} by the quadratic model every
            `gamma_interval` steps (§6.6); otherwise γ = sqrt(λ + η).
        stats_interval, inverse_interval: the amortisation periods T_stats and T₃.
        factor_decay: the running averages' decay (ε = min(1 − 1/k, decay), §5).
        stats_fraction, quadratic_fraction: the share of the mini-batch used for the factor
            statistics (§5) and for the quadratic model's Fisher products.
        quadratic_sampling: which examples those are (kfac.model_rows.choose_rows).
        adapt_quadratic_rows: use fewer than `quadratic_fraction` of the batch for α, μ when
            the examples' Fisher varies little (`kfac.model_rows.economical_rows`).
        kl_clip: with a fixed lr, scale steps so that lr²·Δᵀ∇h <= kl_clip.
        layers: names of the layers to precondition (default: all supported ones).
        seed: seeds the generator of the sampled targets (saved in the state dict).
        precision: "bfloat16" computes the dense products G⁻¹[∇W ∇b]Ā⁻¹ in bfloat16, an opt-in
            trade of 1–3% error in F̆⁻¹∇h for speed where the hardware multiplies bfloat16
            natively (a CPU with AMX, a recent GPU); elsewhere it is slower (4.5× the step on
            an AMD EPYC without it: docs/benchmarks.md, "16, third pass" and "fourth pass");
            "exact" (the parameters' dtype) by default.

    communicator: the ranks of a data-parallel run (kfac.distributed); None is one process.
        The ranks' parameters are made equal (rank 0's) at construction.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFamily | str = LossFamily.CROSS_ENTROPY,
        *,
        communicator: Communicator | None = None,
        **options,
    ):
        settings = KFACSettings(**options)
        structure = settings.structure
        self.model = model
        self.family = LossFamily(loss)
        self.fisher = settings.fisher
        self.structure = structure
        self.blocks = find_blocks(model, settings.layers)
        if not self.blocks:
            raise ValueError("the model has no nn.Linear or nn.Conv2d layer to precondition")
        if structure is InverseStructure.BLOCK_TRIDIAGONAL:
            unsupported = [b.name for b in self.blocks if not b.supports_tridiagonal]
            if unsupported:
                raise ValueError(
                    f"block-tridiagonal K-FAC supports Linear layers only: {unsupported}"
                )
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, settings.group_defaults())
        self.communicator = communicator or Communicator()
        self.communicator.synchronise(params)
        self.batch_size = 0  # the global batch of the current step (all ranks' examples)
        self.capture = ActivationCapture(self.blocks)
        self.preconditioner = KroneckerPreconditioner(
            self.blocks, structure, self.block_state, self.communicator, settings.precision
        )
        self.quadratic = QuadraticModel(
            model,
            self.family,
            self.blocks,
            params,
            self.capture,
            self.communicator,
            self.preconditioner.low_rank_factors,
        )
        self.natural_gradient = NaturalGradient(params, self.preconditioner)
        self.generator = torch.Generator(device=params[0].device)
        self.generator.manual_seed(settings.seed)
        self.statistics = FactorStatistics(
            self.capture,
            self.preconditioner,
            self.family,
            self.fisher,
            self.communicator,
            self.generator,
        )
        gamma = tied_gamma(settings.damping, self.weight_decay(1))
        self.counters = {"step": 0, "stat_updates": 0, "gamma": gamma, "row_variance": None}
        self.damping = DampingController(self.param_groups[0], self.counters)
        self.diagnostics: dict[str, float] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ the iteration

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """One K-FAC iteration on the mini-batch; returns the mean NLL before the update."""
        group = self.param_groups[0]
        self.counters["step"] += 1
        step = self.counters["step"]
        loss, per_example = self._forward_backward(inputs, targets, step)
        if not torch.isfinite(loss):
            return self._skip_non_finite(loss, step)
        params = group["params"]
        eta = self.weight_decay(step)
        lm_due = self._damping_due(step)
        with torch.no_grad():
            gradient = [objective_gradient(p, eta) for p in params]
            notes = Notes()
            if (step - 1) % group["inverse_interval"] == 0:
                self._update_inverses(step, inputs, gradient, notes)
            rows = self.capture.per_example_rows(per_example)
            preconditioned = self._precondition(gradient, rows)
            previous = [self.state[p].get("previous_update") for p in params]
            adaptive = group["lr"] is None
            if adaptive:
                scale, mu, predicted = self._adaptive_coefficients(
                    inputs, gradient, preconditioned, previous
                )
            else:
                scale = -group["lr"] * self._kl_scale(preconditioned, gradient)
                mu, predicted = (group["momentum"] if previous[0] is not None else 0.0), math.nan
            update = combine(scale, preconditioned, mu, previous)  # over `preconditioned`
            if lm_due and not adaptive:  # M at δ itself: coefficient 1 on the one direction δ
                curvature, _, linear = self._quadratic_model(inputs, gradient, [update])
                predicted = float(model_change(curvature, linear, linear.new_ones(1)))
            if lm_due:
                objective_before = objective_value(float(loss), params, eta)
            torch._foreach_add_(params, update)
            for p, u in zip(params, update, strict=True):
                self.state[p]["previous_update"] = u
            rho = math.nan
            if lm_due:
                rho = self._adapt_damping(inputs, targets, objective_before, predicted)
        self.capture.clear()
        self.notes.extend(notes.messages)
        self.diagnostics = {
            "damping": group["damping"],
            "gamma": self.counters["gamma"],
            "alpha": -scale,  # the coefficient of Δ = −F̆⁻¹∇h
            "mu": mu,
            "rho": rho,
            "quadratic_model": predicted,
            "update_norm": self._update_norm(update, adaptive, scale, mu),
            "numerical_fallbacks": float(len(notes.messages)),
        }
        if self.communicator.world_size > 1:  # one process moves nothing: no series of zeros
            traffic = self.communicator.take_traffic()
            self.diagnostics.update({f"communication_{k}": v for k, v in traffic.items()})
        return loss.detach()

    def _update_norm(self, update, adaptive: bool, scale: float, mu: float) -> float:
        """‖δ‖; with the quadratic model, from its Gram [vᵢᵀvⱼ] of the directions that δ
        combines, with no pass over δ (0.02 of an SGD-m step on the autoencoder at batch 256)."""
        if adaptive:
            return self.quadratic.combination_norm([scale, mu])
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(update))))

    def _forward_backward(self, inputs, targets, step: int) -> tuple[torch.Tensor, set[str]]:
        """The mean NLL and its gradient in .grad; on statistics steps also the factors' update
        (§5). Returns the loss and the layers that precondition per example (their output
        gradients are kept)."""
        group = self.param_groups[0]
        record = (step - 1) % group["stats_interval"] == 0
        self.zero_grad(set_to_none=True)
        batch = inputs.shape[0]
        # The per-example product needs this step's activations, and no ℓ2 term in ∇h.
        per_example = self._per_example_layers(batch) if self.weight_decay(step) == 0 else set()
        # So does the quadratic model when it reads J·v off this pass (kfac.linearisation).
        uses_model = group["lr"] is None or self._damping_due(step)
        modelled = self.quadratic.reads_training_pass and uses_model
        with self.capture.record(enabled=record or bool(per_example) or modelled):
            outputs = self.model(inputs)
            local_loss = negative_log_likelihood(outputs, targets, self.family).mean()
            # Reduced first, so that every rank agrees on skipping a non-finite step.
            (loss,), self.batch_size = self.communicator.average([local_loss.detach()], batch)
            if not torch.isfinite(loss):
                return loss, set()
            if record:
                self._update_factors(outputs, targets)
            if per_example:  # again, with this pass's rows per example
                per_example = self._per_example_layers(batch)
            if uses_model:  # its rows, from this pass's outputs (after the targets' draw)
                # Only α, μ observe the row variance (a fixed lr's λ reads the whole share).
                adapt = group["adapt_quadratic_rows"] and group["lr"] is None
                self.quadratic.choose_rows(
                    outputs,
                    self._share(group["quadratic_fraction"]),
                    group["quadratic_sampling"],
                    self.generator,
                    self.batch_size,
                    self.counters["row_variance"],
                    self._step_cost_in_model_rows(per_example) if adapt else None,
                )
            if per_example:
                self.capture.keep_output_gradients()
        local_loss.backward()
        self._average_gradients(batch)
        return loss, per_example

    def _average_gradients(self, batch: int) -> None:
        """The gradient of the global batch's mean NLL in every .grad (one all-reduce)."""
        params = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        if self.communicator.world_size == 1 or not params:
            return
        grads, _ = self.communicator.average([p.grad for p in params], batch)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def _update_inverses(self, step: int, inputs, gradient, notes: Notes) -> None:
        """Re-invert the damped factors at γ = sqrt(λ + η), or at the γ kept so far, or at the
        γ the quadratic model chooses every `gamma_interval` steps (§6.6, kfac.gamma)."""
        group = self.param_groups[0]
        if gamma_search_due(group, step):
            damped_change = partial(self._damped_change, inputs, gradient, notes)
            self.counters["gamma"] = search_gamma(self.counters["gamma"], group, damped_change)
        elif not group["gamma_search"]:
            self.counters["gamma"] = tied_gamma(group["damping"], self.weight_decay(step))
        self.preconditioner.update_inverses(self.counters["gamma"], notes)

    def _damped_change(self, inputs, gradient, notes: Notes, gamma: float) -> float:
        """M̂(δ) − M̂(0) of the step (§7) with the inverses formed at γ, a candidate of §6.6."""
        self.preconditioner.update_inverses(gamma, notes)
        previous = [self.state[p].get("previous_update") for p in self.param_groups[0]["params"]]
        preconditioned = self._precondition(gradient)
        return self._solve_step(inputs, gradient, preconditioned, previous).damped_change

    def _adaptive_coefficients(self, inputs, gradient, preconditioned, previous):
        """(c, μ, M(δ) − M(0)) of δ = c·F̆⁻¹∇h + μδ₀ minimising the quadratic model (§7);
        c = −α, as the model is solved over F̆⁻¹∇h = −Δ itself."""
        solved = self._solve_step(inputs, gradient, preconditioned, previous)
        variance = self.counters["row_variance"]
        self.counters["row_variance"] = self.quadratic.updated_row_variance(variance, solved)
        return solved.alpha, solved.mu, solved.predicted_change

    def _solve_step(self, inputs, gradient, preconditioned, previous) -> StepCoefficients:
        """The quadratic model's minimum over span{F̆⁻¹∇h, δ₀}, or F̆⁻¹∇h alone on a first step."""
        directions = [preconditioned] if previous[0] is None else [preconditioned, previous]
        return solve_step_coefficients(*self._quadratic_model(inputs, gradient, directions))

    def weight_decay(self, step: int) -> float:
        """η of h at `step`: `weight_decay` over the first `weight_decay_steps` steps (all of
        them if None), then 0 (the ℓ2 term is for leaving a flat start, see kfac.settings)."""
        group = self.param_groups[0]
        steps = group["weight_decay_steps"]
        return group["weight_decay"] if steps is None or step <= steps else 0.0

    def _damping_due(self, step: int) -> bool:
        group = self.param_groups[0]
        return group["adapt_damping"] and step % group["damping_interval"] == 0

    def _adapt_damping(self, inputs, targets, objective_before: float, predicted: float) -> float:
        """ρ = (h(θ+δ) − h(θ)) / (M(δ) − M(0)) on this mini-batch, and λ's update (§6.5)."""
        eta = self.weight_decay(self.counters["step"])
        with running_statistics_frozen(self.model):
            after = self.model(inputs)
        after = negative_log_likelihood(after, targets, self.family).mean()
        (after,), _ = self.communicator.average([after], inputs.shape[0])
        objective_after = objective_value(float(after), self.param_groups[0]["params"], eta)
        return self.damping.adapt(objective_after - objective_before, predicted)

    def _skip_non_finite(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """A model that has blown up: no statistics (sampling targets from NaN or infinite
        outputs raises), no update. Returning the non-finite loss lets the caller end the run
        as diverged (worker.training does) rather than fail on a sampling error."""
        loss = loss.detach()
        self.capture.clear()
        self.notes.append(f"step {step}: the loss is {float(loss)}; no update")
        self.diagnostics = {}
        return loss

    # ------------------------------------------------------------------ statistics

    def _update_factors(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Fold this pass's statistics into the running factors (§5, kfac.statistics)."""
        group = self.param_groups[0]
        self.counters["stat_updates"] += 1
        share, count = self._share(group["stats_fraction"]), self.counters["stat_updates"]
        self.statistics.update(outputs, targets, share, count, group["factor_decay"])

    def _share(self, fraction: float) -> int:
        """max(1, round(fraction·B)): how many of the global batch's first examples the
        statistics and the quadratic model use."""
        return max(1, round(fraction * self.batch_size))

    def block_state(self, block) -> dict:
        """The state of one K-FAC layer, kept under its weight so state_dict() carries it."""
        return self.state[block.module.weight]

    # ------------------------------------------------------------------ directions

    def _per_example_layers(self, batch: int) -> set[str]:
        return self.preconditioner.per_example_layers(batch, self.capture.rows_per_example)

    def _step_cost_in_model_rows(self, per_example: set[str]) -> float:
        """R of the model's economical rows at this step (kfac.step_cost)."""
        costs = step_costs(
            self.blocks,
            self.capture.rows_per_example,
            self.batch_size,
            per_example,
            self.param_groups[0],
            self.quadratic.reads_training_pass,
        )
        return in_model_rows(costs)

    def _precondition(self, gradient: list[torch.Tensor], per_example=None) -> list[torch.Tensor]:
        """F̆⁻¹∇h per parameter; other parameters get ∇h/γ² (adaptive) or ∇h (fixed lr)."""
        adaptive = self.param_groups[0]["lr"] is None
        other_scale = 1.0 / self.counters["gamma"] ** 2 if adaptive else 1.0
        return self.natural_gradient(gradient, other_scale, per_example)

    def _quadratic_model(self, inputs, gradient, directions):
        """[vᵢᵀ(F + ηI)vⱼ], [λvᵢᵀvⱼ] and [∇hᵀvᵢ] over the directions, F the exact Fisher (§7)."""
        group = self.param_groups[0]
        eta = self.weight_decay(self.counters["step"])
        return self.quadratic.matrices(inputs, gradient, directions, eta, group["damping"])

    def _kl_scale(self, preconditioned, gradient) -> float:
        """ν = min(1, sqrt(κ / (lr² Δᵀ∇h))) when KL-clipping is on, else 1."""
        group = self.param_groups[0]
        if group["kl_clip"] is None:
            return 1.0
        kl = group["lr"] ** 2 * float(dot(preconditioned, gradient))
        return min(1.0, math.sqrt(group["kl_clip"] / kl)) if kl > 0 else 1.0

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["kfac"] = {"counters": dict(self.counters), "generator": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac")
        super().load_state_dict(state_dict)
        for key, value in SETTINGS_BEFORE_THEY_EXISTED.items():
            self.param_groups[0].setdefault(key, value)
        self.counters = {"row_variance": None, **extra["counters"]}
        self.generator.set_state(extra["generator"])
        self.damping = DampingController(self.param_groups[0], self.counters)
