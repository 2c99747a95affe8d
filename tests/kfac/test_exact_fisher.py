"""kfac.exact_fisher: F summed over chunks of examples is F of the whole batch.

F itself is checked against a per-example loop through `fisher_matrices`
(tests/kfac/test_curvature.py, test_curvature_conv.py); those batches fit in one chunk, so the
sum over chunks is checked here.
"""

from __future__ import annotations

import torch

import kfac.exact_fisher
from kfac.curvature import fisher_matrices


def test_fisher_summed_over_one_example_chunks_is_the_whole_batch_fisher(
    monkeypatch, build_net, build_batch
):
    net = build_net("mixed_four_layers")
    inputs, targets = build_batch(net, "cross_entropy", count=10)
    whole = fisher_matrices(net, inputs, targets, "cross_entropy").exact
    monkeypatch.setattr(kfac.exact_fisher, "_CHUNK_ELEMENTS", 1)  # one example at a time
    chunked = fisher_matrices(net, inputs, targets, "cross_entropy").exact
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-15)
