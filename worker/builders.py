"""The built-in optimizers' builders (named by the specs' `builder`, see backend/registry.py).

A builder takes the run spec and the model and returns the optimizer with its step,
(inputs, targets) -> detached mean NLL. Every optimizer minimises the same loss,
`kfac.losses.negative_log_likelihood` averaged over the mini-batch, so all curves of an
experiment are comparable; `torch_step` gives a torch.optim optimizer that step (a plugin's
builder may use it too). A run of several data-parallel ranks (`spec.processes` > 1) also
passes `communicator` (kfac.distributed): each rank's step sees its shard of the mini-batch
and reduces the loss and gradient over all shards; a builder without that keyword cannot
train such a run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from backend.spec import RunSpec
from kfac import KFAC
from kfac.distributed import Communicator
from kfac.losses import negative_log_likelihood

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_kfac(
    spec: RunSpec, model: nn.Module, communicator: Communicator | None = None
) -> tuple[KFAC, StepFn]:
    """`kfac.KFAC` with the spec's hyper-parameters (K-FAC, its tridiagonal form, KFC, KFC-pre);
    across ranks it reduces the loss, gradient and curvature itself."""
    optimizer = KFAC(
        model,
        spec.loss,
        seed=spec.seed,
        communicator=communicator or Communicator(),
        **spec.optimizer.kfac_kwargs(),
    )
    return optimizer, optimizer.step


def build_sgd(
    spec: RunSpec, model: nn.Module, communicator: Communicator | None = None
) -> tuple[torch.optim.Optimizer, StepFn]:
    """SGD, with momentum (and Nesterov) for `sgd_momentum`."""
    opt = spec.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=opt.lr,
        momentum=getattr(opt, "momentum", 0.0),
        nesterov=getattr(opt, "nesterov", False),
        weight_decay=opt.weight_decay,
    )
    return optimizer, torch_step(spec, model, optimizer, communicator)


def build_adam(
    spec: RunSpec, model: nn.Module, communicator: Communicator | None = None
) -> tuple[torch.optim.Optimizer, StepFn]:
    opt = spec.optimizer
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        weight_decay=opt.weight_decay,
    )
    return optimizer, torch_step(spec, model, optimizer, communicator)


def torch_step(
    spec: RunSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    communicator: Communicator | None = None,
) -> StepFn:
    """The step of a first-order torch.optim optimizer on the spec's loss; across ranks the
    parameters start equal and the loss and gradient are averaged over the shards (weighted by
    their sizes, `Communicator.average`)."""
    communicator = communicator or Communicator()
    communicator.synchronise(list(model.parameters()))

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = negative_log_likelihood(model(inputs), targets, spec.loss).mean()
        loss.backward()
        if communicator.world_size > 1:
            params = [p for p in model.parameters() if p.grad is not None]
            reduced, _ = communicator.average(
                [loss.detach(), *(p.grad for p in params)], len(inputs)
            )
            loss = reduced[0]
            for p, grad in zip(params, reduced[1:], strict=True):
                p.grad = grad
        optimizer.step()
        return loss.detach()

    return step
