"""Forward hooks that keep each layer's input ā and output s, only while recording.

The outputs are kept attached to the graph so that the statistics' backward pass can ask
autograd for g = ∂(−log p(y|x))/∂s directly, without touching any parameter's .grad.  When not
recording the hooks return at once, so steps without statistics cost what SGD costs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from kfac.layers import LinearBlock


class ActivationCapture:
    def __init__(self, blocks: list[LinearBlock]):
        self.blocks = blocks
        self.recording = False
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.output_grads: dict[str, torch.Tensor] = {}
        self.rows_per_example: dict[str, int] = {}
        """Rows ā each example gave each layer in the last recorded forward pass (|T| for a
        conv layer); kept across `clear()`, since it depends on the input size alone."""
        self._handles = [
            block.module.register_forward_hook(self._hook_for(block)) for block in blocks
        ]

    def _hook_for(self, block: LinearBlock):
        name = block.name

        def hook(module, inputs, output):
            if not self.recording:
                return
            self.rows_per_example[name] = block.rows_per_example(output)
            if name in self.inputs:
                raise RuntimeError(
                    f"layer {name!r} ran twice in one forward pass; K-FAC needs each "
                    "Linear/Conv2d module called once per forward"
                )
            self.inputs[name] = inputs[0].detach()
            self.outputs[name] = output

        return hook

    @contextmanager
    def record(self, enabled: bool = True):
        """Keep the activations of the forward passes run inside this block."""
        self.clear()
        self.recording = enabled
        try:
            yield self
        finally:
            self.recording = False

    def keep_output_gradients(self) -> None:
        """Keep ĝ = ∂loss/∂s of every recorded layer when the next backward pass computes it
        (the rows of the per-example preconditioning)."""
        for name, output in self.outputs.items():
            output.register_hook(self._grad_keeper(name))

    def _grad_keeper(self, name: str):
        def keep(grad):
            self.output_grads[name] = grad

        return keep

    def per_example_rows(self, names: set[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(a, ĝ) rows of the layers in `names` whose output gradients were kept, a without
        the homogeneous coordinate (`LinearBlock.plain_rows`)."""
        return {
            b.name: (b.plain_rows(self.inputs[b.name]), b.output_rows(self.output_grads[b.name]))
            for b in self.blocks
            if b.name in names and b.name in self.output_grads
        }

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self.output_grads.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
