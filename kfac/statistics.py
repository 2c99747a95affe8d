"""The statistics of the Kronecker factors (paper §5): which examples, targets and gradients.

On a statistics step the optimizer's training pass keeps every K-FAC layer's inputs ā and
outputs s (`kfac.capture`).  The statistics use the global batch's first share of examples
(`stats_fraction`), at targets drawn from the model's predictive distribution (the true Fisher,
§5) or at the data's (the empirical Fisher).  g = Ds comes from a separate autograd call, so the
training gradient is untouched, of the NLL summed (not averaged) over the examples, so that
each row of Ds is one example's g.  Ā = E[āāᵀ] and G = E[ggᵀ] of those rows are folded into
the running averages with ε = min(1 − 1/k, decay) at the k-th update
(`kfac.preconditioner.KroneckerPreconditioner.update_factors`).
"""

from __future__ import annotations

import torch

from kfac.capture import ActivationCapture
from kfac.distributed import Communicator
from kfac.enums import FisherType, LossFamily
from kfac.layers import LinearBlock
from kfac.losses import negative_log_likelihood, sample_targets
from kfac.preconditioner import KroneckerPreconditioner


def output_gradients(
    capture: ActivationCapture,
    blocks: list[LinearBlock],
    outputs: torch.Tensor,
    targets: torch.Tensor,
    family: LossFamily,
    retain_graph: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Every layer's Ds at `targets`, one example's g a row: the gradient of the NLL summed over
    the examples with respect to the layers' outputs that `capture` kept on this pass."""
    total = negative_log_likelihood(outputs, targets, family).sum()
    layer_outputs = [capture.outputs[b.name] for b in blocks]
    return torch.autograd.grad(total, layer_outputs, retain_graph=retain_graph)


class FactorStatistics:
    """Folds a training pass's statistics into the running factors that the preconditioner
    keeps; the targets of the true Fisher are drawn with `generator` (the optimizer's, saved in
    its state dict) by `kfac.losses.sample_targets`, alike on every rank."""

    def __init__(
        self,
        capture: ActivationCapture,
        preconditioner: KroneckerPreconditioner,
        family: LossFamily,
        fisher: FisherType,
        communicator: Communicator,
        generator: torch.Generator,
    ):
        self.capture, self.preconditioner = capture, preconditioner
        self.blocks = preconditioner.blocks
        self.family, self.fisher = family, fisher
        self.communicator, self.generator = communicator, generator

    def update(
        self, outputs: torch.Tensor, targets: torch.Tensor, share: int, count: int, decay: float
    ) -> None:
        """The `count`-th update, from the global batch's first `share` examples (this rank's
        of them) of the pass that gave `outputs`; the graph is kept for the training backward."""
        used = self.communicator.prefix(share)
        if self.fisher is FisherType.TRUE:
            positions = self.communicator.positions(used)
            stat_targets = sample_targets(
                outputs[:used], self.family, self.generator, positions, share
            )
        else:
            stat_targets = targets[:used]
        output_grads = output_gradients(
            self.capture, self.blocks, outputs[:used], stat_targets, self.family, retain_graph=True
        )
        with torch.no_grad():
            self.preconditioner.update_factors(
                [self.capture.inputs[b.name][:used] for b in self.blocks],
                [g[:used] for g in output_grads],
                used,
                count,
                decay,
            )
