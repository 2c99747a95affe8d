"""The plugin's worker side (torch): builders named by the specs' `builder`."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from backend.spec import DatasetSpec, RunSpec
from kfac.losses import negative_log_likelihood, sample_targets
from worker.zoo.datasets import Dataset


def build_skinny_mlp(spec: RunSpec, device: torch.device | str) -> nn.Module:
    """Linear → SiLU → Linear, initialised from the run's seed (the global RNG is left as it
    was, as the lab's own models leave it)."""
    dims = spec.layer_dims()
    dtype = getattr(torch, spec.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        layers = [nn.Linear(dims[0], dims[1], dtype=dtype), nn.SiLU()]
        layers.append(nn.Linear(dims[1], dims[2], dtype=dtype))
    return nn.Sequential(*layers).to(device)


def load_two_spirals(spec: DatasetSpec, data_dir: Path) -> Dataset:
    """800 / 200 points of two spirals with Gaussian noise, always the same (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    n = spec.info.n_train + spec.info.n_test
    labels = torch.arange(n) % 2
    radius = torch.rand(n, generator=generator) * 3 * math.pi + 0.5
    angle = radius + math.pi * labels
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1) / 10
    points += 0.02 * torch.randn(n, 2, generator=generator)
    cut = spec.info.n_train
    return Dataset(points[:cut], labels[:cut], points[cut:], labels[cut:], "generated spirals")


class DiagonalFisher(torch.optim.Optimizer):
    """Preconditioned gradient descent with the diagonal of the true Fisher (Martens & Grosse
    2015 §5: targets sampled from the model's predictive distribution):

        F̂ ← ε F̂ + (1 − ε) · mean_i (∇_θ log p(ỹ_i | x_i))²,   ỹ_i ~ p(y | x_i)
        θ ← θ − α (F̂ + λ)⁻¹ ∇h(θ)

    The per-example gradients come from torch.func (vmap of grad), so F̂ is the exact diagonal
    of the mini-batch Fisher, not the square of the mean gradient that RMSprop / Adam keep.
    """

    def __init__(
        self, model: nn.Module, loss: str, lr: float, damping: float, decay: float, seed: int = 0
    ):
        super().__init__(model.parameters(), {"lr": lr, "damping": damping, "decay": decay})
        self.model, self.loss = model, loss
        self.generator = torch.Generator().manual_seed(seed)
        self.diagnostics: dict[str, float] = {}

    def diagonal_fisher(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        with torch.no_grad():
            sampled = sample_targets(self.model(inputs), self.loss, self.generator)

        def nll(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, p, (x.unsqueeze(0),))
            return negative_log_likelihood(out, y.unsqueeze(0), self.loss).sum()

        per_example = vmap(grad(nll), in_dims=(None, 0, 0))(params, inputs, sampled)
        return {name: g.pow(2).mean(0) for name, g in per_example.items()}

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        fisher = self.diagonal_fisher(inputs)
        self.zero_grad(set_to_none=True)
        loss = negative_log_likelihood(self.model(inputs), targets, self.loss).mean()
        loss.backward()
        mean_curvature = 0.0
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                state = self.state[p]
                average = state.get("fisher")
                if average is None:
                    average = state["fisher"] = fisher[name].clone()
                else:
                    average.mul_(group["decay"]).add_(fisher[name], alpha=1 - group["decay"])
                p.sub_(group["lr"] * p.grad / (average + group["damping"]))
                mean_curvature += float(average.sum())
        count = sum(p.numel() for p in self.model.parameters())
        self.diagnostics = {"mean_diag_fisher": mean_curvature / count}
        return loss.detach()


def build_diagonal_fisher(spec: RunSpec, model: nn.Module) -> tuple[DiagonalFisher, object]:
    opt = spec.optimizer
    optimizer = DiagonalFisher(model, spec.loss, opt.lr, opt.damping, opt.decay, spec.seed)
    return optimizer, optimizer.step
