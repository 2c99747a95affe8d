"""The built-in optimizers' builders (named by the specs' `builder`, see backend/registry.py).

A builder takes the run spec and the model and returns the optimizer with its step,
(inputs, targets) -> detached mean NLL. Every optimizer minimises the same loss,
`kfac.losses.negative_log_likelihood` averaged over the mini-batch, so all curves of an
experiment are comparable; `torch_step` gives a torch.optim optimizer that step (a plugin's
builder may use it too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from backend.spec import RunSpec
from kfac import KFAC
from kfac.losses import negative_log_likelihood

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_kfac(spec: RunSpec, model: nn.Module) -> tuple[KFAC, StepFn]:
    """`kfac.KFAC` with the spec's hyper-parameters (K-FAC, its tridiagonal form, KFC, KFC-pre)."""
    optimizer = KFAC(model, spec.loss, seed=spec.seed, **spec.optimizer.kfac_kwargs())
    return optimizer, optimizer.step


def build_sgd(spec: RunSpec, model: nn.Module) -> tuple[torch.optim.Optimizer, StepFn]:
    """SGD, with momentum (and Nesterov) for `sgd_momentum`."""
    opt = spec.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=opt.lr,
        momentum=getattr(opt, "momentum", 0.0),
        nesterov=getattr(opt, "nesterov", False),
        weight_decay=opt.weight_decay,
    )
    return optimizer, torch_step(spec, model, optimizer)


def build_adam(spec: RunSpec, model: nn.Module) -> tuple[torch.optim.Optimizer, StepFn]:
    opt = spec.optimizer
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        weight_decay=opt.weight_decay,
    )
    return optimizer, torch_step(spec, model, optimizer)


def torch_step(spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer) -> StepFn:
    """The step of a first-order torch.optim optimizer on the spec's loss."""

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = negative_log_likelihood(model(inputs), targets, spec.loss).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
